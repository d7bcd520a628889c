"""Model files users bring: torch.export programs (``core/pt2.py``) and ONNX graphs of any architecture (state
dicts, as safetensors or torch files, are read by ``core/checkpoints.py``).

Nothing from a file is ever executed. An ONNX file is a protobuf graph of standard operators, checked here and then converted to torch modules by
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

import importlib.machinery
import math
import sys
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.pt2 import Pt2Error, load_program

MAX_TENSOR_ELEMENTS = 256 * 2**20  # one declared tensor; far above any generator that fits an upload
ONNX_OPSET = 17  # the newest default-domain opset onnx2torch converts every common operator of


class ModelFormatError(ValueError):
    """A model file that is damaged, hostile or of a kind the service cannot use; the message says which."""

    status, code = 422, "bad_model_file"


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
            stand_in.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)  # torch.onnx looks for it
            ops.__spec__ = importlib.machinery.ModuleSpec("torchvision.ops", None)

            def unavailable(*_: Any, **__: Any) -> Any:
                raise NotImplementedError("torchvision operators are not available")

            ops.nms = ops.roi_align = ops.box_convert = unavailable  # type: ignore[attr-defined]
            stand_in.ops = ops  # type: ignore[attr-defined]
            sys.modules["torchvision"], sys.modules["torchvision.ops"] = stand_in, ops
    import onnx2torch

    _register_extra_converters()
    return onnx2torch


def _register_extra_converters() -> None:
    """Converters for what onnx2torch lacks and generators use, registered once:

    * ``OneHot`` (what ``F.one_hot`` of a one-hot conditional generator exports to);
    * ``RandomNormalLike`` / ``RandomUniformLike`` (StyleGAN-type noise inputs), drawn from torch's generator;
    * ``minegan.Conv``: a convolution whose weights the graph computes (a modulated, demodulated convolution),
      which :func:`normalise` writes for a ``Conv`` with a non-constant weight input;
    * ``minegan.Reshape``: ``Reshape`` with ``allowzero=1`` and a shape computed in the graph (a zero in it is a
      zero-sized dimension, as in ``torch.reshape``)."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node

    if OperationDescription(MINEGAN_DOMAIN, "Conv", 1) in _CONVERTER_REGISTRY:
        return

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

    class OnnxRandomLike(nn.Module, OnnxToTorchModule):  # type: ignore[misc]
        """RandomNormalLike (mean + scale * N(0, 1)) or RandomUniformLike (U(low, high)) of the input's shape."""

        def __init__(self, normal: bool, a: float, b: float) -> None:
            super().__init__()
            self.normal, self.a, self.b = normal, a, b

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.normal:
                return self.a + self.b * torch.randn_like(x)
            return self.a + (self.b - self.a) * torch.rand_like(x)

    class OnnxComputedConv(nn.Module, OnnxToTorchModule):  # type: ignore[misc]
        """Conv(x, w[, b]) with w an input (ONNX Conv semantics, auto_pad NOTSET): pads [begin..., end...]."""

        def __init__(self, strides: list[int], pads: list[int], dilations: list[int], group: int) -> None:
            super().__init__()
            self.strides, self.pads, self.dilations, self.group = strides, pads, dilations, group

        def forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
            dims = w.dim() - 2
            pads = self.pads or [0] * (2 * dims)
            begin, end = pads[:dims], pads[dims:]
            if begin != end:  # F.pad takes the last dimension first
                x = nn.functional.pad(x, [p for i in reversed(range(dims)) for p in (begin[i], end[i])])
                begin = [0] * dims
            conv = (nn.functional.conv1d, nn.functional.conv2d, nn.functional.conv3d)[dims - 1]
            return conv(x, w, b, self.strides or 1, begin, self.dilations or 1, self.group)  # type: ignore[no-any-return]

    class OnnxLiteralReshape(nn.Module, OnnxToTorchModule):  # type: ignore[misc]
        def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
            return x.reshape([int(d) for d in shape.tolist()])

    def one_hot(node: Any, graph: Any) -> Any:  # noqa: ARG001 - the registry's signature
        return OperationConverterResult(torch_module=OnnxOneHot(int(node.attributes.get("axis", -1))),
                                        onnx_mapping=onnx_mapping_from_node(node=node))

    def random_like(normal: bool) -> Any:
        def convert(node: Any, graph: Any) -> Any:  # noqa: ARG001
            at = node.attributes
            a, b = (at.get("mean", 0.0), at.get("scale", 1.0)) if normal else (at.get("low", 0.0), at.get("high", 1.0))
            return OperationConverterResult(torch_module=OnnxRandomLike(normal, float(a), float(b)),
                                            onnx_mapping=OnnxMapping(inputs=node.input_values[:1], outputs=node.output_values))
        return convert

    def computed_conv(node: Any, graph: Any) -> Any:  # noqa: ARG001
        at = node.attributes
        module = OnnxComputedConv(list(at.get("strides", [])), list(at.get("pads", [])), list(at.get("dilations", [])),
                                  int(at.get("group", 1)))
        return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node=node))

    def literal_reshape(node: Any, graph: Any) -> Any:  # noqa: ARG001
        return OperationConverterResult(torch_module=OnnxLiteralReshape(), onnx_mapping=onnx_mapping_from_node(node=node))

    for version in (9, 11):
        if OperationDescription("", "OneHot", version) not in _CONVERTER_REGISTRY:
            add_converter(operation_type="OneHot", version=version)(one_hot)
    for op, normal in (("RandomNormalLike", True), ("RandomUniformLike", False)):
        if OperationDescription("", op, 1) not in _CONVERTER_REGISTRY:
            add_converter(operation_type=op, version=1)(random_like(normal))
    add_converter(operation_type="Conv", version=1, domain=MINEGAN_DOMAIN)(computed_conv)
    add_converter(operation_type="Reshape", version=1, domain=MINEGAN_DOMAIN)(literal_reshape)


