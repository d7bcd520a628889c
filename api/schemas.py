"""Pydantic schemas of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from core.options import METHODS, OPTION_TYPES, RunConfig, api_options, config_from_spec

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
WebhookEvent = Literal["status", "progress", "preview", "completed"]


def _field(f: Any, default: Any) -> Any:
    """A pydantic Field from an option's declaration in ``core/options.py`` (bounds and help text)."""
    m = f.metadata
    return Field(default=default, ge=m["ge"], gt=m["gt"], le=m["le"], description=m["help"] or None)


def _type(f: Any) -> Any:
    choices = f.metadata["choices"]
    return Literal[choices] if choices and f.metadata["api"] == "options" else OPTION_TYPES[f.name]  # type: ignore[valid-type]


# Optional method settings: every option core/options.py exposes in ``spec.options``; unset ones take the defaults there.
MethodOptions: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "MethodOptions", __config__=ConfigDict(extra="forbid"), __doc__="Optional method settings (defaults: Appendix A / Sec. 5 of the paper).",
    **{f.name: (_type(f) | None, _field(f, None)) for f in api_options("options")})

class JobSpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(min_length=1, max_length=8, description="source model ids (see GET /models); several for "
                               "multi-GAN mining (mining methods) or fusion (fusion, fusion++)")
    options: MethodOptions = Field(default_factory=MethodOptions)  # type: ignore[valid-type]
    webhook: str | None = Field(default=None, max_length=2000, description="an https URL that receives signed POSTs of this "
                                "job's events (X-Minegan-Signature: HMAC-SHA256 of the body with your secret, GET /webhooks/secret)")
    webhook_events: list[WebhookEvent] = Field(default_factory=lambda: ["completed"], max_length=4,  # type: ignore[arg-type]
                                               description="which events the webhook receives")
    if TYPE_CHECKING:  # declared in core/options.py (api="spec"); JobSpec below adds them
        method: str
        mining_steps: int
        finetune_steps: int
        batch_size: int
        seed: int

    @field_validator("method", check_fields=False)
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; choose one of {', '.join(METHODS)}")
        return v

    def run_config(self, **settings: Any) -> RunConfig:
        """The run this spec asks for: its fields, the options the user gave, RunConfig's defaults for the rest."""
        return config_from_spec(self.model_dump(), **settings)


# A job spec: the sources, the run's own fields (method, steps, batch size, seed: the options core/options.py marks
# api="spec", with their defaults, bounds and help), the method's ``options`` and the webhook.
JobSpec: type[JobSpecBase] = create_model(  # type: ignore[call-overload]
    "JobSpec", __base__=JobSpecBase, **{f.name: (OPTION_TYPES[f.name], _field(f, f.default)) for f in api_options("spec")})


class ErrorInfo(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    phase: str | None
    progress: float
    step: int
    total_steps: int
    method: str
    spec: dict[str, Any] = Field(description="the job spec as submitted, its options with this version's defaults filled in")
    run: dict[str, Any] | None = Field(default=None, description="the run as it trains: every option, each \"auto\" made "
                                       "concrete for the job's sources (null for a job submitted before the service stored it)")
    stats: dict[str, Any] | None
    metrics: dict[str, Any] | None
    target: dict[str, Any] | None
    error: ErrorInfo | None
    selector: dict[str, float] | None = Field(
        default=None, description="multi-GAN mining: the selector's current pi per generator (class, for a conditional source)")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: dict[str, str]


class JobList(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class Artifact(BaseModel):
    name: str
    key: str
    url: str


class ModelInfo(BaseModel):
    id: str
    resolution: int
    channels: int
    conditional: bool
    n_classes: int
    z_dim: int
    description: str
    origin: str = Field(default="built-in", description="built-in zoo, or the job a registered source came from")
    critic: bool = Field(default=True, description="ships a pretrained critic; false for a generator-only upload, whose jobs "
                         "start a fresh critic with a warm-up unless the options say otherwise")
    job_defaults: dict[str, Any] = Field(default_factory=dict, description="what a job on this source runs when its spec sets "
                                         "nothing: the default method and the options whose default depends on the source "
                                         "(where the critic starts, the miner, the few-shot adaptation, keep_best)")


class Preview(BaseModel):
    step: int
    key: str
    url: str


class UploadConfig(BaseModel):
    id: str = Field(description="new source id: lower-case letters, digits, '.', '_', '-'", max_length=63)
    family: Literal["pt2", "onnx", "dcgan64", "minegan"] = Field(
        description="pt2 (any architecture, as a torch.export program z [N, z_dim] -> images [N, C, H, W], "
                        "saved with torch.export.save), onnx (any architecture, as an ONNX graph), dcgan64 (the standard DCGAN "
                        "64x64 layout) or minegan (core/nets/gan.py)")
    config: dict[str, Any] = Field(default_factory=dict, description="architecture config, e.g. {\"z_dim\": 100, "
                                   "\"channels\": 3, \"width\": 64} for dcgan64; for pt2 and onnx {\"z_dim\", \"img_size\", \"channels\", "
                                   "\"z_dist\": \"normal\" or \"uniform\", \"z_scale\", \"output_range\": [low, high]}, and for a class input "
                                   "\"n_classes\" and \"class_input\": \"index\" or \"onehot\"; with an ONNX critic, "
                                   "\"critic_input_range\": [low, high] (default [-1, 1])")
    description: str = Field(default="", max_length=300)
