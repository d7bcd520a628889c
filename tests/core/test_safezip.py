"""Untrusted zips and odd image formats: refusals with codes, limits hit while decompressing, conversions."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from core.data import TargetDataError, load_target_bytes
from core.safezip import ZipLimits, ZipRefused, image_entries, unsafe_name


def _png(img: Image.Image, **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


GOOD = _png(Image.new("L", (28, 28), 128))


@pytest.mark.parametrize("name", ["../x.png", "a/../../x.png", "/etc/x.png", "..\\x.png", "C:/x.png", "c:x.png"])
def test_unsafe_names_are_refused(name: str) -> None:
    assert unsafe_name(name)
    with pytest.raises(ZipRefused) as err:
        image_entries(_zip({"ok.png": GOOD, name: GOOD}))
    assert err.value.code == "unsafe_path" and repr(name) in str(err.value)


def test_safe_names_pass() -> None:
    assert unsafe_name("dir/sub/a..b.png") is None
    files, ignored = image_entries(_zip({"b.png": GOOD, "a/c.PNG": GOOD, "readme.md": b"hi", "__MACOSX/._b.png": b"x"}))
    assert [n for n, _ in files] == ["a/c.PNG", "b.png"] and ignored == ["readme.md"]


def test_bomb_stopped_while_streaming_even_if_the_header_lies() -> None:
    bomb = _zip({"bomb.png": b"\0" * (8 << 20)})  # 8 MiB of zeros deflate to ~8 KiB: ratio ~1000
    with pytest.raises(ZipRefused) as err:
        image_entries(bomb)
    assert err.value.code == "zip_bomb" and err.value.status == 413
    # forge the declared sizes to look harmless: the streaming count must still stop it
    raw = bytearray(bomb)
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = raw.find(sig)
        raw[i + off : i + off + 4] = (100).to_bytes(4, "little")
    with pytest.raises(ZipRefused) as err:
        image_entries(bytes(raw), ZipLimits(max_entry_bytes=1 << 20))
    assert err.value.code in ("zip_bomb", "corrupt_zip")
    with pytest.raises(ZipRefused, match="in total"):
        image_entries(_zip({f"{i}.png": GOOD for i in range(5)}), ZipLimits(max_total_bytes=2 * len(GOOD)))


def test_counts_empty_not_a_zip_and_truncated() -> None:
    with pytest.raises(ZipRefused) as err:
        image_entries(b"hello, not a zip")
    assert err.value.code == "not_a_zip"
    with pytest.raises(ZipRefused) as err:
        image_entries(_zip({}))
    assert err.value.code == "empty_zip"
    with pytest.raises(ZipRefused) as err:
        image_entries(_zip({f"{i}.png": GOOD for i in range(11)}), ZipLimits(max_entries=10))
    assert err.value.code == "too_many_files"
    data = _zip({f"{i}.png": GOOD for i in range(3)})
    with pytest.raises(ZipRefused):
        image_entries(data[: len(data) // 2])


def test_modes_are_converted_and_reported() -> None:
    rgba = Image.new("RGBA", (28, 28), (255, 255, 255, 0))  # fully transparent white -> black
    pal = Image.new("P", (28, 28), 3)
    cmyk = Image.new("CMYK", (28, 28), (0, 0, 0, 0))  # no ink -> white
    deep = Image.fromarray(np.full((28, 28), 65535, dtype=np.uint16))  # 16-bit white
    frames = [Image.new("L", (28, 28), v) for v in (255, 0)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])  # an animated PNG
    jpg = io.BytesIO()
    cmyk.save(jpg, format="JPEG")
    ts = load_target_bytes(_zip({"a.png": _png(rgba), "b.png": _png(pal), "c.jpg": jpg.getvalue(), "d.png": _png(deep),
                                 "e.png": buf.getvalue()}), channels=1, size=28)
    conv = ts.report["converted"]
    assert conv["alpha composited over black"] == 1 and conv["animated: first frame used"] == 1
    assert any(k.startswith("palette") for k in conv) and any("8-bit" in k for k in conv) and any("CMYK" in k for k in conv)
    px = ((ts.images[:, 0, 14, 14] + 1) * 127.5).round().tolist()  # a, b, c, d, e
    assert px[0] == 0 and px[2] > 250 and px[3] == 255 and px[4] == 255


def test_decompression_bomb_dimensions_refused_before_decoding() -> None:
    big = Image.new("1", (5000, 5000))  # 25 Mpx declared (over our 16.7 Mpx limit), a few KiB as a 1-bit PNG
    with pytest.raises(TargetDataError) as err:
        load_target_bytes(_zip({"big.png": _png(big)}), 1, 28)
    assert err.value.code == "image_too_large" and "5000x5000" in str(err.value)
    huge = Image.new("1", (20000, 20000))  # 400 Mpx: Pillow's own guard fires while opening
    with pytest.raises(TargetDataError) as err:
        load_target_bytes(_zip({"huge.png": _png(huge)}), 1, 28)
    assert err.value.code == "image_too_large" and "huge.png" in str(err.value)


def test_gif_named_png_is_not_decoded() -> None:
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, format="GIF")
    with pytest.raises(TargetDataError) as err:
        load_target_bytes(_zip({"x.png": buf.getvalue(), "ok.png": GOOD}), 1, 28)
    assert err.value.code == "corrupt_image" and "x.png" in str(err.value)
