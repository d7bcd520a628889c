"""Model files users bring: ONNX generators of any architecture, and state dicts as safetensors or torch files.

Nothing from a file is ever executed. A torch file is loaded with ``weights_only=True``
(``core/checkpoints.py``); a safetensors file is a JSON header plus raw tensor bytes, checked before it is read;
an ONNX file is a protobuf graph of standard operators, checked here and then converted to torch modules by
``onnx2torch`` (each node becomes a torch module of a known kind), so its weights can be mined and finetuned
like any generator's.

An ONNX generator maps z [N, z_dim] (and, for a class-conditional one, a second input: class indices [N] or
one-hot rows [N, n_classes]) to images [N, C, H, W]. The uploader declares how z is distributed (``z_dist``:
``normal`` with std ``z_scale``, or ``uniform`` on [-z_scale, z_scale]), the range of the output and, for a
class input, ``n_classes`` and its form (``class_input``); :class:`OnnxGenerator` turns the engine's u ~ N(0, I)
into that z (an invertible, differentiable map, so mining and sampling keep drawing N(0, I) latents), the
engine's class indices into the graph's form, and the output into [-1, 1]. A class-conditional generator is
mined as the family of its classes {G(z, c)} (supplement Sec. A), like the project's one-hot conditional nets.

An ONNX critic maps images [N, C, H, W] in [-1, 1] to one score per image ([N] or [N, 1]):
:class:`OnnxCritic`. Its weights are finetuned like any critic's (S^3 and FreezeD read only module types).
"""

from __future__ import annotations

import json
import math
import struct
import sys
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MAX_TENSOR_ELEMENTS = 256 * 2**20  # one declared tensor; far above any generator that fits an upload
ONNX_OPSET = 17  # the newest default-domain opset onnx2torch converts every common operator of


class ModelFormatError(ValueError):
    """A model file that is damaged, hostile or of a kind the service cannot use; the message says which."""

    status, code = 422, "bad_model_file"


# --- safetensors and torch state dicts ---------------------------------------------------------------------

_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def is_safetensors(data: bytes) -> bool:
    return len(data) >= 10 and data[8:9] == b"{"


def read_state(data: bytes, what: str = "weights") -> dict[str, Any]:
    """A dict of tensors from a safetensors file or a torch file (``weights_only``)."""
    if is_safetensors(data):
        return _read_safetensors(data, what)
    from core.checkpoints import load

    return load(data)


