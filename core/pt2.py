"""torch.export programs (``.pt2``, ``torch.export.save``) read without running anything from the file.

``torch.export.load`` is not safe for uploads: it reads pickled weights and constants with
``torch.load(..., weights_only=False)`` and ``pickle.loads``, resolves node targets by walking ``torch``'s
attributes (so a node can name any function under ``torch``), and parses shape expressions with
``sympy.sympify``, which evaluates Python. :func:`load_program` reads the archive itself and hands torch's
deserialiser only what it has checked:

* the zip: at most ``MAX_ENTRIES`` entries with safe names under one root, each decompressed under a size and
  ratio limit (no zip bombs);
* tensors (weights and constants): raw bytes only, each checked against its declared dtype, sizes, strides and
  offset; pickled tensors, script objects and opaque objects are refused;
* the program (``models/<name>.json``): every node's target is a registered ATen operator or one of a few
  arithmetic operators on sizes; every shape expression is tokens of a small grammar (integers, size symbols,
  arithmetic, the sympy functions torch writes); node metadata (stack traces, module paths) is dropped.

Nothing else in the archive (sample inputs, AOTInductor libraries, extra files) is read.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from typing import Any

import torch
from torch._export.serde import schema
from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass, deserialize_scalar_type

from core.safezip import unsafe_name

MAX_ENTRIES = 20_000
MAX_ENTRY_BYTES = 1 << 30  # one entry, decompressed
MAX_TOTAL_BYTES = 2 << 30  # the whole archive, decompressed
MAX_RATIO = 200.0  # decompressed / compressed for an entry above 1 MiB (torch.export.save stores entries uncompressed)
MAX_PROGRAM_BYTES = 64 << 20  # models/<name>.json


class Pt2Error(ValueError):
    """A ``.pt2`` file that is damaged, hostile or of a kind the service cannot use; the message says which."""

    status, code = 422, "bad_model_file"


# Node targets a generator's program may call: ATen operators (checked to be registered) and Python's arithmetic
# on sizes, which torch.export writes as ``_operator.<name>`` and ``torch.sym_<name>``.
_ATEN = re.compile(r"^torch\.ops\.aten\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)$")
_OPERATORS = {"add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "getitem", "eq", "ne", "lt", "le", "gt",
              "ge", "and_", "or_", "not_"}
_SYM_FUNCS = {"sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_sqrt", "sym_ite", "sym_sum"}
# Shape expressions (sympy source that torch writes): integers, size symbols (s0, u1, ...), arithmetic and these names.
_EXPR_NAMES = {"FloorDiv", "Mod", "PythonMod", "CeilToInt", "FloorToInt", "TruncToInt", "RoundToInt", "CleanDiv", "IntTrueDiv",
               "FloatTrueDiv", "ToFloat", "Max", "Min", "Abs", "Eq", "Ne", "Ge", "Gt", "Le", "Lt", "And", "Or", "Not", "oo",
               "True", "False", "sqrt", "OpaqueUnaryFn_sqrt", "PowByNatural", "FloatPow", "Identity",
               # sympy's own spelling (srepr), which torch writes: Mul(Integer(8), Symbol('s0', positive=True, integer=True))
               "Add", "Mul", "Pow", "Integer", "Rational", "Float", "Symbol", "positive", "negative", "nonnegative",
               "nonpositive", "integer", "real", "finite", "zero", "nonzero", "Infinity", "NegativeInfinity"}
_EXPR_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:e[+-]?\d+)?)|(?P<sym>'[a-z]{1,3}\d+')|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                         r"|(?P<op>\*\*|//|[-+*/%(),<>=!]=?|[<>]))")
_SYMBOL = re.compile(r"^[a-z]{1,3}\d+$")


def _check_expr(expr: str) -> None:
    """Refuse a shape expression that is not in the small grammar above: ``sympy.sympify`` evaluates its input."""
    if len(expr) > 10_000:
        raise Pt2Error("the program holds a shape expression longer than 10000 characters")
    pos = 0
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            if expr[pos:].strip() == "":
                break
            raise Pt2Error(f"the program holds a shape expression that is not arithmetic on sizes: {expr[:80]!r}")
        name = m.group("name")
        if name is not None and name not in _EXPR_NAMES and not _SYMBOL.match(name):
            raise Pt2Error(f"the program holds a shape expression naming {name!r}, which is not a size symbol: {expr[:80]!r}")
        pos = m.end()


def _check_target(target: str) -> None:
    if m := _ATEN.match(target):
        packet = getattr(torch.ops.aten, m.group(1), None)
        if packet is None or m.group(2) not in getattr(packet, "overloads", lambda: [])():
            raise Pt2Error(f"the program calls {target}, which this torch does not have")
        return
    module, _, name = target.partition(".")
    if (module == "_operator" and name in _OPERATORS) or (module == "torch" and name in _SYM_FUNCS):
        return
    raise Pt2Error(f"the program calls {target!r}, which is not a standard ATen operator (custom operators, "
                   "higher-order operators and Python functions are not accepted); export the generator with "
                   "torch.export.export and only standard layers")


def _walk(node: Any, on_dict: Any) -> None:
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            on_dict(cur)
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)


def check_program(program: dict[str, Any]) -> dict[str, Any]:
    """The program's JSON with its metadata dropped, once every target and expression in it is accepted."""
    try:
        graph = program["graph_module"]["graph"]
        nodes = graph["nodes"]
    except (KeyError, TypeError) as exc:
        raise Pt2Error(f"models/*.json is not an exported program: no {exc}") from exc
    if graph.get("custom_obj_values"):
        raise Pt2Error("the program holds script objects (torchbind); they are not accepted")
    for node in nodes:
        if not isinstance(node, dict) or not isinstance(node.get("target"), str):
            raise Pt2Error("the program has a node without a target")
        _check_target(node["target"])
        node["metadata"] = {}

    def on_dict(d: dict[str, Any]) -> None:
        if "expr_str" in d:
            if not isinstance(d["expr_str"], str):
                raise Pt2Error("the program has a shape expression that is not a string")
            _check_expr(d["expr_str"])
        if "as_custom_obj" in d or "custom_obj" in d:
            raise Pt2Error("the program takes script objects (torchbind); they are not accepted")

    _walk(program, on_dict)
    for key in program.get("range_constraints") or {}:
        _check_expr(str(key))
    program["graph_module"]["metadata"] = {}
    return program


