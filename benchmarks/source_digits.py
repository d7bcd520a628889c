"""Which digits a source model draws, and how convincingly: per digit, the share of its samples the project's
classifier assigns to it, their mean classifier confidence and the fraction above 0.9.

    python benchmarks/source_digits.py mnist-0-4 mnist-5-9 [--n 4000] [--seed 0]

Sources are zoo ids (shipped or registered with ``minegan zoo register``) or source-model files (``*.pt``).
Prints a markdown table per source (digits with at least 1 % of the samples); the figures behind docs/benchmarks.md, "Several GANs".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import zoo  # noqa: E402
from core.metrics.classifier import load_classifier  # noqa: E402


def digit_table(source: zoo.SourceModel, n: int, seed: int) -> list[str]:
    net, _ = load_classifier()
    with torch.no_grad():
        x = source.G(torch.randn(n, source.G.cfg.z_dim, generator=torch.Generator().manual_seed(seed)))
        conf, pred = torch.cat([torch.softmax(net(x[i: i + 512]), 1) for i in range(0, n, 512)]).max(1)
    lines = [f"`{source.name}` ({source.meta.get('steps', '?')} training steps), {n} samples, seed {seed}:", "",
             "| digit | share | mean confidence | confidence > 0.9 |", "|---|---|---|---|"]
    for d in range(10):
        m = pred == d
        if m.float().mean() >= 0.01:
            lines.append(f"| {d} | {m.float().mean():.3f} | {conf[m].mean():.3f} | {(conf[m] > 0.9).float().mean():.2f} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    for s in a.sources:
        src = zoo.load_source_file(Path(s)) if s.endswith(".pt") else zoo.load_source(s)
        print("\n".join(digit_table(src, a.n, a.seed)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
