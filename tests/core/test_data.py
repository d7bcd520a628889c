import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import TargetDataError, load_mnist, load_target, write_mnist_zip


def _png(mode: str, size: tuple[int, int], value: int = 200) -> bytes:
    img = Image.new(mode, size, value if mode == "L" else (value, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_zip_of_rgb_images_is_converted_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "t.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            zf.writestr(f"img{i}.png", _png("RGB", (64, 48)))
        zf.writestr("notes.txt", "not an image")
    ts = load_target(path, channels=1, size=28)
    assert ts.images.shape == (3, 1, 28, 28)
    assert ts.images.min() >= -1 and ts.images.max() <= 1
    assert ts.report["converted"] == {"mode RGB -> L": 3, "resized 64x48 -> 28x28": 3}
    assert ts.report["ignored"] == ["notes.txt"]
    with zipfile.ZipFile(path, "a") as zf:  # one broken image refuses the set, naming the file
        zf.writestr("broken.png", b"\x89PNG garbage")
    with pytest.raises(TargetDataError, match="1 of 4 images .*broken.png") as err:
        load_target(path, channels=1, size=28)
    assert err.value.code == "corrupt_image"


def test_folder_and_grayscale_to_rgb(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png("L", (32, 32), 255))
    ts = load_target(tmp_path, channels=3, size=32)
    assert ts.images.shape == (1, 3, 32, 32) and float(ts.images.min()) == 1.0
    assert ts.report["converted"] == {"mode L -> RGB": 1}


def test_no_images_and_not_a_zip_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "e.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(TargetDataError, match="no PNG/JPEG images .*readme.txt") as err:
        load_target(empty, 1, 28)
    assert err.value.code == "no_images"
    junk = tmp_path / "j.bin"
    junk.write_bytes(b"hello")
    with pytest.raises(TargetDataError, match="neither a folder nor a zip"):
        load_target(junk, 1, 28)
    with pytest.raises(TargetDataError, match="more than the limit"):
        (tmp_path / "d").mkdir()
        for i in range(3):
            (tmp_path / "d" / f"{i}.png").write_bytes(_png("L", (28, 28)))
        load_target(tmp_path / "d", 1, 28, max_images=2)


def test_mnist_split_and_zip_helper_round_trip(tmp_path: Path) -> None:
    x, y = load_mnist("test", [9])
    assert x.shape[1:] == (1, 28, 28) and set(y.tolist()) == {9} and 900 < len(y) < 1100
    path = write_mnist_zip(tmp_path / "nines.zip", [9], 20, seed=1)
    ts = load_target(path, 1, 28)
    assert len(ts) == 20 and ts.report["converted"] == {}
    # pixels survive the PNG round trip exactly (stored as byte/256 -> recovered byte)
    got = np.sort(((ts.images + 1) * 127.5).round().flatten().numpy())
    pool = set(np.unique(((x + 1) * 127.5).round().numpy()).tolist())
    assert set(np.unique(got).tolist()) <= pool
    mixed = load_target(write_mnist_zip(tmp_path / "m.zip", [3, 8], 5), 1, 28)
    assert sorted(n.split("_")[0] for n in mixed.names) == ["digit3"] * 3 + ["digit8"] * 2


def test_a_zip_of_samples_is_the_same_bytes_whenever_it_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same seed, same answer: the zip format of /sample must not carry the time it was made (a flaky
    byte-for-byte test caught entries stamped with the current time)."""
    import time

    import torch

    from core.images import png_bytes, to_uint8, zip_of_pngs

    images = torch.rand(3, 1, 28, 28) * 2 - 1
    first = zip_of_pngs(images)
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)  # another day, another two-second window
    again = zip_of_pngs(images)
    assert first == again
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        assert zf.namelist() == ["sample_0000.png", "sample_0001.png", "sample_0002.png"]
        assert zf.read("sample_0001.png") == png_bytes(to_uint8(images)[1])