class _Archive:
    """The entries of a .pt2 zip under its one root folder, read with limits."""

    def __init__(self, data: bytes) -> None:
        try:
            self.zf = zipfile.ZipFile(io.BytesIO(data))
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise Pt2Error(f"not a .pt2 archive (a zip written by torch.export.save): {exc}") from exc
        if len(infos) > MAX_ENTRIES:
            raise Pt2Error(f"the archive has {len(infos)} entries (limit {MAX_ENTRIES})")
        for info in infos:
            if why := unsafe_name(info.filename):
                raise Pt2Error(f"archive entry {info.filename[:80]!r} {why}")
        roots = {info.filename.split("/", 1)[0] for info in infos}
        if len(roots) != 1:
            raise Pt2Error("not a .pt2 archive: its entries do not share one root folder")
        self.root = roots.pop() + "/"
        self.infos = {info.filename[len(self.root):]: info for info in infos if not info.is_dir()}
        self.total = 0

    def names(self) -> list[str]:
        return list(self.infos)

    def read(self, name: str, limit: int = MAX_ENTRY_BYTES) -> bytes:
        info = self.infos.get(name)
        if info is None:
            raise Pt2Error(f"not a complete .pt2 archive: {name} is missing")
        out = io.BytesIO()
        try:
            with self.zf.open(info) as fh:
                while chunk := fh.read(1 << 20):
                    out.write(chunk)
                    size = out.tell()
                    if size > limit or self.total + size > MAX_TOTAL_BYTES:
                        raise Pt2Error(f"archive entry {name} expands past the size limit")
                    if size > 1 << 20 and size / max(info.compress_size, 1) > MAX_RATIO:
                        raise Pt2Error(f"archive entry {name} has a compression ratio above {MAX_RATIO:.0f}:1 (a zip bomb?)")
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            if isinstance(exc, Pt2Error):
                raise
            raise Pt2Error(f"archive entry {name} is damaged: {exc}") from exc
        self.total += out.tell()
        return out.getvalue()

    def json(self, name: str, limit: int = MAX_PROGRAM_BYTES) -> Any:
        try:
            return json.loads(self.read(name, limit))
        except (ValueError, RecursionError) as exc:
            raise Pt2Error(f"archive entry {name} is not JSON: {str(exc)[:200]}") from exc


