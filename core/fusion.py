"""Fusing several pretrained GANs into one conditional generator G_F (MineGAN++ Sec. 4.2).

The sources' own samples are the *pseudo real* data; G_F is trained adversarially against a critic D
that tells G_F's samples from the sources' samples (WGAN-GP, as everywhere in this project):

    L_D^F = E_{z ~ p_z^F}[D(G_F(z))] - sum_i E_{z ~ p_z^i}[D(G_i(z))]      (Eq. 15)
    L_G^F = -E_{z ~ p_z^F}[D(G_F(z))]                                      (Eq. 16)

Conditioning is implicit in the prior (Sec. 4.2): source i owns the Gaussian N(mu_i, I) with its own mean,
so G_F(mu_i + e), e ~ N(0, I), should look like G_i's samples. The means are ``mean_scale`` times
orthonormal random directions. Every minibatch is *balanced*: the same number of slots per source for the
pseudo-real images and for G_F's samples (the slot's source picks both the pseudo-real generator and the
fake's prior mean), so each source weighs equally in the sum of Eq. 15; the gradient penalty interpolates
between a pseudo-real and a fake image of the same source.

The critic is told the source of each image: "a single conditional GAN" (Fig. 4) needs a critic that can
say "this came from region i but looks like source j", otherwise only the *mixture* of G_F's regions is
matched and nothing ties region i to G_i. We condition it by projection (Miyato & Koyama, the paper's
[57], the conditioning its Sec. 4.1 uses for the critic): D_F(x, i) = D(x) + e_i^T phi(x), where D is the
unconditional critic (initialised from a source's critic), phi its last features and e_i a learned
per-source vector starting at zero, so training starts from the source critic exactly
(``FusionConfig.critic="projection"``; ``"plain"`` keeps the unconditional D of a literal Eq. 15).

Beyond Eq. 15-16 (this project's additions, on by default through ``RunConfig``; docs/multi_gan_notes.md):
``FusionConfig.distill`` adds a paired term to Eq. 16, distill * mean|G_F(mu_i + z) - G_i(z)| on the same
noise z (:func:`distill_generator_step`), and ``lr_decay`` lets both learning rates fall linearly to zero.
With them each region's FD came within 1.06x of its source's own, against 1.3x and more without.

The result is an ordinary unconditional ``Generator`` + ``Critic`` pair (a :class:`SourceModel`) that
mining then treats like any other source; its file can be registered as a new zoo source.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import checkpoints
from core.losses import generator_loss
from core.nets import Critic
from core.trainer import GanModules, ProgressFn, StageConfig, StageState, StopFn, critic_step, generator_step, make_stage_state, set_trainable
from core.zoo import SourceModel, source_checkpoint

log = logging.getLogger(__name__)

FUSION_FORMAT = "minegan-fusion-run/2"
FUSION_CRITICS = ("projection", "plain")


@dataclass(frozen=True)
class FusionConfig:
    steps: int = 500
    batch_size: int = 64
    n_critic: int = 5
    lr_generator: float = 1e-4
    lr_critic: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    gp_weight: float = 10.0
    mean_scale: float = 10.0  # |mu_i|: how far apart the sources' prior regions lie (about |z| ~ sqrt(z_dim))
    init: str = "source"  # "source": G_F, D start from the first source's weights; "random"
    critic: str = "projection"  # "projection": D_F(x, i) = D(x) + e_i^T phi(x); "plain": D(x) (unconditional)
    ema: float = 0.0  # >0: G_F is the exponential moving average of the trained weights with this decay (0: off)
    distill: float = 0.0  # >0: add distill * E|G_F(mu_i + z) - G_i(z)| (paired, per pixel) to Eq. 16 (0: off)
    lr_decay: bool = False  # True: both learning rates fall linearly to 0 over the run (off: constant, as in the paper)
    seed: int = 0
    checkpoint_every: int = 50


def fusion_means(n_sources: int, z_dim: int, scale: float, seed: int = 0) -> torch.Tensor:
    """mu_i: ``scale`` times orthonormal random directions, one per source. [n_sources, z_dim]"""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(z_dim, n_sources, generator=gen))  # [z_dim, n] orthonormal columns
    return scale * q.T.contiguous()


def balanced_labels(n: int, n_sources: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Source index per slot: each source gets n // N slots (the remainder spread at random). [n]"""
    labels = torch.arange(n) % n_sources
    return labels[torch.randperm(n, generator=gen)]


