"""The generators people have, in the files PyTorch writes today (tests/architectures.py): each one imports, draws
the module's own images, and a short ``mine`` and ``minegan++`` job on it succeeds and changes what it should."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from core import checkpoints, zoo
from core.formats import ModelFormatError
from core.methods import RunConfig, train
from tests.architectures import ARCHS, FORMATS, Arch, write

# What the exporters themselves refuse (torch 2.13), so there is no file to upload: a StyleGAN2-type network's
# per-sample weights make a grouped convolution whose group count is the batch size, which ONNX cannot hold with a
# dynamic batch; the legacy exporter has no ONNX form of spectral norm's power iteration (aten::vdot).
NOT_EXPORTABLE = {("StyleGAN2-type", "ONNX legacy"), ("StyleGAN2-type", "ONNX default exporter"),
                  ("ResNet, BatchNorm + spectral norm", "ONNX legacy")}
CASES = [(a, f) for a in ARCHS for f in FORMATS]


def _ids(case: tuple[Arch, str]) -> str:
    return f"{case[0].name.split(',')[0]}|{case[1]}"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_architecture_imports_draws_its_images_and_is_mined(case: tuple[Arch, str], tmp_path: Path) -> None:
    arch, fmt = case
    net = arch.make()
    try:
        family, data = write(fmt, arch, net)
    except Exception:  # noqa: BLE001 - the exporter's refusal
        assert (arch.name, fmt) in NOT_EXPORTABLE, f"{arch.name} no longer exports as {fmt}? update NOT_EXPORTABLE"
        pytest.skip("the exporter cannot write this architecture in this format")
    assert (arch.name, fmt) not in NOT_EXPORTABLE, f"{arch.name} now exports as {fmt}: drop it from NOT_EXPORTABLE"
    src_ckpt = zoo.source_from_state_dicts("arch", family, arch.config, data)
    path = tmp_path / "arch.pt"
    checkpoints.save(src_ckpt, path)
    source = zoo.load_source_file(path)
    torch.manual_seed(1)
    xs = arch.inputs(5)  # 5: not the batch any file was exported with
    with torch.no_grad():
        assert torch.allclose(source.G(*xs), net(*xs), atol=1e-5), "the upload draws other images than the module"
    before = {k: v.clone() for k, v in source.G.state_dict().items()}
    target = torch.rand(8, arch.config["channels"], 16, 16) * 2 - 1
    logging.disable(logging.INFO)
    try:
        for method in ("mine", "minegan++"):
            cfg = RunConfig(method=method, mining_steps=1, finetune_steps=1, batch_size=4, critic_warmup=0, n_critic=1, g_ema=0.0,
                            keep_best="off", colour_match="off", band_match="off", checkpoint_every=10**9)
            G = train(cfg, source, target, tmp_path / method).model.G
            G = G[0] if isinstance(G, torch.nn.ModuleList) else G  # a class-conditional source is mined as its family
            changed = [k for k, v in G.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
            if method == "mine":
                assert not changed, f"mining changed the generator: {changed[:3]}"
            else:
                assert changed, "minegan++ left every generator weight as it was"
    finally:
        logging.disable(logging.NOTSET)


def test_pytorch_default_onnx_export_with_its_weights_apart_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """torch.onnx.export's default writes the weights to a separate .onnx.data file: the message says to pass
    external_data=False (or to send a .pt2)."""
    arch = ARCHS[0]
    torch.onnx.export(arch.make(), arch.inputs(2), tmp_path / "g.onnx")  # the default: external data
    with pytest.raises(ModelFormatError, match="external_data=False"):
        zoo.source_from_state_dicts("x", "onnx", arch.config, (tmp_path / "g.onnx").read_bytes())


def test_what_cannot_be_converted_names_the_node_its_operator_and_what_to_do() -> None:
    """A convolution padded with auto_pad SAME_UPPER, which the converter does not implement: the upload is refused
    with the node, its operator, the reason and the way out (.pt2)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Gemm", ["z", "fc"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["x"]),
             helper.make_node("Mul", ["w", "two"], ["w2"]),  # a weight computed in the graph
             helper.make_node("Conv", ["x", "w2"], ["images"], name="modulated", auto_pad="SAME_UPPER")]
    inits = [w, numpy_helper.from_array(np.ones((8, 2 * 16 * 16), np.float32), "fc"),
             numpy_helper.from_array(np.array([-1, 2, 16, 16], np.int64), "shape"), numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 8])],
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 2, 16, 16])], inits)
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    with pytest.raises(ModelFormatError, match=r"node 'modulated' \(Conv\).*auto_pad.*\.pt2"):
        zoo.source_from_state_dicts("x", "onnx", {"z_dim": 8, "img_size": 16, "channels": 2}, data)