def _tensors(archive: _Archive, config_name: str, folder: str, what: str) -> dict[str, torch.Tensor]:
    """The tensors a payload config lists, from raw bytes only, each checked against its declared layout."""
    try:
        config = _dict_to_dataclass(schema.PayloadConfig, archive.json(config_name))
    except Pt2Error:
        raise
    except Exception as exc:  # noqa: BLE001 - any refusal of the schema is a malformed config
        raise Pt2Error(f"{config_name} is not a payload config: {str(exc)[:200]}") from exc
    storages: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for fqn, meta in config.config.items():
        if meta.use_pickle:
            raise Pt2Error(f"{what} {fqn!r} is pickled (a tensor subclass); pickles can run code and are not accepted: "
                           "export plain tensors")
        if not meta.path_name.startswith(("weight_", "tensor_")) or "/" in meta.path_name:
            raise Pt2Error(f"{what} {fqn!r} is a script or opaque object ({meta.path_name}); only tensors are accepted")
        tm = meta.tensor_meta
        if tm is None:
            raise Pt2Error(f"{what} {fqn!r} has no tensor layout")
        try:
            dtype = deserialize_scalar_type(tm.dtype)
            sizes = [int(s.as_int) for s in tm.sizes]
            strides = [int(s.as_int) for s in tm.strides]
            offset = int(tm.storage_offset.as_int)
        except Exception as exc:  # noqa: BLE001 - symbolic or missing sizes
            raise Pt2Error(f"{what} {fqn!r} has a malformed layout: {str(exc)[:120]}") from exc
        if dtype.is_complex:
            raise Pt2Error(f"{what} {fqn!r} has dtype {dtype}")
        if any(s < 0 for s in sizes) or any(s < 0 for s in strides) or offset < 0 or len(sizes) != len(strides):
            raise Pt2Error(f"{what} {fqn!r} has a negative or mismatched size, stride or offset")
        if math.prod(sizes) > 256 * 2**20:
            raise Pt2Error(f"{what} {fqn!r} declares {math.prod(sizes)} elements (limit {256 * 2**20})")
        if meta.path_name not in storages:
            raw = archive.read(f"data/{folder}/{meta.path_name}")
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) % itemsize:
                raise Pt2Error(f"{what} {fqn!r}: {len(raw)} bytes is not a whole number of {dtype} elements (truncated?)")
            storages[meta.path_name] = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        storage = storages[meta.path_name]
        if storage.dtype != dtype:
            raise Pt2Error(f"{what} {fqn!r} shares its bytes with a tensor of another dtype")
        last = offset + sum((s - 1) * st for s, st in zip(sizes, strides)) if all(sizes) else offset - 1
        if last >= storage.numel():
            raise Pt2Error(f"{what} {fqn!r} declares shape {sizes} but its file holds only {storage.numel()} elements (truncated?)")
        t = storage.as_strided(sizes, strides, offset) if all(sizes) else torch.empty(sizes, dtype=dtype)
        out[fqn] = torch.nn.Parameter(t, requires_grad=bool(tm.requires_grad)) if meta.is_param else t
    return out


def load_program(data: bytes) -> torch.export.ExportedProgram:
    """The one exported program of a ``.pt2`` file, checked as the module docstring says; :class:`Pt2Error` if not."""
    archive = _Archive(data)
    names = archive.names()
    if archive.read("archive_format", 64).strip() != b"pt2":
        raise Pt2Error("not a .pt2 archive: archive_format is not pt2")
    models = [n for n in names if n.startswith("models/") and n.endswith(".json")]
    if len(models) != 1:
        raise Pt2Error(f"the archive holds {len(models)} programs; upload one exported program (torch.export.save(ep, path))")
    model = models[0][len("models/"):-len(".json")]
    if f"data/weights/{model}.pt" in names or f"data/constants/{model}.pt" in names:
        raise Pt2Error("the archive keeps its weights in the legacy pickled layout; save it again with torch.export.save "
                       "of torch 2.7 or newer")
    state = _tensors(archive, f"data/weights/{model}_weights_config.json", "weights", "weight")
    constants = _tensors(archive, f"data/constants/{model}_constants_config.json", "constants", "constant")
    program = check_program(archive.json(models[0]))
    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, program)
        return ExportedProgramDeserializer().deserialize(serialized, state, constants, None)  # type: ignore[no-any-return]
    except Pt2Error:
        raise
    except Exception as exc:  # noqa: BLE001 - torch's own refusals of a malformed program
        raise Pt2Error(f"the exported program could not be read: {type(exc).__name__}: {str(exc)[:300]}") from exc


def is_pt2(data: bytes) -> bool:
    """A zip whose entries include ``<root>/archive_format`` (what torch.export.save writes)."""
    if data[:2] != b"PK":
        return False
    try:
        return any(n.endswith("/archive_format") or n == "archive_format" for n in zipfile.ZipFile(io.BytesIO(data)).namelist())
    except (zipfile.BadZipFile, ValueError, OSError):
        return False
