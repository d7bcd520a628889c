"""/models: the source models available (the built-in zoo)."""

from __future__ import annotations

from fastapi import APIRouter

from api.schemas import ModelInfo
from core import zoo

router = APIRouter(tags=["models"])


@router.get("/models", response_model=list[ModelInfo], summary="Source models you can mine")
def list_models() -> list[ModelInfo]:
    return [ModelInfo(**m) for m in zoo.available()]
