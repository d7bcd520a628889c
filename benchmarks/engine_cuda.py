"""The engine on a CUDA GPU beside the same engine on that machine's CPU, in one process -> docs/benchmarks.md.

CI has no GPU, so the CUDA path of ``core`` is checked here, on a machine that has one. For every method (the
seven single-source rows of the MNIST table on ``mnist-no-9``, the selector and fusion on two sources, and
``minegan++`` on an uploaded-style ONNX DCGAN 64x64 generator, converted as ``POST /models`` converts it) it
trains ``--steps`` mining and ``--steps`` finetuning steps on ``cuda`` and on ``cpu``, the two devices taking
turns, and reports:
  * seconds per training step on each device (the whole ``train`` call over the run's steps, warm-up included);
  * that the run finished with finite losses;
  * the trained model's samples on the GPU against the same model moved to the CPU (largest absolute difference:
    the GPU is not bit-identical to the CPU, so one model gives slightly different pixels on each);
and for the serving path (``api/batching.py``), per model on each device: whether rows of ``n=16`` forwarded inside
a batch give the bits they give alone (the batcher's condition for batching at all), and the forward cost per
image by batch size.

Usage: python benchmarks/engine_cuda.py [--steps 20] [--threads 0]
"""

from __future__ import annotations

import argparse
import io
import math
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.batching import SampleBatcher, forward_cost  # noqa: E402
from benchmarks._doc import update_section  # noqa: E402
from core import zoo  # noqa: E402
from core.data import load_target, write_mnist_zip  # noqa: E402
from core.methods import RunConfig, train  # noqa: E402
from core.mining import MinedGenerator  # noqa: E402
from core.model_file import load_model  # noqa: E402
from core.nets.dcgan import DCGANGenerator, DCGANGeneratorConfig  # noqa: E402

FUSION = 20  # fusion steps (training G_F, Eq. 15-16) before mining it; not counted in s/step
SINGLE = ("mine", "minegan", "minegan++", "transfergan", "transfergan++", "freezed", "scratch")


DCGAN_ROW = "minegan++, ONNX DCGAN 64x64, no critic"


def onnx_dcgan_source() -> zoo.SourceModel:
    """A DCGAN 64x64 (z 100, width 64: gan-face-generate's layout, random weights) exported with torch.onnx and
    converted back to torch modules as an upload is, without a critic (the source gets a fresh one)."""
    torch.manual_seed(0)
    G = DCGANGenerator(DCGANGeneratorConfig()).eval()
    buf = io.BytesIO()
    torch.onnx.export(G, (torch.randn(2, 100),), buf, input_names=["z"], output_names=["images"],
                      dynamic_axes={"z": {0: "n"}, "images": {0: "n"}}, opset_version=17, dynamo=False)
    cfg = {"z_dim": 100, "img_size": 64, "channels": 3, "z_dist": "normal", "output_range": [-1, 1]}
    ckpt = zoo.source_from_state_dicts("onnx-dcgan64", "onnx", cfg, buf.getvalue())
    path = Path(tempfile.mkdtemp(prefix="minegan-cuda-")) / "onnx-dcgan64.pt"
    torch.save(ckpt, path)
    return zoo.load_source_file(path, "onnx-dcgan64")


