"""The one adversarial training loop every method runs on (WGAN-GP, Gulrajani et al.).

A *stage* says which of M (miner), G (generator) and D (critic) learn, and how the critic is restricted
(S^3 masks, FreezeD). Mining (Eq. 3-4), MineGAN finetuning (Sec. 3.4.1), MineGAN++ (Sec. 3.4.2) and the
baselines (scratch, TransferGAN, TransferGAN++, FreezeD) are all lists of stages over this loop; see
``core/methods.py``.

A *step* is one generator (or miner) update preceded by ``n_critic`` critic updates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from core.losses import critic_loss, generator_loss, gradient_penalty
from core.sparse import apply_grad_masks

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int, dict[str, float]], None]
StopFn = Callable[[], bool]


class Stopped(Exception):
    """Raised inside a loop when ``should_stop()`` returned True (the run was canceled)."""


@dataclass(frozen=True)
class StageConfig:
    name: str  # "mine", "finetune", "train"
    steps: int
    train_miner: bool
    train_generator: bool
    sparse: bool = False  # S^3 on the critic (Eq. 11-14)
    freeze_critic_layers: int = 0  # FreezeD: number of lowest critic layers kept fixed
    n_critic: int = 5
    batch_size: int = 64
    lr_miner: float = 4e-4  # Appendix A (MNIST): Adam 4e-4, betas (0.5, 0.999)
    lr_generator: float = 1e-4
    lr_critic: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    gp_weight: float = 10.0


@dataclass
class GanModules:
    """What a run trains: a generator, a critic and optionally a miner in front of the generator."""

    G: nn.Module
    D: nn.Module
    M: nn.Module | None = None
    z_dim: int = 128
    n_classes: int = 0  # > 0: conditional source; fakes use the labels of the real batch

    def latent(self, n: int, gen: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=gen, device=device)  # u ~ N(0, I): [N, z_dim]

    def fake(self, u: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        z = self.M(u) if self.M is not None else u  # z = M(u) when mining
        if self.M is not None and hasattr(self.M, "embedding"):  # Sec. 4.1: G(M^z(u), M^c(u)), no label needed
            return self.G(z, embedding=self.M.embedding(u))  # type: ignore[no-any-return,operator]
        return self.G(z, c) if self.n_classes else self.G(z)  # [N, C, H, W]

    def critic(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.D(x, c) if self.n_classes else self.D(x)

    def critic_fakes(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The fake minibatch of a critic update (called under no_grad). Multi-GAN mining overrides it."""
        return self.fake(self.latent(n, device=device), labels)

    def generator_fakes(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The fake minibatch of a miner/generator update (with grad). Multi-GAN mining overrides it."""
        return self.fake(self.latent(n, device=device), labels)


@dataclass
class StageState:
    """Optimisers and restrictions of the current stage (rebuilt at each stage start, checkpointed)."""

    opt_d: torch.optim.Optimizer
    opt_g: torch.optim.Optimizer | None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    step: int = 0


def make_stage_state(mods: GanModules, cfg: StageConfig, masks: dict[str, torch.Tensor] | None = None) -> StageState:
    d_params = _critic_params(mods.D, cfg)
    opt_d = torch.optim.Adam(d_params, lr=cfg.lr_critic, betas=cfg.betas)
    groups = []
    if cfg.train_miner and mods.M is not None:
        groups.append({"params": list(mods.M.parameters()), "lr": cfg.lr_miner})
    if cfg.train_generator:
        groups.append({"params": list(mods.G.parameters()), "lr": cfg.lr_generator})
    opt_g = torch.optim.Adam(groups, betas=cfg.betas) if groups else None
    return StageState(opt_d=opt_d, opt_g=opt_g, masks=masks or {})


def _critic_params(D: nn.Module, cfg: StageConfig) -> list[nn.Parameter]:
    frozen: set[int] = set()
    if cfg.freeze_critic_layers:
        layers = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for m in layers[: cfg.freeze_critic_layers]:
            frozen.update(id(p) for p in m.parameters())
    return [p for p in D.parameters() if id(p) not in frozen]


def set_trainable(mods: GanModules, cfg: StageConfig) -> None:
    """requires_grad per stage: a frozen G computes no weight gradients (mining keeps G fixed)."""
    mods.G.requires_grad_(cfg.train_generator)
    if mods.M is not None:
        mods.M.requires_grad_(cfg.train_miner)


def critic_step(
    mods: GanModules, st: StageState, cfg: StageConfig, real: torch.Tensor, labels: torch.Tensor | None
) -> dict[str, float]:
    """One critic update: Eq. 3 (L_D = E[D(G(M(u)))] - E[D(x)]) plus the gradient penalty."""
    n = real.shape[0]
    with torch.no_grad():
        fake = mods.critic_fakes(n, labels, real.device)  # [N, C, H, W]
    d_real = mods.critic(real, labels)
    d_fake = mods.critic(fake, labels)
    loss_w = critic_loss(d_fake, d_real)
    gp = gradient_penalty(mods.D, real, fake, labels if mods.n_classes else None, cfg.gp_weight)
    st.opt_d.zero_grad(set_to_none=True)
    (loss_w + gp).backward()
    if st.masks:
        apply_grad_masks(mods.D, st.masks)
    st.opt_d.step()
    return {"d_loss": loss_w.item(), "gp": gp.item(), "wdist": -loss_w.item()}


def generator_step(mods: GanModules, st: StageState, n: int, labels: torch.Tensor | None, device: torch.device) -> dict[str, float]:
    """One miner/generator update: Eq. 4 (L_G = -E[D(G(M(u)))]); D's weights get no gradient."""
    assert st.opt_g is not None
    mods.D.requires_grad_(False)
    try:
        fake = mods.generator_fakes(n, labels, device)
        loss = generator_loss(mods.critic(fake, labels))
        st.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        st.opt_g.step()
    finally:
        mods.D.requires_grad_(True)
    return {"g_loss": loss.item()}


def run_stage(
    mods: GanModules,
    st: StageState,
    cfg: StageConfig,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    step_offset: int,
    total_steps: int,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_checkpoint: Callable[[], None] | None = None,
    checkpoint_every: int = 0,
    rng: torch.Generator | None = None,
) -> None:
    """Train from ``st.step`` to ``cfg.steps``; images [N, C, H, W] in [-1, 1] are the real data."""
    set_trainable(mods, cfg)
    device = images.device
    n_real = images.shape[0]
    t0 = time.perf_counter()
    start = st.step
    while st.step < cfg.steps:
        if should_stop is not None and should_stop():
            raise Stopped(f"stopped in {cfg.name} at step {st.step}")
        stats: dict[str, float] = {}
        for _ in range(cfg.n_critic):
            idx = torch.randint(0, n_real, (cfg.batch_size,), generator=rng).to(device)
            lab = labels[idx] if labels is not None else None
            stats = critic_step(mods, st, cfg, images[idx], lab)
        if st.opt_g is not None:
            idx = torch.randint(0, n_real, (cfg.batch_size,), generator=rng).to(device)
            stats |= generator_step(mods, st, cfg.batch_size, labels[idx] if labels is not None else None, device)
        st.step += 1
        elapsed = time.perf_counter() - t0
        stats["steps_per_s"] = (st.step - start) / max(elapsed, 1e-9)
        if on_progress is not None:
            on_progress(cfg.name, step_offset + st.step, total_steps, stats)
        if on_checkpoint is not None and checkpoint_every and (step_offset + st.step) % checkpoint_every == 0 and st.step < cfg.steps:
            on_checkpoint()
