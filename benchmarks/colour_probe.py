"""Probe (issue 18): an output colour map learned beside the miner, for the faces transfer, outside the service.

docs/faces.md found that the source's samples made gray would be 67 % / 48 % closer (KID / FID) to the LFW
targets, and that no method reaches that: mining cannot change colour, and finetuning all of G against a fresh critic
on 100 images damages the faces first. This probe tests the smallest generator change that can: a per-pixel affine
map of the colour channels after G, x' = W G(M(u)) + b (W [C, C] starting at I, b [C] at 0; C*C + C parameters),
trained with the miner on the WGAN-GP losses (Eq. 3-4) against a fresh critic, G itself fixed. Same budget, critic,
warm-up, DiffAugment and evaluation as benchmarks/faces.py rows. Prints RESULT {...}.

Setup:  .venv/bin/pip install --no-deps gan-face-generate && .venv/bin/pip install scikit-image
Usage:  python benchmarks/colour_probe.py [--lra 1e-2 --augment color,translation,cutout --miner identity --tag x]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import faces as fb  # noqa: E402

from core import zoo  # noqa: E402
from core.augment import diff_augment  # noqa: E402
from core.data import load_target_bytes  # noqa: E402
from core.images import grid_png  # noqa: E402
from core.methods import RunConfig, build_modules, resolve  # noqa: E402
from core.metrics import evaluate  # noqa: E402
from core.trainer import StageConfig, StageState, critic_step, generator_step  # noqa: E402


class ColourMap(nn.Module):
    """x' = W x + b over the channel axis (W starts at I, b at 0)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.eye(channels))
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("dc,nchw->ndhw", self.W, x) + self.b[None, :, None, None]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mine", type=int, default=120, help="steps of miner + colour map (80 + 40 in the faces rows)")
    ap.add_argument("--warm", type=int, default=50)
    ap.add_argument("--lra", type=float, default=1e-2, help="Adam learning rate of the colour map")
    ap.add_argument("--miner", default="identity", choices=["identity", "paper"])
    ap.add_argument("--augment", default="color,translation,cutout")
    ap.add_argument("--tag", default="x")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--out", default="/tmp/colour_probe")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_target_bytes(fb._faces_zip(), 3, 64).images  # [100, 3, 64, 64]
    src = zoo.source_from_state_dicts("faces", "dcgan64", {"z_dim": 100, "width": 64, "channels": 3}, fb._weights())
    source = zoo.load_source_file(fb._save(src))
    cfg = resolve(RunConfig(method="mine", batch_size=16, critic_init="fresh", miner_init=a.miner, augment=a.augment),
                  [source.info])
    torch.manual_seed(0)
    mods = build_modules(cfg, source)
    colour = ColourMap(3)
    fake = mods.fake
    mods.fake = lambda u, c=None: colour(fake(u, c))  # type: ignore[method-assign]
    mods.G.requires_grad_(False)
    stage = StageConfig("mine", a.mine, train_miner=True, train_generator=False, batch_size=16)
    assert mods.M is not None
    st = StageState(opt_d=torch.optim.Adam(mods.D.parameters(), lr=1e-4, betas=(0.5, 0.999)),
                    opt_g=torch.optim.Adam([{"params": list(mods.M.parameters()), "lr": 4e-4},
                                            {"params": list(colour.parameters()), "lr": a.lra}], betas=(0.5, 0.999)))
    aug = diff_augment(a.augment)
    rng = torch.Generator().manual_seed(1)
    t0 = time.time()
    for step in range(a.warm + a.mine):
        for _ in range(stage.n_critic):
            real = target[torch.randint(len(target), (16,), generator=rng)]
            critic_step(mods, st, stage, real, None, aug)
        if step >= a.warm:
            generator_step(mods, st, 16, None, torch.device("cpu"), None, aug)
        if step % 20 == 0:
            print(step, "W", [round(v, 3) for v in colour.W.detach().flatten().tolist()], flush=True)
    wall = time.time() - t0
    mods.G.eval()
    mods.M.eval()
    with torch.no_grad():
        after = torch.cat([mods.fake(torch.randn(100, 100, generator=torch.Generator().manual_seed(123 + i)))
                           for i in range(-(-a.samples // 100))])[: a.samples].clamp(-1, 1)
    (out / f"{a.tag}.png").write_bytes(grid_png(after[:64], nrow=8))
    res = {**evaluate(after, target, ["kid", "fid", "kmmd"]), "wall_s": round(wall), "W": colour.W.tolist(), "b": colour.b.tolist()}
    (out / f"{a.tag}.json").write_text(json.dumps(res))
    print("RESULT", a.tag, json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