def cases(tmp: Path) -> list[tuple[str, list[str], torch.Tensor, dict[str, Any]]]:
    """(label, sources, target images, run options) for every row."""
    nines = load_target(write_mnist_zip(tmp / "nines.zip", [9], 100, seed=0), 1, 28).images
    mixed = load_target(write_mnist_zip(tmp / "mixed.zip", [3, 8], 100, seed=0), 1, 28).images
    rows: list[tuple[str, list[str], torch.Tensor, dict[str, Any]]] = [(m, ["mnist-no-9"], nines, {"method": m}) for m in SINGLE]
    rows += [("minegan, 2 sources (selector)", ["mnist-0-4", "mnist-5-9"], mixed, {"method": "minegan"}),
             ("fusion", ["mnist-0-4", "mnist-5-9"], mixed, {"method": "fusion", "fusion_steps": FUSION}),
             ("fusion++", ["mnist-0-4", "mnist-5-9"], mixed, {"method": "fusion++", "fusion_steps": FUSION})]
    faces = torch.rand(100, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1  # timing only
    rows.append((DCGAN_ROW, ["onnx-dcgan64"], faces, {"method": "minegan++"}))
    return rows


def run_once(sources: list[zoo.SourceModel], target: torch.Tensor, opts: dict[str, Any], steps: int, device: str,
             out: Path) -> tuple[float, Any, bool]:
    cfg = RunConfig(mining_steps=steps, finetune_steps=steps, seed=0, **opts)
    losses: list[float] = []

    def on_progress(phase: str, step: int, total: int, stats: dict[str, float]) -> None:
        losses.extend(float(v) for v in stats.values() if isinstance(v, (int, float)))

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = train(cfg, sources, target, out, on_progress=on_progress, device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    steps_run = int(result.summary["steps"])
    return wall / max(1, steps_run), result.model, all(math.isfinite(v) for v in losses) and bool(losses)


def serving(model: Any, device: str) -> tuple[str, str]:
    """The batcher's bit check for n=16 and ms per image by batch size, for ``model`` on ``device``."""
    if not isinstance(model, MinedGenerator):
        return "n/a (family)", ""
    model = model.to(device)
    ok = SampleBatcher._check(model, 16, 128)
    cost = forward_cost(model, [16, 32, 64, 128])
    return ("yes" if ok else "no"), ", ".join(f"{s}: {1000 * t:.3f}" for s, t in cost.items())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20, help="mining steps and as many finetuning steps per run")
    ap.add_argument("--dcgan-steps", type=int, default=5, help="steps per stage of the DCGAN 64x64 row (slow on a CPU)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--gpu", default="cuda", help="the device under test (cpu only to try this script without a GPU)")
    ap.add_argument("--only", default="", help="row labels separated by ';' (default: all)")
    a = ap.parse_args()
    if a.gpu == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs one", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    command = "python benchmarks/engine_cuda.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    tmp = Path(tempfile.mkdtemp(prefix="minegan-cuda-"))
    loaded: dict[str, zoo.SourceModel] = {}

    def source(name: str) -> zoo.SourceModel:
        if name not in loaded:
            loaded[name] = onnx_dcgan_source() if name == "onnx-dcgan64" else zoo.load_source(name)
        return loaded[name]

    torch.zeros(1, device=a.gpu)  # CUDA context before the first timed run
    rows_to_run = cases(tmp)
    warm = rows_to_run[0]
    for device in (a.gpu, "cpu"):  # one untimed step on each device first (kernels, allocator, thread pools)
        run_once([source(n) for n in warm[1]], warm[2], warm[3], 1, device, tmp / f"warm-{device}")
    rows = []
    for k, (label, names, target, opts) in enumerate(rows_to_run):
        if a.only and label not in a.only.split(";"):
            continue
        per_step: dict[str, float] = {}
        models: dict[str, Any] = {}
        finite: dict[str, bool] = {}
        for key, device in ((("gpu", a.gpu), ("cpu", "cpu")) if k % 2 == 0 else (("cpu", "cpu"), ("gpu", a.gpu))):  # alternate
            steps = a.dcgan_steps if label == DCGAN_ROW else a.steps
            per_step[key], models[key], finite[key] = run_once([source(n) for n in names], target, opts, steps, device, tmp / f"{k}-{key}")
        gpu = models["gpu"]
        cpu_copy, _ = load_model(tmp / f"{k}-gpu" / "model.pt")  # the same trained weights, on the CPU
        on_gpu = gpu.to(a.gpu).sample(64, seed=1)
        on_cpu = cpu_copy.sample(64, seed=1)
        diff = float((on_gpu - on_cpu).abs().max())
        bits_gpu, cost_gpu = serving(gpu, a.gpu)
        bits_cpu, cost_cpu = serving(cpu_copy, "cpu")
        row = {"label": label, "cpu": per_step["cpu"], "cuda": per_step["gpu"], "finite": finite["cpu"] and finite["gpu"],
               "diff": diff, "bits_gpu": bits_gpu, "bits_cpu": bits_cpu, "cost_gpu": cost_gpu, "cost_cpu": cost_cpu}
        rows.append(row)
        print(row, flush=True)
    if a.gpu == "cpu":
        return 0  # a dry run of the script: nothing to write
    name = torch.cuda.get_device_name(0)
    lines = [
        "## The engine on a CUDA GPU (no GPU in CI)",
        "",
        f"Command: `{command}` on a machine with one {name} and {torch.get_num_threads()} CPU threads "
        f"(torch {torch.__version__}, Python {platform.python_version()}). Each row trains {a.steps} mining and {a.steps} "
        f"finetuning steps ({a.dcgan_steps} and {a.dcgan_steps} for the DCGAN row; the fusion rows first train G_F for {FUSION} "
        "steps, not counted) on the GPU and on the same machine's CPU, the devices taking turns after one untimed step on "
        "each; s/step is the whole `train` call divided by its steps. Samples: 64 images of the GPU-trained model, seed 1, on the GPU "
        "against the same weights on the CPU (images in [-1, 1]). Batch bits: whether 16 rows forwarded inside a batch of up "
        "to 128 give the bits they give alone (`api/batching.py` batches only then).",
        "",
        "| run | CPU s/step | GPU s/step | GPU speed-up | losses finite | largest GPU-CPU pixel difference of a sample | batch bits GPU / CPU |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['cpu']:.4f} | {r['cuda']:.4f} | {r['cpu'] / r['cuda']:.1f}x | {'yes' if r['finite'] else 'NO'} "
                     f"| {r['diff']:.2e} | {r['bits_gpu']} / {r['bits_cpu']} |")
    lines += ["", "Forward pass x = G(M(u)), ms per image by batch size (fastest of 7, interleaved; `api/batching.forward_cost`):", "",
              "| run | GPU | CPU |", "| --- | --- | --- |"]
    for r in rows:
        if r["cost_gpu"]:
            lines.append(f"| {r['label']} | {r['cost_gpu']} | {r['cost_cpu']} |")
    print(f"wrote {update_section('cuda', chr(10).join(lines))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
