"""Pydantic schemas of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.methods import FUSION_METHODS, METHODS, RunConfig

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


class MethodOptions(BaseModel):
    """Optional method settings (defaults: Appendix A / Sec. 5 of the paper)."""

    model_config = ConfigDict(extra="forbid")

    n_critic: int | None = Field(default=None, ge=1, le=20)
    miner_layers: int | None = Field(default=None, ge=1, le=8)
    miner_hidden: int | None = Field(default=None, ge=0, le=4096, description="miner width; 0: |z| (Appendix A)")
    lr_miner: float | None = Field(default=None, gt=0, le=0.1)
    lr_generator: float | None = Field(default=None, gt=0, le=0.1)
    lr_critic: float | None = Field(default=None, gt=0, le=0.1)
    sparse_top_fraction: float | None = Field(default=None, gt=0, le=1)
    sparse_min_weights: int | None = Field(default=None, ge=1)
    freeze_critic_layers: int | None = Field(default=None, ge=0, le=8)
    selection: Literal["permuted", "max"] | None = Field(
        default=None, description="several sources: improved permuted training (Eq. 9-10, default) or the original max rule (Eq. 5-6)")
    critic_source: int | None = Field(default=None, ge=0, le=7, description="several sources: index of the source whose critic initialises D")
    fusion_steps: int | None = Field(default=None, ge=1, le=100_000, description="fusion, fusion++: steps training the fused G_F")
    fusion_mean_scale: float | None = Field(default=None, gt=0, le=100, description="fusion: distance of each source's prior mean")
    fusion_mining: Literal["regions", "single"] | None = Field(
        default=None, description="fusion: a single miner in front of G_F (default), or one miner per source region with the selector")
    fusion_critic: Literal["projection", "plain"] | None = Field(
        default=None, description="fusion: critic told each image's source by projection (default), or the plain unconditional critic")
    fusion_distill: float | None = Field(default=None, ge=0, le=1000, description="fusion: weight of the paired term "
                                         "mean|G_F(mu_i + z) - G_i(z)| added to Eq. 16 (default 30; 0: adversarial only, as in the paper)")
    fusion_lr_generator: float | None = Field(default=None, gt=0, le=0.1, description="fusion: G_F's learning rate while fusing (default 5e-4)")
    fusion_lr_decay: bool | None = Field(default=None, description="fusion: learning rates fall linearly to 0 over fusion_steps (default true)")


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(min_length=1, max_length=8, description="source model ids (see GET /models); several for "
                               "multi-GAN mining (mining methods) or fusion (fusion, fusion++)")
    method: str = Field(default="minegan++", description=f"one of {', '.join(METHODS)}")
    mining_steps: int = Field(default=200, ge=0, le=100_000)
    finetune_steps: int = Field(default=100, ge=0, le=100_000)
    batch_size: int = Field(default=64, ge=1, le=1024)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    options: MethodOptions = Field(default_factory=MethodOptions)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; choose one of {', '.join(METHODS)}")
        return v

    def run_options(self) -> dict[str, Any]:
        """The options the user gave (unset ones are left to RunConfig's defaults)."""
        return {k: v for k, v in self.options.model_dump().items() if v is not None}


FUSION_OPTIONS = tuple(k for k in MethodOptions.model_fields if k.startswith("fusion_"))


def resolved_options(cfg: RunConfig) -> dict[str, Any]:
    """Every option of ``MethodOptions`` as the job will run it: the user's values with this version's defaults
    filled in. Stored with the job at submission, so a queued or interrupted job resumes with the recipe it was
    submitted with even if a later version changes a default, and ``GET /jobs/{id}`` shows the whole recipe.
    The fusion options are left out of methods that do not fuse."""
    keep = [k for k in MethodOptions.model_fields if cfg.method in FUSION_METHODS or k not in FUSION_OPTIONS]
    return {k: getattr(cfg, k) for k in keep}


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
    spec: dict[str, Any]
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


class Preview(BaseModel):
    step: int
    key: str
    url: str