def _read_safetensors(data: bytes, what: str) -> dict[str, torch.Tensor]:
    """Check the header against the file before any tensor is read: sizes, offsets and dtypes must agree."""
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(len(data) - 8, 100 * 2**20):
        raise ModelFormatError(f"{what}: safetensors header of {n} bytes does not fit the {len(data)}-byte file (truncated?)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{what}: safetensors header is not JSON: {exc}") from exc
    body = len(data) - 8 - n
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            size, shape, (start, end) = _ST_DTYPES[spec["dtype"]], spec["shape"], spec["data_offsets"]
            elements = math.prod(int(d) for d in shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{what}: tensor {name!r} has a malformed entry ({exc})") from exc
        if elements > MAX_TENSOR_ELEMENTS:
            raise ModelFormatError(f"{what}: tensor {name!r} declares {elements} elements (limit {MAX_TENSOR_ELEMENTS})")
        if not 0 <= start <= end <= body or end - start != elements * size:
            raise ModelFormatError(f"{what}: tensor {name!r} lies outside the file or its size does not match its shape (truncated?)")
    from safetensors.torch import load as load_safetensors

    try:
        return load_safetensors(data)
    except Exception as exc:  # noqa: BLE001 - any refusal of the parser is a bad file
        raise ModelFormatError(f"{what}: not a readable safetensors file: {exc}") from exc


# --- ONNX generators ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxGeneratorConfig:
    z_dim: int
    img_size: int
    channels: int
    z_dist: str = "normal"  # how the graph's z is distributed: "normal" (std z_scale) or "uniform" (on [-z_scale, z_scale])
    z_scale: float = 1.0
    out_min: float = -1.0  # the range of the graph's output images
    out_max: float = 1.0
    n_classes: int = 0  # > 0: the graph's second input is the class: indices [N] or one-hot rows [N, n_classes]
    class_input: str = "index"  # "index" (integer [N]) or "onehot" (float [N, n_classes])
    embed_dim: int = 0  # the shared interface of generators: ONNX graphs take the class itself, not an embedding

    def __post_init__(self) -> None:
        if self.z_dist not in ("normal", "uniform"):
            raise ValueError(f"z_dist: {self.z_dist!r} is not normal or uniform")
        if not self.out_max > self.out_min or self.z_scale <= 0:
            raise ValueError("output_range must be [low, high] with low < high, and z_scale positive")
        if self.class_input not in CLASS_INPUTS:
            raise ValueError(f"class_input: {self.class_input!r} is not one of {', '.join(CLASS_INPUTS)}")
        if self.embed_dim or not 0 <= self.n_classes <= 10_000:
            raise ValueError("n_classes must be 0 (unconditional) to 10000, and embed_dim 0 (the graph takes the class itself)")
        if min(self.z_dim, self.img_size, self.channels) < 1:
            raise ValueError("z_dim, img_size and channels must be positive")


def _onnx2torch() -> Any:
    """onnx2torch, imported without torchvision: it imports torchvision only for two detection operators (NMS,
    RoIAlign) that no generator uses, and torchvision does not import beside this torch. A stand-in module takes
    its place; converting a graph with those operators is refused before conversion (they are not supported)."""
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except Exception:  # noqa: BLE001 - absent or broken: use the stand-in
            stand_in, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

            def unavailable(*_: Any, **__: Any) -> Any:
                raise NotImplementedError("torchvision operators are not available")

            ops.nms = ops.roi_align = ops.box_convert = unavailable  # type: ignore[attr-defined]
            stand_in.ops = ops  # type: ignore[attr-defined]
            sys.modules["torchvision"], sys.modules["torchvision.ops"] = stand_in, ops
    import onnx2torch

    _register_extra_converters()
    return onnx2torch


def _register_extra_converters() -> None:
    """Converters for standard ONNX operators that onnx2torch lacks and generators use: OneHot (what
    ``F.one_hot`` of a one-hot conditional generator exports to). Registered once, for each opset that defines it."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node

    class OnnxOneHot(nn.Module, OnnxToTorchModule):  # type: ignore[misc]
        """OneHot(indices, depth, values[off, on]) along ``axis``; negative indices count from depth, as the spec says."""

        def __init__(self, axis: int) -> None:
            super().__init__()
            self.axis = axis

        def forward(self, indices: torch.Tensor, depth: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
            d = int(depth.reshape(-1)[0])
            idx = indices.long()
            idx = torch.where(idx < 0, idx + d, idx)
            hot = nn.functional.one_hot(idx, d).to(values.dtype)  # [..., d]
            out = values[0] + (values[1] - values[0]) * hot
            return out.movedim(-1, self.axis) if self.axis not in (-1, out.dim() - 1) else out

    def convert(node: Any, graph: Any) -> Any:  # noqa: ARG001 - the registry's signature
        return OperationConverterResult(torch_module=OnnxOneHot(int(node.attributes.get("axis", -1))),
                                        onnx_mapping=onnx_mapping_from_node(node=node))

    for version in (9, 11):
        if OperationDescription("", "OneHot", version) not in _CONVERTER_REGISTRY:
            add_converter(operation_type="OneHot", version=version)(convert)


_NOT_FOR_GENERATORS = {"NonMaxSuppression", "RoiAlign", "If", "Loop", "Scan"}
CLASS_INPUTS = ("index", "onehot")


def check_onnx(data: bytes, z_dim: int | None = None, n_classes: int = 0, class_input: str = "index",
               role: str = "generator", image_shape: tuple[int, int, int] | None = None) -> Any:
    """The ModelProto of ``data`` if it is a self-contained graph of operators the converter handles, with the
    inputs and output of its ``role``; else :class:`ModelFormatError` naming what is wrong. A generator: z [N, z_dim]
    (plus the class, when ``n_classes``) -> [N, C, H, W]; a critic: images [N, C, H, W] (``image_shape``) -> [N] or
    [N, 1]. Down-converts newer opsets first."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)  # external data is never loaded: a path in the file is refused below
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"not an ONNX model (damaged or truncated): {exc}") from exc
    g = model.graph
    if not g.node and not g.output:
        raise ModelFormatError("not an ONNX model: the graph is empty (damaged or truncated?)")
    if model.functions:
        raise ModelFormatError("ONNX models with local functions are not supported; export without them")
    tensors = list(g.initializer) + [a.t for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
            raise ModelFormatError(f"tensor {t.name!r} keeps its data in an external file; upload a single self-contained .onnx")
        elements = math.prod(t.dims)
        if elements > MAX_TENSOR_ELEMENTS:
            raise ModelFormatError(f"tensor {t.name!r} declares {elements} elements (limit {MAX_TENSOR_ELEMENTS})")
        if t.raw_data:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            if len(t.raw_data) != elements * itemsize:
                raise ModelFormatError(f"tensor {t.name!r}: {len(t.raw_data)} bytes for a declared {elements} elements (truncated?)")
    inits = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if not g.output:
        raise ModelFormatError("the graph has no output")
    if role == "critic":
        _check_critic_io(inputs, g.output, image_shape)
    else:
        _check_generator_io(inputs, g.output, z_dim, n_classes, class_input)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), ONNX_OPSET)
    if opset > ONNX_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, ONNX_OPSET)
            opset = ONNX_OPSET
        except Exception:  # noqa: BLE001 - the ops check below names what cannot be converted
            pass
    _check_ops(model, opset)
    return model


