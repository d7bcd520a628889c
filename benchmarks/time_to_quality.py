"""Time to quality, the paper's efficiency claim (issue 18) -> docs/benchmarks.md section "time_to_quality" and
docs/img/time-to-quality.png.

The main MNIST setting (``mnist-no-9`` -> 100 real test-split 9s, seed 0; benchmarks/mnist_transfer.py), with the
source's critic. Each curve is one run of ``--scale`` times today's budget (the default 200 mining + 100 finetuning
steps; TransferGAN gets the same total), evaluated every ``--every`` steps on ``--samples`` samples drawn without
touching the training RNG (``train``'s preview hook), so the curve is the run it would be without evaluation.
x: training wall-clock, evaluation time excluded. y: classifier error on 9s and FD on the classifier's features.
Reported: the wall-clock at which each curve first reaches the error that ``minegan++`` (no augmentation) has after
today's 300 steps, or that it never does within the run.

Usage:  python benchmarks/time_to_quality.py [--scale 10 --every 100 --curves minegan++,transfergan,minegan++:aug,transfergan:aug]
Per-curve results are kept in benchmarks/out/time_to_quality/ so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._doc import update_section  # noqa: E402
from core import zoo  # noqa: E402
from core.data import load_mnist, load_target, write_mnist_zip  # noqa: E402
from core.methods import RunConfig, train  # noqa: E402
from core.metrics import evaluate  # noqa: E402

AUG = "color,translation,cutout"


def _curve(name: str, scale: int, a: argparse.Namespace, source: zoo.SourceModel, target: torch.Tensor, real: torch.Tensor,
           out: Path) -> list[dict[str, float]]:
    method, _, variant = name.partition(":")
    base = RunConfig()
    m, f = base.mining_steps * scale, base.finetune_steps * scale
    cfg = RunConfig(method=method, mining_steps=m, finetune_steps=f, seed=0, checkpoint_every=10**9,
                    augment=AUG if variant == "aug" else "")
    points: list[dict[str, float]] = []
    eval_s = 0.0
    t0 = time.perf_counter()

    def on_preview(step: int, sample: Callable[[int, int], torch.Tensor]) -> None:
        nonlocal eval_s
        e0 = time.perf_counter()
        x = sample(a.samples, 123)
        res = evaluate(x, real, ["fd_classifier", "classifier_error"], [9])
        points.append({"step": step, "train_s": e0 - t0 - eval_s, **res})
        eval_s += time.perf_counter() - e0
        print(f"{name} step {step}: {points[-1]}", flush=True)
        (out / f"{name.replace(':', '-')}-x{scale}-e{a.every}.partial.json").write_text(json.dumps(points))  # kept if cut short

    train(cfg, source, target, out / "runs" / f"{name.replace(':', '-')}-x{scale}", on_preview=on_preview, preview_every=a.every,
          device=a.device)
    return points


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=10, help="times today's budget (200 + 100 steps)")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--curves", default="minegan++,transfergan,minegan++:aug,transfergan:aug")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="where the runs train: cpu or cuda")
    ap.add_argument("--machine", default="2-core CPU; each run on one thread, two runs at a time",
                    help="how the runs were placed, for the doc's text")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "time_to_quality"))
    ap.add_argument("--section", default="time_to_quality", help="docs/benchmarks.md section (and docs/img/<section>.png, "
                    "underscores as dashes) to write")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_target(write_mnist_zip(out / "nines.zip", [9], 100, seed=0), 1, 28).images
    real, _ = load_mnist("test", [9])
    source = zoo.load_source("mnist-no-9")
    for name, scale in [("minegan++", 1)] + [(c, a.scale) for c in a.curves.split(",") if c]:  # the reference first
        path = out / f"{name.replace(':', '-')}-x{scale}-e{a.every}.json"
        if not path.exists():
            path.write_text(json.dumps(_curve(name, scale, a, source, target, real, out)))
    write_doc(a, out)
    return 0


def write_doc(a: argparse.Namespace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {}
    for name in ["minegan++", "transfergan", "minegan++:aug", "transfergan:aug"]:
        path = out / f"{name.replace(':', '-')}-x{a.scale}-e{a.every}.json"
        if path.exists():
            curves[name] = json.loads(path.read_text())
    ref_path = out / f"minegan++-x1-e{a.every}.json"
    if not curves or not ref_path.exists():
        return
    base = RunConfig().mining_steps + RunConfig().finetune_steps
    ref = json.loads(ref_path.read_text())[-1]  # minegan++ after today's budget
    last = curves[next(iter(curves))][-1]
    rate = last["train_s"] / last["step"]  # seconds a step of the curves
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, pts in curves.items():
        xs = [p["train_s"] / 60 for p in pts]
        axes[0].plot(xs, [100 * p["classifier_error"] for p in pts], label=name.replace(":aug", " + DiffAugment"))
        axes[1].plot(xs, [p["fd_classifier"] for p in pts], label=name.replace(":aug", " + DiffAugment"))
    axes[0].axhline(100 * ref["classifier_error"], color="gray", ls=":", lw=1)
    where = "GPU" if a.device.startswith("cuda") else "1 CPU thread"
    axes[0].set(xlabel=f"training wall-clock (min, {where})", ylabel="classifier error on 9s (%)", ylim=(0, 100))
    axes[1].set(xlabel=f"training wall-clock (min, {where})", ylabel="FD (classifier features)", yscale="log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    img = ROOT / "docs" / "img" / f"{a.section.replace('_', '-')}.png"
    fig.savefig(img, dpi=110)
    rows = []
    for name, pts in curves.items():
        hit = next((p for p in pts if p["classifier_error"] <= ref["classifier_error"]), None)
        both = next((p for p in pts if p["classifier_error"] <= ref["classifier_error"] and p["fd_classifier"] <= ref["fd_classifier"]),
                    None)  # error alone rewards a collapse onto a few clean 9s; FD does not
        best = min(pts, key=lambda p: p["classifier_error"])
        last = pts[-1]
        rows.append(f"| {name.replace(':aug', ' + DiffAugment')} | {last['step']} | {last['train_s'] / 60:.1f} min | "
                    + (f"{hit['train_s']:.0f} s (step {hit['step']})" if hit else "never") + " | "
                    + (f"{both['train_s']:.0f} s (step {both['step']})" if both else "never")
                    + f" | {100 * best['classifier_error']:.1f} % (step {best['step']}) | {100 * last['classifier_error']:.1f} % | "
                    f"{last['fd_classifier']:.2f} |")
    cmd = "python benchmarks/time_to_quality.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    text = "\n".join([
        f"## Time to quality at {a.scale}x: `mnist-no-9` -> 9, error and FD against wall-clock (issue 18)",
        "",
        f"Command: `{cmd}` ({a.machine}). Each curve is one run of {a.scale}x "
        f"today's budget ({RunConfig().mining_steps * a.scale} mining + {RunConfig().finetune_steps * a.scale} finetuning steps "
        f"for minegan++, the same total for transfergan), evaluated every {a.every} steps on {a.samples} samples "
        "(classifier error on 9s, FD on the classifier's features) without touching the training RNG; wall-clock "
        "excludes evaluation. The source's critic; `+ DiffAugment` adds `augment=color,translation,cutout`. The "
        f"reference: minegan++ without augmentation at today's budget ({base} steps, its own run), "
        f"{100 * ref['classifier_error']:.1f} % and FD {ref['fd_classifier']:.1f} (dotted line). That run shared the machine with other work "
        f"({ref['train_s']:.0f} s); at the curves' own rate ({rate:.3f} s a step, two runs at a time) its "
        f"{base} steps take about **{base * rate:.0f} s**, the time to compare with the column below. "
        f"A curve's run has its own schedule ({a.scale}x the mining steps before any finetuning), so its first {base} steps "
        "are not the reference run.",
        "",
        f"![time to quality](img/{img.name})",
        "",
        "| curve | steps run | training time | reaches the reference error after | reaches its error and FD after | best error "
        "| final error | final FD |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    update_section(a.section, text)


if __name__ == "__main__":
    raise SystemExit(main())
