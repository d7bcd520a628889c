"""The one adversarial training loop every method runs on (WGAN-GP, Gulrajani et al.).

A *stage* says which of M (miner), G (generator) and D (critic) learn, and how the critic is restricted
(S^3 masks, FreezeD). Mining (Eq. 3-4), MineGAN finetuning (Sec. 3.4.1), MineGAN++ (Sec. 3.4.2) and the
baselines (scratch, TransferGAN, TransferGAN++, FreezeD) are all lists of stages over this loop; see
``core/methods.py``.

A *step* is one generator (or miner) update preceded by ``n_critic`` critic updates. Stages differ only
by hooks (:class:`StageHooks`: a per-step callback such as a learning-rate schedule, an extra term of the
generator loss such as fusion's paired distillation term, a callback after the generator update such as
weight averaging), by the modules' fakes functions and by where the real minibatches come from
(:class:`TargetBatches`, or fusion's pseudo-real batches). :class:`StagedRun` runs a list of stages with
checkpoints and resumes from the newest one: every method, fusion included, goes through it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from core import checkpoints
from core.augment import Augment
from core.colour import ColourMap
from core.losses import critic_loss, generator_loss, gradient_penalty
from core.nets import generate
from core.nets.layers import is_weighted
from core.options import CRITIC_AUTO, DEFAULTS, LR_MINER_PAPER, MethodError
from core.sparse import SparseConfig, apply_grad_masks, select_subnetwork, trainable_fraction

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
    finetune_layers: int = 0  # weighted G layers that learn, counted back from the output (0: all)
    n_critic: int = CRITIC_AUTO["source"][0]  # Appendix A
    batch_size: int = DEFAULTS.batch_size
    lr_miner: float = LR_MINER_PAPER
    lr_generator: float = DEFAULTS.lr_generator
    lr_critic: float = CRITIC_AUTO["source"][1]
    betas: tuple[float, float] = DEFAULTS.betas
    gp_weight: float = DEFAULTS.gp_weight


@dataclass
class GanModules:
    """What a run trains: a generator, a critic and optionally a miner in front of the generator."""

    G: nn.Module
    D: nn.Module
    M: nn.Module | None = None
    z_dim: int = 128
    n_classes: int = 0  # > 0: conditional source; fakes use the labels of the real batch
    colour: ColourMap | None = None  # the fitted colour map after G (core/colour.py, Eq. MK), or None
    G_ema: nn.Module | None = None  # a moving average of G's weights, published instead of G (core/adapt.py), or None


    def latent(self, n: int, gen: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        return torch.randn(n, self.z_dim, generator=gen, device=device)  # u ~ N(0, I): [N, z_dim]

    def fake(self, u: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = generate(self.G, self.M, u, c if self.n_classes else None)  # G(M(u)): [N, C, H, W]
        return self.colour(x) if self.colour is not None else x

    def critic(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.D(x, c) if self.n_classes else self.D(x)

    def critic_fakes(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The fake minibatch of a critic update (called under no_grad). Multi-GAN mining overrides it."""
        return self.fake(self.latent(n, device=device), labels)

    def generator_fakes(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The fake minibatch of a miner/generator update (with grad). Multi-GAN mining overrides it."""
        return self.fake(self.latent(n, device=device), labels)

    def aux_state(self) -> str:
        """Training state beyond weights and optimisers, as JSON ("" for none); multi-GAN mining's selector."""
        return ""

    def load_aux_state(self, state: str) -> None:
        pass


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
        groups.append({"params": generator_params(mods.G, cfg.finetune_layers), "lr": cfg.lr_generator})
    opt_g = torch.optim.Adam(groups, betas=cfg.betas) if groups else None
    return StageState(opt_d=opt_d, opt_g=opt_g, masks=masks or {})


def generator_params(G: nn.Module, last: int) -> list[nn.Parameter]:
    """The generator parameters that learn: all (``last`` = 0), or those of the last ``last`` weighted layers
    (:func:`is_weighted`) in module order and of every module after the first of them (their norms), the rest fixed
    as in FreezeG. Any architecture, ONNX and .pt2 included: only module types and parameter shapes are read."""
    if last <= 0:
        return list(G.parameters())
    owners = [m for m in G.modules() if list(m.parameters(recurse=False))]
    weighted = [i for i, m in enumerate(owners) if is_weighted(m)]
    start = weighted[-last] if last <= len(weighted) else 0
    return [p for m in owners[start:] for p in m.parameters(recurse=False)]


def _critic_params(D: nn.Module, cfg: StageConfig) -> list[nn.Parameter]:
    frozen: set[int] = set()
    if cfg.freeze_critic_layers:
        layers = [m for m in D.modules() if is_weighted(m, (nn.Conv2d, nn.Linear))]
        for m in layers[: cfg.freeze_critic_layers]:
            frozen.update(id(p) for p in m.parameters())
    return [p for p in D.parameters() if id(p) not in frozen]


def set_trainable(mods: GanModules, cfg: StageConfig) -> None:
    """requires_grad per stage: a frozen G computes no weight gradients (mining keeps G fixed)."""
    mods.G.requires_grad_(cfg.train_generator and not cfg.finetune_layers)
    if cfg.train_generator and cfg.finetune_layers:  # only the learning layers compute weight gradients
        for p in generator_params(mods.G, cfg.finetune_layers):
            p.requires_grad_(True)
    if mods.M is not None:
        mods.M.requires_grad_(cfg.train_miner)


CriticTerm = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def critic_step(
    mods: GanModules, st: StageState, cfg: StageConfig, real: torch.Tensor, labels: torch.Tensor | None,
    augment: Augment | None = None, extra: CriticTerm | None = None,
) -> dict[str, float]:
    """One critic update: Eq. 3 (L_D = E[D(G(M(u)))] - E[D(x)]) plus the gradient penalty; with ``augment`` T
    (DiffAugment, ``core/augment.py``) the critic sees T(x) and T(G(M(u))), and the penalty is taken between them.
    ``extra(real, labels, D(real), D(fake)) -> (term, stats)`` adds a regulariser to L_D (R1, LeCam: core/adapt.py)."""
    n = real.shape[0]
    with torch.no_grad():
        fake = mods.critic_fakes(n, labels, real.device)  # [N, C, H, W]
    if augment is not None:
        real, fake = augment(real), augment(fake)
    d_real = mods.critic(real, labels)
    d_fake = mods.critic(fake, labels)
    loss_w = critic_loss(d_fake, d_real)
    gp = gradient_penalty(mods.D, real, fake, labels if mods.n_classes else None, cfg.gp_weight)
    total, stats = loss_w + gp, {"d_loss": loss_w.item(), "gp": gp.item(), "wdist": -loss_w.item()}
    if extra is not None:
        term, more = extra(real, labels, d_real, d_fake)
        total, stats = total + term, stats | more
    st.opt_d.zero_grad(set_to_none=True)
    total.backward()
    if st.masks:
        apply_grad_masks(mods.D, st.masks)
    st.opt_d.step()
    return stats


GeneratorTerm = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, dict[str, float]]]


