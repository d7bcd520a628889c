"""uvicorn's httptools protocol with limits on a request's head (``minegan serve`` runs it).

httptools buffers a request line and header fields of any size before the application sees them: one request with a
100 MB header kept the event loop busy for seconds. Here the head may take at most ``MAX_HEAD_BYTES`` (request line
and header fields, counted as they arrive) and ``MAX_HEADERS`` fields; past either the answer is ``431 Request Header
Fields Too Large`` and the connection closes. uvicorn's h11 protocol has such a limit (16 KiB), but httptools is the
faster parser of the two.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100


class HeadTooLarge(Exception):
    """Raised from the parser's callback; httptools reports it as a parser error, answered with 431 below."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    _head_bytes = 0
    _header_count = 0
    _in_head = True
    _too_large = False

    _completed = False

    def data_received(self, data: bytes) -> None:
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:  # the head is still arriving and already too long
            self._too_large = True
            self.send_400_response("")
            return
        self._completed = False
        super().data_received(data)
        if self._in_head and not self._completed:  # all of ``data`` was head (a piece that ended a message was not)
            self._head_bytes += len(data)

    def on_message_begin(self) -> None:
        self._in_head, self._header_count = True, 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > MAX_HEADERS:
            self._too_large = True
            raise HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._completed = True, 0, True  # the next request on this connection starts afresh

    def send_400_response(self, msg: str) -> None:
        if not self._too_large:
            super().send_400_response(msg)
            return
        body = json.dumps({"error": {"code": "headers_too_large", "message": f"the request's head is larger than {MAX_HEAD_BYTES} "
                                     f"bytes or has more than {MAX_HEADERS} header fields"}}).encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()