def _check_generator_io(inputs: list[Any], outputs: Any, z_dim: int | None, n_classes: int, class_input: str) -> None:
    want = 2 if n_classes else 1
    if len(inputs) != want:
        declared = (f"the declared n_classes {n_classes} needs two: z [N, z_dim] and the class" if n_classes else
                    "an unconditional generator takes one, z [N, z_dim]; declare n_classes (and class_input) for a class input")
        raise ModelFormatError(f"the graph takes {len(inputs)} inputs; {declared}")
    z_shape = _dims(inputs[0])
    if len(z_shape) != 2 or (z_dim is not None and isinstance(z_shape[1], int) and z_shape[1] != z_dim):
        raise ModelFormatError(f"input {inputs[0].name!r} has shape {z_shape}; expected [N, z_dim] with the declared z_dim {z_dim}")
    if n_classes:
        c, c_shape = inputs[1], _dims(inputs[1])
        integer = c.type.tensor_type.elem_type in _INTEGER_TYPES
        if class_input == "index" and (len(c_shape) != 1 or not integer):
            raise ModelFormatError(f"class input {c.name!r} has shape {c_shape}; class_input index expects integer class indices [N]")
        if class_input == "onehot" and (len(c_shape) != 2 or integer or (isinstance(c_shape[1], int) and c_shape[1] != n_classes)):
            raise ModelFormatError(f"class input {c.name!r} has shape {c_shape}; class_input onehot expects float rows "
                                   f"[N, n_classes] with the declared n_classes {n_classes}")
    out_shape = _dims(outputs[0])
    if out_shape and len(out_shape) != 4:
        raise ModelFormatError(f"output {outputs[0].name!r} has rank {len(out_shape)}; a generator outputs images [N, C, H, W]")


def _check_critic_io(inputs: list[Any], outputs: Any, image_shape: tuple[int, int, int] | None) -> None:
    if len(inputs) != 1:
        raise ModelFormatError(f"the critic graph takes {len(inputs)} inputs; a critic takes one, images [N, C, H, W]")
    x_shape = _dims(inputs[0])
    if len(x_shape) != 4 or (image_shape is not None and any(isinstance(d, int) and d != w for d, w in zip(x_shape[1:], image_shape))):
        raise ModelFormatError(f"critic input {inputs[0].name!r} has shape {x_shape}; expected images [N, C, H, W] = "
                               f"[N, {', '.join(map(str, image_shape or ('C', 'H', 'W')))}] as the generator makes")
    out_shape = _dims(outputs[0])
    if out_shape and (len(out_shape) not in (1, 2) or (len(out_shape) == 2 and out_shape[1] not in (1, "?") and isinstance(out_shape[1], int))):
        raise ModelFormatError(f"critic output {outputs[0].name!r} has shape {out_shape}; a critic outputs one score per image, [N] or [N, 1]")


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim]


def _check_ops(model: Any, opset: int) -> None:
    from onnx2torch.node_converters.registry import get_converter

    _onnx2torch()
    bad: list[str] = []
    for node in model.graph.node:
        domain = node.domain or "ai.onnx"
        if node.op_type in _NOT_FOR_GENERATORS or domain not in ("ai.onnx", ""):
            bad.append(f"{node.op_type} ({domain})")
            continue
        try:
            get_converter(node.op_type, opset, "")
        except NotImplementedError:
            bad.append(f"{node.op_type} (opset {opset})")
    if bad:
        raise ModelFormatError(f"unsupported ONNX operator(s): {', '.join(sorted(set(bad)))}")


_INTEGER_TYPES = {6, 7, 2, 3, 4, 5, 12, 13}  # onnx.TensorProto INT32, INT64, UINT8, INT8, UINT16, INT16, UINT32, UINT64


def _convert(graph: bytes, **check: Any) -> nn.Module:
    try:
        return _onnx2torch().convert(check_onnx(graph, **check))  # type: ignore[no-any-return]
    except ModelFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - the converter's own refusals
        raise ModelFormatError(f"the ONNX graph could not be converted: {exc}") from exc