def generator_step(mods: GanModules, st: StageState, n: int, labels: torch.Tensor | None, device: torch.device,
                   extra: GeneratorTerm | None = None, augment: Augment | None = None) -> dict[str, float]:
    """One miner/generator update: Eq. 4 (L_G = -E[D(G(M(u)))]); D's weights get no gradient.
    ``extra(fake, labels) -> (term, stats)`` adds a term to L_G (fusion's paired distillation term); with
    ``augment`` T the critic scores T(G(M(u))) and the gradient flows back through T."""
    assert st.opt_g is not None
    mods.D.requires_grad_(False)
    try:
        fake = mods.generator_fakes(n, labels, device)
        loss = generator_loss(mods.critic(augment(fake) if augment is not None else fake, labels))
        stats = {"g_loss": loss.item()}
        total = loss
        if extra is not None:
            term, more = extra(fake, labels)
            total, stats = loss + term, stats | more
        st.opt_g.zero_grad(set_to_none=True)
        total.backward()
        st.opt_g.step()
    finally:
        mods.D.requires_grad_(True)
    return stats


class Batches(Protocol):
    """Where a stage's real minibatches (and the labels of its fake ones) come from."""

    @property
    def device(self) -> torch.device: ...

    def real(self, n: int, rng: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def fake_labels(self, n: int, rng: torch.Generator | None) -> torch.Tensor | None: ...


@dataclass
class TargetBatches:
    """Minibatches drawn with replacement from the target images [N, C, H, W] (and their labels [N], if any)."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.images.device

    def real(self, n: int, rng: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.randint(0, self.images.shape[0], (n,), generator=rng).to(self.device)
        return self.images[idx], self.labels[idx] if self.labels is not None else None

    def fake_labels(self, n: int, rng: torch.Generator | None) -> torch.Tensor | None:
        idx = torch.randint(0, self.images.shape[0], (n,), generator=rng).to(self.device)  # drawn even unlabelled: same RNG stream
        return self.labels[idx] if self.labels is not None else None


@dataclass
class StageHooks:
    """What varies between stages beyond their config (see the module docstring)."""

    before_step: Callable[[StageState, StageConfig], None] | None = None  # e.g. a learning-rate schedule
    generator_term: GeneratorTerm | None = None  # added to L_G, e.g. fusion's paired distillation term, CDC
    critic_term: CriticTerm | None = None  # added to L_D, e.g. R1, LeCam (core/adapt.py)
    after_step: Callable[[StageConfig], None] | None = None  # after the generator update, e.g. weight averaging
    augment: Augment | None = None  # DiffAugment on every critic input (core/augment.py)


def run_stage(
    mods: GanModules,
    st: StageState,
    cfg: StageConfig,
    data: Batches,
    *,
    step_offset: int,
    total_steps: int,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_checkpoint: Callable[[], None] | None = None,
    checkpoint_every: int = 0,
    rng: torch.Generator | None = None,
    hooks: StageHooks | None = None,
) -> None:
    """Train from ``st.step`` to ``cfg.steps`` on real minibatches from ``data``."""
    hooks = hooks or StageHooks()
    set_trainable(mods, cfg)
    t0 = time.perf_counter()
    start = st.step
    while st.step < cfg.steps:
        if should_stop is not None and should_stop():
            raise Stopped(f"stopped in {cfg.name} at step {st.step}")
        stats: dict[str, float] = {}
        if hooks.before_step is not None:
            hooks.before_step(st, cfg)
        for _ in range(cfg.n_critic):
            real, labels = data.real(cfg.batch_size, rng)
            stats = critic_step(mods, st, cfg, real, labels, hooks.augment, hooks.critic_term)
        if st.opt_g is not None:
            labels = data.fake_labels(cfg.batch_size, rng)
            stats |= generator_step(mods, st, cfg.batch_size, labels, data.device, hooks.generator_term, hooks.augment)
        if hooks.after_step is not None:
            hooks.after_step(cfg)
        st.step += 1
        elapsed = time.perf_counter() - t0
        stats["steps_per_s"] = (st.step - start) / max(elapsed, 1e-9)
        if on_progress is not None:
            on_progress(cfg.name, step_offset + st.step, total_steps, stats)
        if on_checkpoint is not None and checkpoint_every and (step_offset + st.step) % checkpoint_every == 0 and st.step < cfg.steps:
            on_checkpoint()


RUN_FORMAT = "minegan-run/1"


class StagedRun:
    """A list of stages over one set of modules, with checkpoints ``ckpt-{global step}.pt`` in ``run_dir``.

    A checkpoint holds the modules (and ``extra`` ones, such as an averaged generator), the current stage's
    optimisers and S^3 masks, both RNG states, the run's history and its ``identity`` (config and source
    names), so :meth:`resume` continues bit-identically from the newest checkpoint in this run's step range
    ``(offset, offset + steps]``; a checkpoint of another identity is refused. ``upgrade`` converts a
    checkpoint of an older format (fusion's own, before it ran on this loop) into this one. ``same_config(saved,
    current)`` says whether a checkpoint's config is this run's (default: equal; mining runs compare the configs as
    resolved for their sources, so a default that became "auto" and resolves to the old value keeps its runs).
    A fresh ``sparse`` stage selects its critic filters with S^3 (Eq. 11-14) from target minibatches first.
    """

    def __init__(self, mods: GanModules, stages: list[StageConfig], data: Batches, run_dir: Path, identity: dict[str, Any], *,
                 data_rng: torch.Generator, offset: int = 0, total_steps: int | None = None, hooks: StageHooks | None = None,
                 extra: dict[str, nn.Module] | None = None, sparse: SparseConfig | None = None,
                 identity_defaults: dict[str, Any] | None = None,
                 upgrade: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
                 same_config: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None,
                 before_checkpoint: Callable[[StagedRun], None] | None = None) -> None:
        self.before_checkpoint = before_checkpoint  # e.g. scoring a candidate (core/keep_best.py)
        self.mods, self.stages, self.data, self.run_dir, self.identity = mods, stages, data, run_dir, identity
        self.data_rng, self.offset, self.hooks, self.extra, self.sparse = data_rng, offset, hooks, extra or {}, sparse
        self.end = offset + sum(s.steps for s in stages)
        self.total_steps = total_steps or self.end
        self.identity_defaults, self.upgrade = identity_defaults or {}, upgrade
        self.same_config = same_config or (lambda a, b: a == b)  # whether a checkpoint's config is this run's
        self.stage_idx = 0
        self.state: StageState | None = None
        self.elapsed = 0.0  # training time, summed over resumed attempts
        self.history: dict[str, Any] = {"stages": []}

    @property
    def global_step(self) -> int:
        done = sum(s.steps for s in self.stages[: self.stage_idx])
        return self.offset + done + (self.state.step if self.state else 0)

    def checkpoint(self) -> Path:
        st = self.state
        obj = {
            "format": RUN_FORMAT, **self.identity, "stage_idx": self.stage_idx, "stage_step": st.step if st else 0,
            "elapsed": self.elapsed, "G": self.mods.G.state_dict(), "D": self.mods.D.state_dict(),
            "M": self.mods.M.state_dict() if self.mods.M is not None else {},
            "opt_d": st.opt_d.state_dict() if st else {}, "opt_g": st.opt_g.state_dict() if st and st.opt_g else {},
            "masks": st.masks if st else {}, "rng": torch.get_rng_state(), "data_rng": self.data_rng.get_state(),
            "history": json.dumps(self.history), "selector": self.mods.aux_state(),
            "extra": {k: m.state_dict() for k, m in self.extra.items()},
        }
        path = checkpoints.save(obj, self.run_dir / checkpoints.checkpoint_name(self.global_step))
        checkpoints.prune(self.run_dir, keep=path)
        return path

    def resume(self) -> Path | None:
        """Restore the newest checkpoint of this run, if there is one; returns its path."""
        path = checkpoints.newest_in(self.run_dir, after=self.offset, upto=self.end)
        if path is not None:
            self.restore(path)
        return path

    def restore(self, path: Path) -> None:
        obj = checkpoints.load(path)
        if obj.get("format") != RUN_FORMAT and self.upgrade is not None:
            obj = self.upgrade(obj) or obj
        # options added in later versions take their defaults, so an upgrade does not orphan running jobs
        saved = {**self.identity_defaults, **dict(obj.get("config") or {})}
        if obj.get("format") != RUN_FORMAT or not self.same_config(saved, self.identity["config"]) or obj.get("source") != self.identity["source"]:
            raise MethodError(f"{path} belongs to a different run configuration; use a fresh run directory")
        self.mods.G.load_state_dict(obj["G"])
        self.mods.D.load_state_dict(obj["D"])
        if self.mods.M is not None:
            self.mods.M.load_state_dict(obj["M"])
        for k, m in self.extra.items():
            if k in obj.get("extra", {}):  # a module of a later version (an average) starts where it was built
                m.load_state_dict(obj["extra"][k])
        self.stage_idx, self.elapsed = int(obj["stage_idx"]), float(obj["elapsed"])
        self.history = json.loads(obj["history"])
        if obj.get("selector"):
            self.mods.load_aux_state(obj["selector"])
        if self.stage_idx < len(self.stages):
            st = make_stage_state(self.mods, self.stages[self.stage_idx], obj["masks"])
            if obj["opt_d"]:
                st.opt_d.load_state_dict(obj["opt_d"])
            if obj["opt_g"] and st.opt_g is not None:
                st.opt_g.load_state_dict(obj["opt_g"])
            st.step = int(obj["stage_step"])
            self.state = st
        torch.set_rng_state(obj["rng"])
        self.data_rng.set_state(obj["data_rng"])
        log.info("resumed %s at stage %d step %d", path, self.stage_idx, self.global_step)

    def run(self, on_progress: ProgressFn | None = None, should_stop: StopFn | None = None, checkpoint_every: int = 0,
            after_checkpoint: Callable[[Path], None] | None = None) -> None:
        """Every remaining stage to its end, with a checkpoint every ``checkpoint_every`` steps and after each stage;
        ``after_checkpoint(path)`` follows each write (the worker uploads it)."""
        t_mark = time.perf_counter()

        def save() -> None:
            nonlocal t_mark
            now = time.perf_counter()
            self.elapsed += now - t_mark
            t_mark = now
            if self.before_checkpoint is not None:
                self.before_checkpoint(self)
            path = self.checkpoint()
            if after_checkpoint is not None:
                after_checkpoint(path)

        while self.stage_idx < len(self.stages):
            stage = self.stages[self.stage_idx]
            if self.state is None:  # a fresh stage: new optimisers; S^3 selects the critic filters now
                self.state = make_stage_state(self.mods, stage, self._select_filters(stage, on_progress))
            run_stage(self.mods, self.state, stage, self.data, step_offset=self.global_step - self.state.step,
                      total_steps=self.total_steps, on_progress=on_progress, should_stop=should_stop, on_checkpoint=save,
                      checkpoint_every=checkpoint_every, rng=self.data_rng, hooks=self.hooks)
            self.stage_idx += 1
            self.state = None
            save()

    def _select_filters(self, stage: StageConfig, on_progress: ProgressFn | None) -> dict[str, torch.Tensor]:
        """S^3 (Eq. 11-14) at the start of a sparse stage: the critic filters it may train."""
        if not stage.sparse:
            return {}
        cfg = self.sparse or SparseConfig(DEFAULTS.sparse_top_fraction, DEFAULTS.sparse_min_weights)
        batches = [self.data.real(stage.batch_size, self.data_rng) for _ in range(cfg.n_batches)]
        masks = select_subnetwork(self.mods.D, batches, cfg)
        frac = trainable_fraction(masks)
        self.history["stages"].append({"stage": stage.name, "s3_trainable_fraction": frac})
        if on_progress:
            on_progress("select", self.global_step, self.total_steps, {"s3_trainable_fraction": frac})
        return masks
