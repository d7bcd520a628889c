"""Which generator architectures import in which file format -> docs/architectures.md (issue 33).

The corpus of tests/architectures.py (tiny widths, random weights): a DCGAN, a StyleGAN2-type generator, a ResNet
generator with BatchNorm and spectral norm, a class-conditional one, each written as ``.pt2`` (dynamic batch and a
fixed batch of 1) and ONNX (the legacy exporter, the default exporter with a dynamic batch, a fixed batch of 1) the
way torch 2.13 writes them. Per cell: whether the exporter writes it, whether the upload is accepted, the largest
difference between the upload's images and the module's (5 latents, a batch size no file was exported with), and
whether a 1 + 1 step ``mine`` and ``minegan++`` job succeeds with ``mine`` leaving G as it was and ``minegan++``
changing it. Then each architecture's mined model exported back out (core/export.py) and run with
``torch.export.load`` / onnxruntime: the largest pixel difference to the job's own samples.

Usage:  python benchmarks/architectures.py
"""

from __future__ import annotations

import datetime
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._doc import update_section  # noqa: E402
from core import checkpoints, export, zoo  # noqa: E402
from core.methods import RunConfig, train  # noqa: E402
from core.model_file import load_model  # noqa: E402
from tests.architectures import ARCHS, FORMATS, Arch, write  # noqa: E402

DOC = ROOT / "docs" / "architectures.md"


def _pixels(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().numpy().astype(int)


def _cell(arch: Arch, fmt: str, tmp: Path) -> tuple[str, Path | None]:
    net = arch.make()
    try:
        family, data = write(fmt, arch, net)
    except Exception as exc:  # noqa: BLE001 - the exporter's refusal is the finding
        return f"exporter refuses ({type(exc).__name__})", None
    try:
        checkpoints.save(zoo.source_from_state_dicts("arch", family, arch.config, data), tmp / "src.pt")
    except ValueError as exc:
        return f"refused: {str(exc)[:80]}", None
    source = zoo.load_source_file(tmp / "src.pt")
    torch.manual_seed(1)
    xs = arch.inputs(5)
    with torch.no_grad():
        diff = float((source.G(*xs) - net(*xs)).abs().max())
    before = {k: v.clone() for k, v in source.G.state_dict().items()}
    target = torch.rand(8, arch.config["channels"], 16, 16) * 2 - 1
    ok = []
    for method in ("mine", "minegan++"):
        cfg = RunConfig(method=method, mining_steps=1, finetune_steps=1, batch_size=4, critic_warmup=0, n_critic=1, g_ema=0.0,
                        keep_best="off", colour_match="off", band_match="off", checkpoint_every=10**9)
        G = train(cfg, source, target, tmp / method).model.G
        G = G[0] if isinstance(G, torch.nn.ModuleList) else G
        changed = any(v.is_floating_point() and not torch.equal(v, before[k]) for k, v in G.state_dict().items())
        ok.append(changed == (method == "minegan++"))
    job = "yes" if all(ok) else "no"
    return f"yes | {diff:.1e} | {job}", tmp / "minegan++" / "model.pt"


def main() -> int:
    logging.disable(logging.INFO)
    rows, trips = [], []
    t0 = time.time()
    for arch in ARCHS:
        for fmt in FORMATS:
            with tempfile.TemporaryDirectory() as d:
                result, model_path = _cell(arch, fmt, Path(d))
                cells = result.split(" | ")
                rows.append(f"| {arch.name} | {fmt} | " + " | ".join(cells + ["-"] * (3 - len(cells))) + " |")
                print(rows[-1], flush=True)
                if fmt == "pt2 dynamic" and model_path is not None:
                    model, _ = load_model(model_path)
                    want = _pixels(model.sample(300, seed=7))
                    g = torch.Generator().manual_seed(7)
                    if hasattr(model, "pi"):
                        member = torch.multinomial(torch.tensor(model.pi, dtype=torch.float64), 300, replacement=True, generator=g)
                        ins: tuple[torch.Tensor, ...] = (torch.randn(300, model.z_dim, generator=g), member)
                    else:
                        ins = (torch.cat([torch.randn(min(256, 300 - i), model.z_dim, generator=g) for i in range(0, 300, 256)]),)
                    out = []
                    for kind in export.FORMATS:
                        try:
                            path = export.export(model, kind, Path(d) / f"m.{kind}")
                        except export.ExportError as exc:
                            out.append(f"not written ({str(exc).split(':')[1].strip()[:40]})")
                            continue
                        if kind == "pt2":
                            got = torch.export.load(str(path)).module()(*ins).detach()
                        else:
                            import onnxruntime

                            session = onnxruntime.InferenceSession(str(path))
                            got = torch.from_numpy(session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), ins)})[0])
                        out.append(str(int(np.abs(_pixels(got) - want).max())))
                    trips.append(f"| {arch.name} | " + " | ".join(out) + " |")
    text = "\n".join([
        "## Architectures by format", "",
        f"Command: `python benchmarks/architectures.py` ({datetime.date.today().isoformat()}, torch {torch.__version__}, "
        f"2-core CPU, {time.time() - t0:.0f} s). The corpus is tests/architectures.py (tiny widths, random weights); "
        "`tests/core/test_architectures.py` asserts the same cells in `make test`. Image difference: the largest absolute "
        "difference (images in [-1, 1]) between the upload and the module on 5 latents, a batch size no file was exported "
        "with. Job: a 1 + 1 step `mine` and `minegan++` job succeed, `mine` leaves every generator weight as it was and "
        "`minegan++` changes some.", "",
        "| architecture | format | imports | image difference | job |", "|---|---|---|---|---|", *rows, "",
        "Where the exporter refuses, there is no file to upload: a StyleGAN2-type generator's modulated convolution is a "
        "grouped convolution whose group count is the batch size, which ONNX cannot hold with a dynamic batch (written at a "
        "fixed batch it imports and runs in batches of that size); torch's legacy ONNX exporter has no form of spectral "
        "norm's power iteration. `.pt2` takes every architecture.", "",
        "### A mined model taken out", "",
        "Each architecture's `minegan++` job (from its `.pt2 dynamic` upload) exported with `minegan export` "
        "(core/export.py) and run outside the service: `torch.export.load` for `.pt2`, onnxruntime (CPU) for `.onnx`, on "
        "the latents `sample(300, seed=7)` draws. The largest difference in 8-bit pixel values to the job's own samples:", "",
        "| architecture | .pt2 | .onnx |", "|---|---|---|", *trips, "",
        "A generator with noise inputs (the StyleGAN2-type one) draws its noise from torch's global random generator, in "
        "the service as in the exported file, so two draws of one seed differ by the noise.",
    ])
    DOC.write_text("# Bring your own generator: architectures and formats\n\n" if not DOC.exists() else DOC.read_text())
    update_section("architectures", text, DOC)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