class _OnnxModule(nn.Module):
    """What the ONNX generator and critic share: the graph's bytes travel with the weights as the uint8 buffer
    ``onnx_graph``, so a checkpoint rebuilds the module (:meth:`from_state`) with no code; batch-norm layers keep their
    statistics (eval mode even in train mode)."""

    def _keep_graph(self, graph: bytes) -> None:
        self.register_buffer("onnx_graph", torch.frombuffer(bytearray(graph), dtype=torch.uint8).clone())
        self.train(False)

    def graph_bytes(self) -> bytes:
        graph: torch.Tensor = self.get_buffer("onnx_graph")
        return graph.cpu().numpy().tobytes()

    @classmethod
    def from_state(cls, cfg: Any, state: dict[str, torch.Tensor]) -> Any:
        module = cls(cfg, bytes(state["onnx_graph"].numpy().tobytes()))  # type: ignore[call-arg]
        module.load_state_dict(state)
        return module

    def train(self, mode: bool = True) -> Any:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


class OnnxGenerator(_OnnxModule):
    """A generator from an ONNX graph: x = out(graph(zmap(u))), u ~ N(0, I) [N, z_dim] -> [N, C, H, W] in [-1, 1].

    The graph's bytes travel with the weights as the uint8 buffer ``onnx_graph``, so a checkpoint rebuilds the
    module (:meth:`from_state`) with no code. Batch-norm layers keep their pretrained statistics (eval mode even in
    train mode), as for the DCGAN layout: mining must not change a frozen generator's buffers."""

    def __init__(self, cfg: OnnxGeneratorConfig, graph: bytes) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = _convert(graph, z_dim=cfg.z_dim, n_classes=cfg.n_classes, class_input=cfg.class_input)
        self._keep_graph(graph)

    def forward(self, u: torch.Tensor, c: torch.Tensor | None = None, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """u [N, z_dim] ~ N(0, I); c [N] class indices (a class-conditional graph only) -> [N, C, H, W] in [-1, 1]."""
        cfg = self.cfg
        if embedding is not None:
            raise ValueError("an ONNX generator takes class indices, not an embedding")
        if (c is not None) != bool(cfg.n_classes):
            raise ValueError("this ONNX generator is class-conditional: it needs class indices" if cfg.n_classes
                             else "this ONNX generator is unconditional")
        if cfg.z_dist == "uniform":  # probability integral transform: N(0, 1) -> U(-1, 1), scaled
            z = cfg.z_scale * torch.erf(u / math.sqrt(2.0))
        else:
            z = cfg.z_scale * u if cfg.z_scale != 1.0 else u
        if c is None:
            x = self.net(z)  # [N, C, H, W] in [out_min, out_max]
        elif cfg.class_input == "onehot":
            x = self.net(z, nn.functional.one_hot(c, cfg.n_classes).to(z.dtype))  # c as rows [N, n_classes]
        else:
            x = self.net(z, c)
        if (cfg.out_min, cfg.out_max) != (-1.0, 1.0):
            x = (x - cfg.out_min) * (2.0 / (cfg.out_max - cfg.out_min)) - 1.0
        return x  # type: ignore[no-any-return]


@dataclass(frozen=True)
class OnnxCriticConfig:
    img_size: int
    channels: int
    in_min: float = -1.0  # the range of images the graph expects
    in_max: float = 1.0
    n_classes: int = 0  # unconditional only (the shared interface of critics)

    def __post_init__(self) -> None:
        if not self.in_max > self.in_min:
            raise ValueError("input_range must be [low, high] with low < high")
        if self.n_classes:
            raise ValueError("ONNX critics are unconditional")


class OnnxCritic(_OnnxModule):
    """A critic from an ONNX graph: D(x), images [N, C, H, W] in [-1, 1] -> scores [N, 1]. The graph's own input
    range is declared (``in_min``, ``in_max``) and the images are mapped to it. Its bytes travel with the weights
    as the buffer ``onnx_graph``, as :class:`OnnxGenerator`'s do. Batch-norm layers keep their statistics."""

    def __init__(self, cfg: OnnxCriticConfig, graph: bytes) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = _convert(graph, role="critic", image_shape=(cfg.channels, cfg.img_size, cfg.img_size))
        self._keep_graph(graph)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if c is not None:
            raise ValueError("an ONNX critic is unconditional")
        cfg = self.cfg
        if (cfg.in_min, cfg.in_max) != (-1.0, 1.0):
            x = (x + 1.0) * ((cfg.in_max - cfg.in_min) / 2.0) + cfg.in_min
        return self.net(x).reshape(x.shape[0], 1)  # type: ignore[no-any-return]  # [N, 1]