MINEGAN_DOMAIN = "minegan"  # the two operators normalise() writes for the converter (see _register_extra_converters)


def normalise(model: Any) -> Any:
    """What ONNX exporters write today, rewritten into graphs the converter reads, with the same meaning:

    * onnxscript's optimiser (the one ``torch.onnx`` itself uses): constant folding, ``Constant`` nodes as
      initializers, ``Identity`` nodes and unused values removed;
    * omitted optional inputs (empty names) at the end of a node's inputs dropped; ``Clip`` with only a maximum
      gets the lowest float as its minimum;
    * ``Reshape`` with ``allowzero=1``: ``allowzero=0`` where the target shape is constant and holds no zero (the
      two then mean the same), else ``minegan.Reshape``;
    * ``Conv`` whose weights are computed in the graph (modulated convolutions): ``minegan.Conv``, the functional
      convolution.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnxscript import ir, optimizer
    from onnxscript.optimizer import common_passes

    try:  # folding only: onnxscript's rewrite rules (fusions) would change the weights' numbers
        graph = ir.serde.deserialize_model(model)
        optimizer.fold_constants(graph)
        optimizer.remove_unused_nodes(graph)
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(graph)
        model = ir.serde.serialize_model(graph)
    except Exception:  # noqa: BLE001 - the optimiser is an aid: an unoptimised graph is checked and converted as it is
        pass
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), ONNX_OPSET)
    if opset > ONNX_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, ONNX_OPSET)
        except Exception:  # noqa: BLE001 - the ops check names what cannot be converted
            pass
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    custom = False
    for node in g.node:
        while node.input and node.input[-1] == "":
            node.input.pop()
        if node.op_type == "Clip" and len(node.input) == 3 and node.input[1] == "":
            low = f"{node.name or node.output[0]}_minegan_low"
            g.initializer.append(numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), low))
            node.input[1] = low
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Reshape" and any(a.name == "allowzero" and a.i == 1 for a in node.attribute):
            shape = inits.get(node.input[1])
            if shape is not None and 0 not in numpy_helper.to_array(shape).tolist():
                for a in node.attribute:
                    if a.name == "allowzero":
                        a.i = 0
            else:
                node.domain, custom = MINEGAN_DOMAIN, True
                del node.attribute[:]
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] not in inits:
            if any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in node.attribute):
                raise ModelFormatError(f"node {node.name!r} (Conv with weights computed in the graph) uses auto_pad; "
                                       "export with explicit pads, or as .pt2 (torch.export.save)")
            node.domain, custom = MINEGAN_DOMAIN, True
    if custom and not any(o.domain == MINEGAN_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MINEGAN_DOMAIN, 1))
    return model


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
            raise ModelFormatError(f"tensor {t.name!r} keeps its data in an external file; upload a single self-contained .onnx "
                                   "(torch.onnx.export(..., external_data=False)), or a .pt2 (torch.export.save)")
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
    foreign = sorted({f"{n.op_type} ({n.domain})" for n in g.node if n.domain not in ("", "ai.onnx")})
    if foreign:  # refused as sent, before normalise() could drop an unused one
        raise ModelFormatError(f"unsupported ONNX operator(s): {', '.join(foreign)}; only the standard (ai.onnx) operators are accepted")
    model = normalise(model)
    _check_ops(model, next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), ONNX_OPSET))
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
    _onnx2torch()  # first: it puts the torchvision stand-in in place
    from onnx2torch.node_converters.registry import get_converter

    bad: list[str] = []
    for node in model.graph.node:
        domain = node.domain or "ai.onnx"
        if domain == MINEGAN_DOMAIN and node.op_type in ("Conv", "Reshape"):
            continue
        if node.op_type in _NOT_FOR_GENERATORS or domain not in ("ai.onnx", ""):
            bad.append(f"{node.op_type} ({domain})")
            continue
        try:
            get_converter(node.op_type, opset, "")
        except NotImplementedError:
            bad.append(f"{node.op_type} (opset {opset})")
    if bad:
        raise ModelFormatError(f"unsupported ONNX operator(s): {', '.join(sorted(set(bad)))}; export with "
                               f"torch.onnx.export(..., opset_version={ONNX_OPSET}), or {PT2_HINT}")


_INTEGER_TYPES = {6, 7, 2, 3, 4, 5, 12, 13}  # onnx.TensorProto INT32, INT64, UINT8, INT8, UINT16, INT16, UINT32, UINT64


PT2_HINT = "export the generator as .pt2 instead (torch.export.export, then torch.export.save): it takes any architecture"


def _convert(graph: bytes, **check: Any) -> tuple[nn.Module, Any]:
    """The torch module of a checked, normalised graph, and the graph. Float initializers of 2+ dimensions that the
    converter keeps as buffers (weights the graph computes with, e.g. a modulated convolution's kernel) become
    parameters, so finetuning reaches every weight."""
    model = check_onnx(graph, **check)
    try:
        net: nn.Module = _onnx2torch().convert(model)
    except Exception as exc:  # noqa: BLE001 - the converter's own refusals
        node = _failing_node(model)
        where = f" at node {node.name or node.output[0]!r} ({node.op_type})" if node is not None else ""
        raise ModelFormatError(f"the ONNX graph could not be converted{where}: {str(exc)[:300]}; {PT2_HINT}") from exc
    for m in net.modules():
        for name, buf in list(m._buffers.items()):
            if name.startswith("onnx_initializer_") and buf is not None and buf.is_floating_point() and buf.dim() >= 2:
                del m._buffers[name]
                m.register_parameter(name, nn.Parameter(buf))
    return net, model


def _failing_node(model: Any) -> Any:
    """The first node whose converter refuses it (the whole-graph conversion names only tensors, if anything)."""
    from onnx2torch.node_converters.registry import get_converter
    from onnx2torch.onnx_graph import OnnxGraph

    opsets = {o.domain: o.version for o in model.opset_import}
    try:
        graph = OnnxGraph(model.graph)
    except Exception:  # noqa: BLE001 - no graph to look into
        return None
    for node in graph.nodes.values():
        try:
            get_converter(node.operation_type, opsets.get(node.domain, ONNX_OPSET), node.domain)(node, graph)
        except Exception:  # noqa: BLE001 - this is the one
            return node.proto
    return None


def _batch_of(value_info: Any) -> tuple[int, int]:
    """The batch sizes a graph input accepts: a fixed first dimension, or any."""
    dims = _dims(value_info)
    return (dims[0], dims[0]) if dims and isinstance(dims[0], int) and dims[0] > 0 else (1, 2**31)


def run_in_batches(fn: Any, xs: tuple[torch.Tensor, ...], lo: int, hi: int) -> torch.Tensor:
    """fn(*xs) for a network that takes batches of ``lo`` to ``hi`` rows only: in chunks of at most ``hi``, the last
    padded to ``lo`` by repeating its last row (the padding's outputs are dropped)."""
    n = xs[0].shape[0]
    if lo <= n <= hi:
        return fn(*xs)  # type: ignore[no-any-return]
    size, outs = min(max(n, lo), hi), []
    for start in range(0, n, size):
        part = [x[start:start + size] for x in xs]
        k = part[0].shape[0]
        if k < lo:
            part = [torch.cat([p, p[-1:].expand(lo - k, *p.shape[1:])]) for p in part]
        outs.append(fn(*part)[:k])
    return torch.cat(outs)


class Batched(nn.Module):
    """A converted graph that takes batches of ``lo`` to ``hi`` rows only (:func:`run_in_batches`)."""

    def __init__(self, net: nn.Module, lo: int, hi: int) -> None:
        super().__init__()
        self.net, self.lo, self.hi = net, lo, hi

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return run_in_batches(self.net, xs, self.lo, self.hi)


class _GraphModule(nn.Module):
    """What the generators and critics read from a graph file (ONNX, ``.pt2``) share: the file's bytes travel with the
    weights as the uint8 buffer named ``BUFFER``, so a checkpoint rebuilds the module (:meth:`from_state`) with no code;
    batch-norm layers keep their statistics (eval mode even in train mode)."""

    BUFFER = "onnx_graph"

    def _keep_graph(self, graph: bytes) -> None:
        self.register_buffer(self.BUFFER, torch.frombuffer(bytearray(graph), dtype=torch.uint8).clone())
        self.train(False)

    def graph_bytes(self) -> bytes:
        graph: torch.Tensor = self.get_buffer(self.BUFFER)
        return graph.cpu().numpy().tobytes()

    @classmethod
    def from_state(cls, cfg: Any, state: dict[str, torch.Tensor]) -> Any:
        module = cls(cfg, bytes(state[cls.BUFFER].numpy().tobytes()))  # type: ignore[call-arg]
        module.load_state_dict(state)
        return module

    def train(self, mode: bool = True) -> Any:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


class GraphGenerator(_GraphModule):
    """A generator from a graph file: x = out(graph(zmap(u))), u ~ N(0, I) [N, z_dim] -> [N, C, H, W] in [-1, 1].

    ``zmap`` turns the engine's u ~ N(0, I) into the z the graph was trained on (``z_dist``, ``z_scale``: an
    invertible, differentiable map, so mining and sampling keep drawing N(0, I) latents) and ``out`` maps the
    declared output range onto [-1, 1]. Subclasses build ``self.net`` from the file's bytes."""

    cfg: OnnxGeneratorConfig
    net: nn.Module

    def forward(self, u: torch.Tensor, c: torch.Tensor | None = None, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """u [N, z_dim] ~ N(0, I); c [N] class indices (a class-conditional graph only) -> [N, C, H, W] in [-1, 1]."""
        cfg = self.cfg
        if embedding is not None:
            raise ValueError("a generator read from a graph file takes class indices, not an embedding")
        if (c is not None) != bool(cfg.n_classes):
            raise ValueError("this generator is class-conditional: it needs class indices" if cfg.n_classes
                             else "this generator is unconditional")
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


class OnnxGenerator(GraphGenerator):
    """A generator from an ONNX graph (:class:`GraphGenerator`), converted to torch modules by onnx2torch."""

    def __init__(self, cfg: OnnxGeneratorConfig, graph: bytes) -> None:
        super().__init__()
        self.cfg = cfg
        net, model = _convert(graph, z_dim=cfg.z_dim, n_classes=cfg.n_classes, class_input=cfg.class_input)
        inits = {t.name for t in model.graph.initializer}
        lo, hi = _batch_of(next(i for i in model.graph.input if i.name not in inits))
        self.net = Batched(net, lo, hi) if hi < 2**31 else net
        self._keep_graph(graph)


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


class GraphCritic(_GraphModule):
    """A critic from a graph file: D(x), images [N, C, H, W] in [-1, 1] -> scores [N, 1]. The graph's own input
    range is declared (``in_min``, ``in_max``) and the images are mapped to it. Batch-norm layers keep their
    statistics. Subclasses build ``self.net`` from the file's bytes."""

    cfg: OnnxCriticConfig
    net: nn.Module

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if c is not None:
            raise ValueError("an ONNX critic is unconditional")
        cfg = self.cfg
        if (cfg.in_min, cfg.in_max) != (-1.0, 1.0):
            x = (x + 1.0) * ((cfg.in_max - cfg.in_min) / 2.0) + cfg.in_min
        return self.net(x).reshape(x.shape[0], 1)  # type: ignore[no-any-return]  # [N, 1]



class OnnxCritic(GraphCritic):
    """A critic from an ONNX graph (:class:`GraphCritic`), converted to torch modules by onnx2torch."""

    def __init__(self, cfg: OnnxCriticConfig, graph: bytes) -> None:
        super().__init__()
        self.cfg = cfg
        net, model = _convert(graph, role="critic", image_shape=(cfg.channels, cfg.img_size, cfg.img_size))
        inits = {t.name for t in model.graph.initializer}
        lo, hi = _batch_of(next(i for i in model.graph.input if i.name not in inits))
        self.net = Batched(net, lo, hi) if hi < 2**31 else net
        self._keep_graph(graph)


# --- torch.export programs (.pt2) ----------------------------------------------------------------------------


class Pt2Program(nn.Module):
    """An exported program (``core.pt2.load_program``) as a module whose parameters learn. The program accepts the
    batch sizes it was exported for (``min_batch`` to ``max_batch``: one fixed size, or a range with a dynamic batch
    dimension); other batches run in chunks, the last padded by repeating its last row. It always runs as exported:
    ``train()`` changes no layer (torch does not support it for exported programs, and the project keeps a source's
    batch-norm statistics anyway)."""

    def __init__(self, data: bytes, n_inputs: int) -> None:
        super().__init__()
        program = load_program(data)
        names = list(program.graph_signature.user_inputs)
        if len(names) != n_inputs:
            raise Pt2Error(f"the program takes {len(names)} inputs; expected {n_inputs}")
        nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        self.input_shapes = [tuple(nodes[n].meta["val"].shape) if n in nodes and "val" in nodes[n].meta else () for n in names]
        self.min_batch, self.max_batch = _batch_range(program, self.input_shapes[0][0] if self.input_shapes[0] else None)
        self.program = program.module()

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return run_in_batches(self.program, xs, self.min_batch, self.max_batch)

    def train(self, mode: bool = True) -> Any:
        self.training = mode
        return self


def _batch_range(program: Any, dim: Any) -> tuple[int, int]:
    """The batch sizes an exported program accepts: its fixed size, or its dynamic dimension's declared range."""
    if isinstance(dim, int):
        return dim, dim
    try:
        vr = program.range_constraints[dim.node.expr]
        lo = max(1, int(vr.lower))
        hi = int(vr.upper) if vr.upper.is_finite else 2**31
        return lo, hi
    except (AttributeError, KeyError, TypeError, ValueError):
        return 1, 2**31


@dataclass(frozen=True)
class Pt2GeneratorConfig(OnnxGeneratorConfig):
    """The same keys as an ONNX generator's: z_dim, img_size, channels, z_dist, z_scale, output range, class input."""


class Pt2Generator(GraphGenerator):
    """A generator from a ``.pt2`` file (``torch.export.save`` of any architecture): :class:`GraphGenerator` over the
    program, which ``core.pt2`` reads without running anything from the file."""

    BUFFER = "pt2_archive"

    def __init__(self, cfg: Pt2GeneratorConfig, data: bytes) -> None:
        super().__init__()
        self.cfg = cfg
        try:
            self.net = Pt2Program(data, 2 if cfg.n_classes else 1)
        except Pt2Error as exc:
            raise ModelFormatError(str(exc)) from exc
        z_shape = self.net.input_shapes[0]
        if len(z_shape) != 2 or (isinstance(z_shape[1], int) and z_shape[1] != cfg.z_dim):
            raise ModelFormatError(f"the program's input has shape {list(z_shape)}; expected [N, z_dim] with the declared z_dim {cfg.z_dim}")
        self._keep_graph(data)


@dataclass(frozen=True)
class Pt2CriticConfig(OnnxCriticConfig):
    """The same keys as an ONNX critic's: img_size, channels and the input range."""


class Pt2Critic(GraphCritic):
    """A critic from a ``.pt2`` file: :class:`GraphCritic` over the program."""

    BUFFER = "pt2_archive"

    def __init__(self, cfg: Pt2CriticConfig, data: bytes) -> None:
        super().__init__()
        self.cfg = cfg
        try:
            self.net = Pt2Program(data, 1)
        except Pt2Error as exc:
            raise ModelFormatError(f"critic: {exc}") from exc
        self._keep_graph(data)
