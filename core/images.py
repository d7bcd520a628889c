"""Image encoding helpers: tensors in [-1, 1] to uint8, PNG bytes, sample grids and zips of PNGs."""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] images [N, C, H, W] -> uint8 [N, H, W, C]."""
    arr = ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).numpy()


def png_bytes(img: np.ndarray) -> bytes:
    """uint8 [H, W, C] -> PNG bytes."""
    pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile [N, C, H, W] images into one uint8 [H', W', C] picture (nrow defaults to ceil(sqrt(N)))."""
    u8 = to_uint8(images)  # [N, H, W, C]
    n, h, w, c = u8.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    out = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = u8[i]
    return out


def grid_png(images: torch.Tensor, nrow: int | None = None) -> bytes:
    return png_bytes(grid(images, nrow))


def zip_of_pngs(images: torch.Tensor, prefix: str = "sample") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i, img in enumerate(to_uint8(images)):
            # a fixed timestamp: the same images give the same bytes (writestr with a name would stamp the
            # current time, so one seed's zip changed every two seconds)
            info = zipfile.ZipInfo(f"{prefix}_{i:04d}.png", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, png_bytes(img))
    return buf.getvalue()
