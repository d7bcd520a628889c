from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitRequest(_message.Message):
    __slots__ = ("spec_json", "zip_chunk")
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    ZIP_CHUNK_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    zip_chunk: bytes
    def __init__(self, spec_json: _Optional[str] = ..., zip_chunk: _Optional[bytes] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("id", "after_event_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    after_event_id: int
    def __init__(self, id: _Optional[str] = ..., after_event_id: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "status", "phase", "step", "total_steps", "method", "error_code", "error_message", "json")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: str
    phase: str
    step: int
    total_steps: int
    method: str
    error_code: str
    error_message: str
    json: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[str] = ..., phase: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., method: _Optional[str] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("id", "kind", "data_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    id: int
    kind: str
    data_json: str
    def __init__(self, id: _Optional[int] = ..., kind: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...