class ProjectionCritic(nn.Module):
    """D_F(x, i) = D(x) + e_i^T phi(x): the unconditional critic D plus a projection on the source index i
    (projection discriminator, [57]). e_i starts at zero, so D_F(x, i) = D(x) before training. [N] scores."""

    def __init__(self, D: Critic, n_sources: int) -> None:
        super().__init__()
        self.D = D
        self.embed = nn.Embedding(n_sources, D.fc.in_features)
        nn.init.zeros_(self.embed.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.D.features(x)  # phi(x): [N, F]
        return self.D.fc(h).squeeze(1) + (self.embed(c) * h).sum(1)  # [N]


@dataclass
class FusionModules(GanModules):
    """G_F with the source-indexed prior: ``labels`` (source indices) select the prior mean of each fake."""

    means: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def prior(self, labels: torch.Tensor) -> torch.Tensor:
        return self.means.to(labels.device)[labels] + torch.randn(len(labels), self.z_dim, device=labels.device)  # z ~ N(mu_i, I)

    def critic_fakes(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        assert labels is not None
        return self.G(self.prior(labels))  # type: ignore[no-any-return]  # G_F(z), Eq. 15

    def generator_fakes(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        assert labels is not None
        return self.G(self.prior(labels))  # type: ignore[no-any-return]  # G_F(z), Eq. 16


@torch.no_grad()
def pseudo_real(sources: list[SourceModel], labels: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """One sample G_i(z), z ~ N(0, I), per slot from the slot's source i: the pseudo-real batch of Eq. 15.
    With ``z`` [N, z_dim] given, slot k uses z[k] (the paired targets of :func:`distill_generator_step`)."""
    g0 = sources[0].G
    out = torch.empty(len(labels), g0.cfg.channels, g0.cfg.img_size, g0.cfg.img_size, device=labels.device)
    for i, s in enumerate(sources):
        idx = (labels == i).nonzero().flatten()
        if len(idx):
            out[idx] = s.G(z[idx] if z is not None else torch.randn(len(idx), s.G.cfg.z_dim, device=labels.device))
    return out


def fuse(
    sources: list[SourceModel],
    cfg: FusionConfig,
    run_dir: str | Path,
    name: str = "fused",
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    after_checkpoint: Callable[[Path], None] | None = None,
    step_offset: int = 0,
    total_steps: int | None = None,
    device: str = "cpu",
) -> SourceModel:
    """Train G_F (Eq. 15-16), checkpointing as ``ckpt-{step}.pt`` in ``run_dir`` and resuming from the
    latest; writes ``fused.pt`` (a source-model file) and returns the fused source."""
    from core.trainer import Stopped

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if len(sources) < 2:
        raise ValueError("fusion needs at least two sources")
    g0, d0 = sources[0].G, sources[0].D
    for s in sources:
        if s.conditional or (s.G.cfg.z_dim, s.G.cfg.img_size, s.G.cfg.channels) != (g0.cfg.z_dim, g0.cfg.img_size, g0.cfg.channels):
            raise ValueError("fusion needs unconditional sources with the same |z|, resolution and channels")
    if cfg.critic not in FUSION_CRITICS:
        raise ValueError(f"fusion critic must be one of {FUSION_CRITICS}, not {cfg.critic!r}")
    torch.manual_seed(cfg.seed)
    G, D = type(g0)(g0.cfg), Critic(d0.cfg)  # type: ignore[arg-type]
    if cfg.init == "source":
        G.load_state_dict(g0.state_dict())
        D.load_state_dict(d0.state_dict())
    means = fusion_means(len(sources), g0.cfg.z_dim, cfg.mean_scale, cfg.seed)
    if cfg.critic == "projection":  # D_F(x, i): the critic sees which source (prior region) an image belongs to
        mods = FusionModules(G=G, D=ProjectionCritic(D, len(sources)), z_dim=g0.cfg.z_dim, n_classes=len(sources), means=means)
    else:
        mods = FusionModules(G=G, D=D, z_dim=g0.cfg.z_dim, means=means)
    stage = StageConfig("fuse", steps=cfg.steps, train_miner=False, train_generator=True, n_critic=cfg.n_critic,
                        batch_size=cfg.batch_size, lr_generator=cfg.lr_generator, lr_critic=cfg.lr_critic,
                        betas=tuple(cfg.betas), gp_weight=cfg.gp_weight)  # type: ignore[arg-type]
    st = make_stage_state(mods, stage)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    cfg_json = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    for opt in ("ema", "distill", "lr_decay"):
        if not cfg_json[opt]:
            del cfg_json[opt]  # runs from before the option resume unchanged
    # Weight averaging (not in the paper, whose fusion recipe stops at Eq. 15-16): G_ema follows G_F's weights
    # with decay ``ema`` after every generator step and is what fused.pt holds; BatchNorm statistics are copied.
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema else None
    names = [s.name for s in sources]
    found = [p for p in run_dir.glob("ckpt-*.pt")]
    latest = max(found, key=lambda p: int(p.stem.split("-")[1])) if found else None
    if latest is not None:
        obj = checkpoints.load(latest)
        if obj.get("format") == FUSION_FORMAT:
            if obj["config"] != cfg_json or obj["sources"] != names:
                raise ValueError(f"{latest} belongs to a different fusion; use a fresh run directory")
            G.load_state_dict(obj["G"])
            if G_ema is not None:
                G_ema.load_state_dict(obj["G_ema"])
            mods.D.load_state_dict(obj["D"])
            st.opt_d.load_state_dict(obj["opt_d"])
            assert st.opt_g is not None
            st.opt_g.load_state_dict(obj["opt_g"])
            st.step = int(obj["step"])
            torch.set_rng_state(obj["rng"])
            gen.set_state(obj["gen"])
            log.info("fusion resumes at step %d", st.step)

    def save() -> None:
        assert st.opt_g is not None
        obj = {"format": FUSION_FORMAT, "config": cfg_json, "sources": names, "step": st.step, "G": G.state_dict(),
               "D": mods.D.state_dict(), "opt_d": st.opt_d.state_dict(), "opt_g": st.opt_g.state_dict(),
               "rng": torch.get_rng_state(), "gen": gen.get_state()}
        if G_ema is not None:
            obj["G_ema"] = G_ema.state_dict()
        path = checkpoints.save(obj, run_dir / f"ckpt-{step_offset + st.step}.pt")
        for old in run_dir.glob("ckpt-*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
        if after_checkpoint is not None:
            after_checkpoint(path)

    dev = torch.device(device)
    G.to(dev)
    if G_ema is not None:
        G_ema.to(dev)
    mods.D.to(dev)
    set_trainable(mods, stage)
    for s in sources:
        s.G.eval().requires_grad_(False).to(dev)
    total = total_steps or cfg.steps
    while st.step < cfg.steps:
        if should_stop is not None and should_stop():
            raise Stopped(f"stopped in fuse at step {st.step}")
        stats: dict[str, float] = {}
        if cfg.lr_decay:  # a function of the step alone, so a resumed run continues the same schedule
            _set_lr(st, 1.0 - st.step / cfg.steps, cfg)
        for _ in range(cfg.n_critic):
            labels = balanced_labels(cfg.batch_size, len(sources), gen).to(dev)
            stats = critic_step(mods, st, stage, pseudo_real(sources, labels), labels)  # Eq. 15 + GP
        g_labels = balanced_labels(cfg.batch_size, len(sources), gen).to(dev)
        if cfg.distill:
            stats |= distill_generator_step(mods, st, sources, g_labels, cfg.distill)  # Eq. 16 + paired term
        else:
            stats |= generator_step(mods, st, cfg.batch_size, g_labels, dev)  # Eq. 16
        if G_ema is not None:
            _ema_update(G_ema, G, cfg.ema)
        st.step += 1
        if on_progress is not None:
            on_progress("fuse", step_offset + st.step, total, stats)
        if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.step < cfg.steps:
            save()
    meta: dict[str, Any] = {"description": f"fusion of {', '.join(names)} (Eq. 15-16)", "fusion": {
        "sources": names, "means": means.tolist(), "steps": cfg.steps, "config": cfg_json}}
    out = run_dir / "fused.pt"
    G, D = (G_ema if G_ema is not None else G).cpu().eval(), D.cpu()
    for s in sources:
        s.G.cpu()
    checkpoints.save(source_checkpoint(name, G, D, meta), out)
    for old in run_dir.glob("ckpt-*.pt"):
        old.unlink(missing_ok=True)
    if after_checkpoint is not None:
        after_checkpoint(out)
    return SourceModel(name=name, G=G, D=D, meta=meta)


def distill_generator_step(mods: FusionModules, st: StageState, sources: list[SourceModel], labels: torch.Tensor,
                           weight: float) -> dict[str, float]:
    """One G_F update of Eq. 16 plus a paired distillation term (not in the paper; ``FusionConfig.distill``):

        L_G^F + weight * E_{i, z ~ N(0, I)} mean |G_F(mu_i + z) - G_i(z)|

    The same noise z goes through source i and through G_F's region i, so region i is asked to reproduce
    G_i sample by sample, not only in distribution: the adversarial term alone has to discover that
    correspondence for the regions G_F is not initialised from, and is slow and unsteady at it."""
    assert st.opt_g is not None
    z = torch.randn(len(labels), mods.z_dim, device=labels.device)
    target = pseudo_real(sources, labels, z)  # G_i(z) for each slot's source i
    mods.D.requires_grad_(False)
    try:
        fake = mods.G(mods.means.to(labels.device)[labels] + z)  # G_F(z'), z' = mu_i + z ~ N(mu_i, I)
        adv = generator_loss(mods.critic(fake, labels))  # Eq. 16
        pair = (fake - target).abs().mean()
        loss = adv + weight * pair
        st.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        st.opt_g.step()
    finally:
        mods.D.requires_grad_(True)
    return {"g_loss": adv.item(), "distill_l1": pair.item()}


def _set_lr(st: StageState, factor: float, cfg: FusionConfig) -> None:
    for group in st.opt_d.param_groups:
        group["lr"] = cfg.lr_critic * factor
    assert st.opt_g is not None
    for group in st.opt_g.param_groups:
        group["lr"] = cfg.lr_generator * factor


@torch.no_grad()
def _ema_update(avg: nn.Module, live: nn.Module, decay: float) -> None:
    """avg <- decay * avg + (1 - decay) * live for parameters; buffers (BatchNorm statistics) copied."""
    for pa, pl in zip(avg.parameters(), live.parameters()):
        pa.lerp_(pl, 1.0 - decay)
    for ba, bl in zip(avg.buffers(), live.buffers()):
        ba.copy_(bl)


@torch.no_grad()
def sample_source_region(fused: SourceModel, i: int, n: int, seed: int = 0) -> torch.Tensor:
    """n samples of G_F from source i's prior region, z ~ N(mu_i, I). [n, C, H, W]"""
    means = torch.tensor(fused.meta["fusion"]["means"])
    gen = torch.Generator().manual_seed(seed)
    return fused.G(means[i] + torch.randn(n, fused.G.cfg.z_dim, generator=gen))
