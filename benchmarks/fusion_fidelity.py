"""Fusion fidelity over training: how fast each prior region of G_F learns its own source (issue 4).

Fuses ``mnist-0-4`` and ``mnist-5-9`` (Eq. 15-16) and, at every checkpoint, samples 1000 images from each
region z ~ N(mu_i, I) and reports the share the classifier puts in the source's digit set and the
classifier-feature FD to the real test digits of that set; the last line is the final ``fused.pt``. Used to choose the fusion critic and |mu_i|
(docs/benchmarks.md, "Several GANs"); prints one JSON line per checkpoint.

Usage: python benchmarks/fusion_fidelity.py --critic projection --mean-scale 10 --steps 600 --every 100 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import checkpoints, zoo  # noqa: E402
from core.data import load_mnist  # noqa: E402
from core.fusion import FUSION_CRITICS, PAPER_RECIPE, fuse, fusion_means  # noqa: E402
from core.metrics import evaluate  # noqa: E402
from core.metrics.classifier import load_classifier  # noqa: E402

DIGITS = (list(range(5)), list(range(5, 10)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--critic", choices=FUSION_CRITICS, default="projection")
    ap.add_argument("--mean-scale", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0)
    # defaults: the paper's recipe (core.fusion.PAPER_RECIPE); the service's own adds --distill 30 --lr-decay --lr-generator 5e-4
    ap.add_argument("--lr-generator", type=float, default=PAPER_RECIPE.lr_generator)
    ap.add_argument("--lr-critic", type=float, default=PAPER_RECIPE.lr_critic)
    ap.add_argument("--ema", type=float, default=PAPER_RECIPE.ema, help="FusionConfig.ema: weight averaging of G_F "
                    "(0: off); with it every checkpoint is scored for the trained G_F and for its average")
    ap.add_argument("--distill", type=float, default=PAPER_RECIPE.distill, help="FusionConfig.distill: weight of "
                    "the paired term mean|G_F(mu_i + z) - G_i(z)| added to Eq. 16 (0: off)")
    ap.add_argument("--lr-decay", action=argparse.BooleanOptionalAction, default=PAPER_RECIPE.lr_decay,
                    help="FusionConfig.lr_decay: learning rates fall linearly to 0")
    ap.add_argument("--seed", type=int, default=PAPER_RECIPE.seed, help="FusionConfig.seed (prior means, batches)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    sources = [zoo.load_source("mnist-0-4"), zoo.load_source("mnist-5-9")]
    net, _ = load_classifier()
    reals = [load_mnist("test", d)[0] for d in DIGITS]
    means = fusion_means(2, sources[0].G.cfg.z_dim, a.mean_scale, a.seed)
    G = type(sources[0].G)(sources[0].G.cfg)  # type: ignore[arg-type]
    t0 = time.time()

    def report(path: Path) -> None:
        step = checkpoints.checkpoint_step(path.name)
        if step is None:  # fused.pt at the end: the G_F the job mines (the averaged weights with --ema)
            nets = {"G" if not a.ema else "G_ema": zoo.load_source_file(path).G.state_dict()}
        else:  # a run checkpoint: the trained G_F, and its average under "extra"
            obj = checkpoints.load(path)
            nets = {"G": obj["G"], **obj["extra"]}
        row: dict[str, float] = {"step": step or a.steps, "seconds": round(time.time() - t0)}
        for tag, key in (("", "G"), ("ema_", "G_ema")):
            if key not in nets:
                continue
            G.load_state_dict(nets[key])
            G.eval()
            with torch.no_grad():
                for i, digits in enumerate(DIGITS):
                    x = G(means[i] + torch.randn(a.samples, means.shape[1], generator=torch.Generator().manual_seed(1)))
                    row[f"{tag}in_set_{i}"] = round(float(torch.isin(net(x).argmax(1), torch.tensor(digits)).float().mean()), 3)
                    row[f"{tag}fd_{i}"] = round(evaluate(x, reals[i], ["fd_classifier"])["fd_classifier"], 1)
        print(json.dumps(row), flush=True)

    cfg = replace(PAPER_RECIPE, steps=a.steps, mean_scale=a.mean_scale, critic=a.critic, checkpoint_every=a.every, ema=a.ema,
                  distill=a.distill, lr_decay=a.lr_decay, seed=a.seed, lr_generator=a.lr_generator, lr_critic=a.lr_critic)
    with tempfile.TemporaryDirectory() as tmp:
        fuse(sources, cfg, tmp, after_checkpoint=report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
