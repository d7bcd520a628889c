"""What the critic says at the end of a selector run: why pi (the argmax-win frequency, Sec. 3.3) can sit
away from the target's share even after it has settled.

    python benchmarks/selector_critic.py [--digits 2,8] [--ratio 0.3] [--seed 0] [--threads 1]

Trains the main selector setting of ``benchmarks/multi_gan.py`` (sources ``mnist-0-4`` and ``mnist-5-9``,
``mine`` with the permuted rule Eq. 9-10, 1000 steps, the same 100-image target) -- or reuses the run's
final checkpoint under ``benchmarks/out/selector_critic/`` -- then scores with the trained critic D:

* the target's own images of digit A and of digit B, and 500 held-out MNIST test images of each;
* fresh supersamples {G_1(M_1(u)), G_2(M_2(u))}: member 1's samples the classifier calls A, member 2's it
  calls B, and the argmax-win rate of member 1 over them (pi read off the final critic).

Per digit, ``gap`` = mean D(held-out real images of the digit) - mean D(generated images of the digit): how
far below real ones the critic puts that digit's fakes (how fake they look to it). ``offset`` = mean D of
member 1's samples - mean D of member 2's: the part of the argmax that depends on the member rather than on
the sample; beside the spread of D(x1) - D(x2) it says how far from 0.5 a win rate can get. ``pi`` is also
read per 10-step block of the selector's window (60 minibatches: 5 critic + 1 miner per step), and the spread
of the per-minibatch win fraction is set beside the binomial spread of K = batch-size supersamples, to show how
much it swings. Prints markdown tables (the figures behind docs/benchmarks.md, "Several GANs").
"""


from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.multi_gan import _predict as classify  # noqa: E402  (the project's digit classifier, batched)
from core import checkpoints, zoo  # noqa: E402
from core.data import load_mnist, load_target, write_mnist_zip  # noqa: E402
from core.methods import RunConfig, mining_run, train  # noqa: E402
from core.multi import MultiGanModules  # noqa: E402

SOURCES = ("mnist-0-4", "mnist-5-9")


@torch.no_grad()
def scores(D: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([D(x[i : i + 500]).flatten() for i in range(0, len(x), 500)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--digits", default="2,8")
    ap.add_argument("--ratio", type=float, default=0.3, help="share of digit A in the target")
    ap.add_argument("--seed", type=int, default=0, help="training seed (the main table: 0)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--n", type=int, default=2000, help="fresh supersamples scored at the end")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "selector_critic"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    da, db = (int(x) for x in a.digits.split(","))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ratio = (a.ratio, round(1 - a.ratio, 10))
    # the very target of benchmarks/multi_gan.py for this mixture
    zpath = write_mnist_zip(out / f"target-{da}{db}-{ratio[0]}-{ratio[1]}.zip", [da, db], 100, seed=0, weights=list(ratio))
    target = load_target(zpath, 1, 28).images
    sources = [zoo.load_source(s) for s in SOURCES]
    cfg = RunConfig(method="mine", mining_steps=a.steps, finetune_steps=0, seed=a.seed, checkpoint_every=0)
    run_dir = out / "runs" / f"d{da}{db}-{ratio[0]}-seed{a.seed}-s{a.steps}"
    ckpt = checkpoints.newest_in(run_dir)
    if ckpt is None or checkpoints.checkpoint_step(ckpt.name) < cfg.total_steps:  # type: ignore[operator]
        train(cfg, sources, target, run_dir,
              on_progress=lambda ph, s, t, st: print(f"step {s}/{t} pi_a {st.get(f'pi/{SOURCES[0]}', float('nan')):.3f}",
                                                     flush=True) if s % 100 == 0 else None)
        ckpt = checkpoints.newest_in(run_dir)
    assert ckpt is not None
    run = mining_run(cfg, sources, target, run_dir)
    run.restore(ckpt)
    mods = run.mods
    assert isinstance(mods, MultiGanModules)
    D = mods.D.eval()
    pi_train = mods.pi[0]

    gen = torch.Generator().manual_seed(123)
    u = torch.randn(a.n, mods.z_dim, generator=gen)
    with torch.no_grad():
        fake = [torch.cat([mods.member_fake(i, u[k : k + 500]) for k in range(0, a.n, 500)]) for i in range(2)]
    s = [scores(D, f) for f in fake]
    win = (s[0] > s[1]).float().mean().item()
    pred = [classify(f) for f in fake]
    fa, fb = pred[0] == da, pred[1] == db

    st = scores(D, target)
    held, held_y = load_mnist("test", [da, db])
    g2 = torch.Generator().manual_seed(7)
    ha = held[held_y == da][torch.randperm(int((held_y == da).sum()), generator=g2)[:500]]
    hb = held[held_y == db][torch.randperm(int((held_y == db).sum()), generator=g2)[:500]]
    t_cls = classify(target)
    ta, tb = st[t_cls == da], st[t_cls == db]
    sha, shb = scores(D, ha), scores(D, hb)
    gap_a = sha.mean().item() - s[0][fa].mean().item()
    gap_b = shb.mean().item() - s[1][fb].mean().item()
    offset = s[0].mean().item() - s[1].mean().item()
    assert mods.selector is not None
    hist = torch.tensor([h[0] for h in mods.selector.history], dtype=torch.float64)
    blocks = hist[: len(hist) // 60 * 60].view(-1, 60).mean(1)
    binom = (pi_train * (1 - pi_train) / cfg.batch_size) ** 0.5  # the spread if only the K samples were random

    def row(name: str, x: torch.Tensor) -> str:
        return f"| {name} | {len(x)} | {x.mean():.3f} | {x.std():.3f} |"

    print(f"\n`python benchmarks/selector_critic.py --digits {a.digits} --ratio {a.ratio} --seed {a.seed}`"
          f" ({a.steps} mining steps; critic after the last step)\n")
    print("| images scored by D | n | mean D | std D |\n|---|---|---|---|")
    print(row(f"target, called {da}", ta))
    print(row(f"target, called {db}", tb))
    print(row(f"held-out real {da}", sha))
    print(row(f"held-out real {db}", shb))
    print(row(f"member 1 ({SOURCES[0]}) called {da}", s[0][fa]))
    print(row("member 1, other digits", s[0][~fa]))
    print(row(f"member 2 ({SOURCES[1]}) called {db}", s[1][fb]))
    print(row("member 2, other digits", s[1][~fb]))
    print(f"\n| true share of {da} | pi (window) | pi per 10-step block: min-max | per minibatch: std (binomial) "
          f"| win rate of member 1 (final D, {a.n} supersamples) | offset | std of D(x1) - D(x2) "
          f"| gap {da} | gap {db} |\n" + "|---" * 9 + "|")
    print(f"| {ratio[0]} | {pi_train:.3f} | {blocks.min():.2f}-{blocks.max():.2f} | {hist.std():.3f} ({binom:.3f}) | {win:.3f} | {offset:.3f} "
          f"| {(s[0] - s[1]).std():.3f} | {gap_a:.3f} | {gap_b:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
