"""Reading untrusted zips of target images: limits checked while decompressing, never after.

An upload is a stranger's file. Before a single image is decoded, every entry name is checked (no
``..`` components, no absolute or drive paths, no symlinks) and the entry count is bounded. Each entry is
then decompressed in chunks while counting the bytes actually produced, so a zip bomb is stopped when it
crosses the per-entry size, the total size or the compression-ratio limit -- the sizes declared in the
zip's headers are checked first, but never trusted alone. Nothing is written to disk.

Every refusal is a :class:`ZipRefused` with a stable ``code`` (the API's error code) and a message that
says what to fix.
"""

from __future__ import annotations

import io
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CHUNK = 1 << 16
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ZipLimits:
    max_entries: int = 5000  # entries of any kind, directories included
    max_entry_bytes: int = 32 * 1024 * 1024  # uncompressed size of one entry
    max_total_bytes: int = 256 * 1024 * 1024  # uncompressed size of all image entries together
    max_ratio: float = 200.0  # uncompressed / compressed, per entry (PNG/JPEG barely compress: ~1-3)


DEFAULT_ZIP_LIMITS = ZipLimits()


class ZipRefused(ValueError):
    """The zip is refused; ``code`` names the reason for machines, the message for people."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code, self.status = code, status


def unsafe_name(name: str) -> str | None:
    """Why an entry name is unsafe (path traversal, absolute path, drive letter), or None."""
    norm = name.replace("\\", "/")
    if norm.startswith("/"):
        return "is an absolute path"
    if _DRIVE.match(norm):
        return "starts with a drive letter"
    if ".." in PurePosixPath(norm).parts:
        return "contains a '..' component"
    if "\x00" in norm:
        return "contains a NUL byte"
    return None


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _skipped(info: zipfile.ZipInfo) -> bool:
    name = info.filename
    return info.is_dir() or name.startswith("__MACOSX/") or PurePosixPath(name).name.startswith(".")


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ZipLimits, total: int) -> bytes:
    """Decompress one entry chunk by chunk, stopping at the first limit it crosses."""
    out = io.BytesIO()
    compressed = max(info.compress_size, 1)
    with zf.open(info) as fh:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                break
            out.write(chunk)
            size = out.tell()
            if size > limits.max_entry_bytes:
                raise ZipRefused("zip_bomb", f"images: entry {info.filename!r} expands past {limits.max_entry_bytes} bytes "
                                             "(the per-file limit); upload ordinary PNG/JPEG files", 413)
            if total + size > limits.max_total_bytes:
                raise ZipRefused("zip_bomb", f"images: the zip expands past {limits.max_total_bytes} bytes in total; "
                                             "upload fewer or smaller images", 413)
            if size > 1024 * 1024 and size / compressed > limits.max_ratio:
                raise ZipRefused("zip_bomb", f"images: entry {info.filename!r} has a compression ratio above "
                                             f"{limits.max_ratio:.0f}:1, which no real image has", 413)
    return out.getvalue()


def image_entries(data: bytes, limits: ZipLimits = DEFAULT_ZIP_LIMITS) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The image files of a zip as (name, bytes), sorted by name, and the names of other files it ignored.

    Raises :class:`ZipRefused` (not a zip, empty, unsafe names, too many entries, a zip bomb)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ZipRefused("not_a_zip", "images: the upload is not a zip file; put your PNG/JPEG images in a .zip") from exc
    with zf:
        try:
            infos = zf.infolist()
        except (zipfile.BadZipFile, OSError) as exc:  # pragma: no cover - infolist is read at open
            raise ZipRefused("not_a_zip", f"images: the zip directory is unreadable ({exc})") from exc
        if not infos:
            raise ZipRefused("empty_zip", "images: the zip is empty; add your PNG/JPEG images to it")
        if len(infos) > limits.max_entries:
            raise ZipRefused("too_many_files", f"images: the zip has {len(infos)} entries, more than the limit of "
                                               f"{limits.max_entries}", 413)
        for info in infos:
            why = unsafe_name(info.filename)
            if why:
                raise ZipRefused("unsafe_path", f"images: entry {info.filename!r} {why}; zip the images with "
                                                "relative names only")
            if _is_symlink(info):
                raise ZipRefused("unsafe_path", f"images: entry {info.filename!r} is a symbolic link; zip the files themselves")
        wanted = [i for i in infos if not _skipped(i) and PurePosixPath(i.filename).suffix.lower() in IMAGE_SUFFIXES]
        ignored = [i.filename for i in infos if not _skipped(i) and i not in wanted]
        declared = sum(i.file_size for i in wanted)
        if declared > limits.max_total_bytes:  # cheap early refusal; the streaming checks below are what holds
            raise ZipRefused("zip_bomb", f"images: the zip declares {declared} bytes of images in total, more than the limit "
                                         f"of {limits.max_total_bytes}", 413)
        out: list[tuple[str, bytes]] = []
        total = 0
        for info in sorted(wanted, key=lambda i: i.filename):
            try:
                blob = _read_entry(zf, info, limits, total)
            except (zipfile.BadZipFile, EOFError, OSError, zlib.error, NotImplementedError, RuntimeError) as exc:
                # BadZipFile: CRC/header mismatch (a truncated zip); zlib.error: corrupt deflate data;
                # NotImplementedError: unknown compression; RuntimeError: an encrypted entry
                raise ZipRefused("corrupt_zip", f"images: entry {info.filename!r} cannot be read ({exc}); "
                                                "re-create the zip") from exc
            total += len(blob)
            out.append((info.filename, blob))
        return out, ignored
