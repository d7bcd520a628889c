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

Beyond Eq. 15-16 (this project's additions, on by default through ``RunConfig``; docs/benchmarks.md, "Several GANs"):
``FusionConfig.distill`` adds a paired term to Eq. 16, distill * mean|G_F(mu_i + z) - G_i(z)| on the same
noise z (:func:`paired_term`), and ``lr_decay`` lets both learning rates fall linearly to zero. Without
them the regions G_F is not initialised from stayed visibly further from their sources (the fusion-fidelity
figures are in docs/benchmarks.md).

The result is an ordinary unconditional ``Generator`` + ``Critic`` pair (a :class:`SourceModel`) that
mining then treats like any other source; its file can be registered as a new zoo source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import checkpoints
from core.adapt import ema_update, frozen_copy
from core.augment import diff_augment
from core.nets import Critic, critic_like, new_like
from core.options import DEFAULTS, FUSION_CRITICS, RunConfig, check_sources, critic_rate
from core.trainer import RUN_FORMAT, GanModules, ProgressFn, StageConfig, StagedRun, StageHooks, StageState, StopFn
from core.zoo import SourceModel, source_checkpoint

log = logging.getLogger(__name__)

OLD_FUSION_FORMAT = "minegan-fusion-run/2"  # fusion's own checkpoints, before it ran on core.trainer's loop


# What identifies a fusion (its checkpoints, fused.pt's meta): the keys fusion's config has always recorded.
_RECORDED = ("steps", "batch_size", "n_critic", "lr_generator", "lr_critic", "betas", "gp_weight", "mean_scale", "init", "critic",
             "ema", "distill", "lr_decay", "seed", "checkpoint_every", "augment")


@dataclass(frozen=True)
class FusionConfig(StageConfig):
    """The fusion stage (Eq. 15-16): a stage of ``core.trainer``'s loop in which G_F and the critic learn, plus the
    fusion's own settings. Defaults are the service's (``core/options.py``); :meth:`of` takes them from a run's
    config, where the fusion options are the ``fusion_*`` fields."""

    name: str = "fuse"
    steps: int = DEFAULTS.fusion_steps
    train_miner: bool = False
    train_generator: bool = True
    lr_generator: float = DEFAULTS.fusion_lr_generator
    mean_scale: float = DEFAULTS.fusion_mean_scale  # |mu_i|: how far apart the sources' prior regions lie (about |z| ~ sqrt(z_dim))
    init: str = "source"  # "source": G_F, D start from the first source's weights; "random"
    critic: str = DEFAULTS.fusion_critic  # "projection": D_F(x, i) = D(x) + e_i^T phi(x); "plain": D(x) (unconditional)
    ema: float = 0.0  # >0: G_F is the exponential moving average of the trained weights with this decay (0: off)
    distill: float = DEFAULTS.fusion_distill  # >0: add distill * E|G_F(mu_i + z) - G_i(z)| (paired, per pixel) to Eq. 16
    lr_decay: bool = DEFAULTS.fusion_lr_decay  # True: both learning rates fall linearly to 0 over the run
    augment: str = DEFAULTS.augment  # DiffAugment policy on the critic's inputs (core/augment.py)
    seed: int = DEFAULTS.seed
    checkpoint_every: int = DEFAULTS.checkpoint_every

    @classmethod
    def of(cls, cfg: RunConfig) -> FusionConfig:
        """The fusion stage of a run: each setting from ``fusion_<name>`` of ``cfg`` if there is one, else ``<name>``."""
        own: dict[str, Any] = {f: getattr(cfg, f"fusion_{f}", getattr(cfg, f, None)) for f in _RECORDED}
        own["n_critic"], own["lr_critic"] = critic_rate(cfg)  # an auto one (a config not resolved): Appendix A's
        return cls(**{k: v for k, v in own.items() if v is not None})

    def as_json(self) -> dict[str, Any]:
        """What identifies a fusion. Options added after the paper's recipe are left out when off, so a fusion
        recorded before they existed is the same fusion."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if k in _RECORDED}
        for opt in ("ema", "distill", "lr_decay", "augment"):
            if not out[opt]:
                del out[opt]
        return out


# The paper's fusion (Eq. 15-16 alone, the generator's usual learning rate, constant rates), beside the
# service's defaults above; the fusion benchmarks and tests start from it.
PAPER_RECIPE = FusionConfig(lr_generator=DEFAULTS.lr_generator, distill=0.0, lr_decay=False)


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
        if not isinstance(D.fc, nn.Linear):
            raise ValueError("the projection critic projects a whole-image critic's features, not a patch critic's")
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
    noise: torch.Tensor | None = None  # e of the last generator minibatch, z = mu_i + e (the paired term reuses it)

    def prior(self, labels: torch.Tensor) -> torch.Tensor:
        self.noise = torch.randn(len(labels), self.z_dim, device=labels.device)  # e ~ N(0, I): [N, z_dim]
        return self.means.to(labels.device)[labels] + self.noise  # z ~ N(mu_i, I)

    def critic_fakes(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        assert labels is not None
        return self.fake(self.prior(labels))  # G_F(z), Eq. 15

    def generator_fakes(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        assert labels is not None
        return self.fake(self.prior(labels))  # G_F(z), Eq. 16

    def fake(self, u: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return super().fake(u)  # G_F is unconditional: the source index acts through the prior mean only


@dataclass
class PseudoRealBatches:
    """Fusion's real minibatches: balanced source indices, and one sample G_i(z) of slot i's source per slot."""

    sources: list[SourceModel]
    device: torch.device

    def real(self, n: int, rng: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        labels = balanced_labels(n, len(self.sources), rng).to(self.device)
        return pseudo_real(self.sources, labels), labels  # the pseudo-real batch of Eq. 15

    def fake_labels(self, n: int, rng: torch.Generator | None) -> torch.Tensor | None:
        return balanced_labels(n, len(self.sources), rng).to(self.device)


@torch.no_grad()
def pseudo_real(sources: list[SourceModel], labels: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """One sample G_i(z), z ~ N(0, I), per slot from the slot's source i: the pseudo-real batch of Eq. 15.
    With ``z`` [N, z_dim] given, slot k uses z[k] (the paired targets of :func:`paired_term`)."""
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
    """Train G_F (Eq. 15-16) as one stage of ``core.trainer``'s loop, checkpointing as ``ckpt-{step}.pt`` in
    ``run_dir`` and resuming from the latest; writes ``fused.pt`` (a source-model file) and returns the fused source."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_sources(RunConfig(method="fusion"), [s.info for s in sources])
    if cfg.critic not in FUSION_CRITICS:
        raise ValueError(f"fusion critic must be one of {FUSION_CRITICS}, not {cfg.critic!r}")
    torch.manual_seed(cfg.seed)
    g0, d0 = sources[0].G, sources[0].D
    # the projection critic reads our critic's features phi(x); an uploaded ONNX critic has none, so it starts fresh
    G, D = new_like(g0), critic_like(d0, fresh=cfg.init != "source" or (cfg.critic == "projection" and not isinstance(d0, Critic)))
    if cfg.init == "source":
        G.load_state_dict(g0.state_dict())
    means = fusion_means(len(sources), g0.cfg.z_dim, cfg.mean_scale, cfg.seed)
    if cfg.critic == "projection":  # D_F(x, i): the critic sees which source (prior region) an image belongs to
        assert isinstance(D, Critic)  # critic_like gave ours (above)
        mods = FusionModules(G=G, D=ProjectionCritic(D, len(sources)), z_dim=g0.cfg.z_dim, n_classes=len(sources), means=means)
    else:
        mods = FusionModules(G=G, D=D, z_dim=g0.cfg.z_dim, means=means)
    # Weight averaging (not in the paper, whose fusion recipe stops at Eq. 15-16): G_ema follows G_F's weights
    # with decay ``ema`` after every generator step and is what fused.pt holds; BatchNorm statistics are copied.
    G_ema = frozen_copy(G).eval() if cfg.ema else None
    names = [s.name for s in sources]
    dev = torch.device(device)
    run = StagedRun(mods, [cfg], PseudoRealBatches(sources, dev), run_dir, {"config": cfg.as_json(), "source": ",".join(names)},
                    data_rng=torch.Generator().manual_seed(cfg.seed + 1), offset=step_offset, total_steps=total_steps,
                    hooks=_fusion_hooks(cfg, mods, sources, G_ema), extra={"G_ema": G_ema} if G_ema is not None else {},
                    upgrade=_upgrade_checkpoint)
    run.resume()
    for m in (G, G_ema, mods.D):
        if m is not None:
            m.to(dev)
    for s in sources:
        s.G.eval().requires_grad_(False).to(dev)
    run.run(on_progress, should_stop, cfg.checkpoint_every, after_checkpoint)
    meta: dict[str, Any] = {"description": f"fusion of {', '.join(names)} (Eq. 15-16)", "fusion": {
        "sources": names, "means": means.tolist(), "steps": cfg.steps, "config": cfg.as_json()}}
    out = run_dir / "fused.pt"
    G, D = (G_ema if G_ema is not None else G).cpu().eval(), D.cpu()
    for s in sources:
        s.G.cpu()
    checkpoints.save(source_checkpoint(name, G, D, meta), out)
    checkpoints.prune(run_dir)
    if after_checkpoint is not None:
        after_checkpoint(out)
    return SourceModel(name=name, G=G, D=D, meta=meta)


def _fusion_hooks(cfg: FusionConfig, mods: FusionModules, sources: list[SourceModel], G_ema: nn.Module | None) -> StageHooks:
    def decay(st: StageState, stage: StageConfig) -> None:  # a function of the step alone: a resumed run continues it
        factor = 1.0 - st.step / stage.steps
        for group in st.opt_d.param_groups:
            group["lr"] = cfg.lr_critic * factor
        assert st.opt_g is not None
        for group in st.opt_g.param_groups:
            group["lr"] = cfg.lr_generator * factor

    def average(_stage: StageConfig) -> None:
        assert G_ema is not None
        ema_update(G_ema, mods.G, cfg.ema)

    return StageHooks(before_step=decay if cfg.lr_decay else None, augment=diff_augment(cfg.augment),
                      generator_term=paired_term(mods, sources, cfg.distill) if cfg.distill else None,
                      after_step=average if G_ema is not None else None)


def paired_term(mods: FusionModules, sources: list[SourceModel], weight: float) -> Callable[..., tuple[torch.Tensor, dict[str, float]]]:
    """The paired distillation term added to Eq. 16 (not in the paper; ``FusionConfig.distill``):

        L_G^F + weight * E_{i, e ~ N(0, I)} mean |G_F(mu_i + e) - G_i(e)|

    The noise e of G_F's fake of region i also goes through source i, so region i is asked to reproduce G_i
    sample by sample, not only in distribution: the adversarial term alone has to discover that correspondence
    for the regions G_F is not initialised from, and is slow and unsteady at it."""

    def term(fake: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        assert labels is not None and mods.noise is not None
        target = pseudo_real(sources, labels, mods.noise)  # G_i(e) for each slot's source i
        pair = (fake - target).abs().mean()
        return weight * pair, {"distill_l1": pair.item()}

    return term


def _upgrade_checkpoint(obj: dict[str, Any]) -> dict[str, Any] | None:
    """A checkpoint of fusion's own loop (format minegan-fusion-run/2) as a checkpoint of its StagedRun."""
    if obj.get("format") != OLD_FUSION_FORMAT:
        return None
    return {"format": RUN_FORMAT, "config": obj["config"], "source": ",".join(obj["sources"]), "stage_idx": 0,
            "stage_step": obj["step"], "elapsed": 0.0, "G": obj["G"], "D": obj["D"], "M": {}, "opt_d": obj["opt_d"],
            "opt_g": obj["opt_g"], "masks": {}, "rng": obj["rng"], "data_rng": obj["gen"], "history": '{"stages": []}',
            "selector": "", "extra": {"G_ema": obj["G_ema"]} if "G_ema" in obj else {}}


@torch.no_grad()
def sample_source_region(fused: SourceModel, i: int, n: int, seed: int = 0) -> torch.Tensor:
    """n samples of G_F from source i's prior region, z ~ N(mu_i, I). [n, C, H, W]"""
    means = torch.tensor(fused.meta["fusion"]["means"])
    gen = torch.Generator().manual_seed(seed)
    return fused.G(means[i] + torch.randn(n, fused.G.cfg.z_dim, generator=gen))
