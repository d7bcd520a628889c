"""Every transfer method on one code path, selectable by name.

| method          | init of G, D | miner | stages (total budget = mining_steps + finetune_steps)        |
|-----------------|--------------|-------|--------------------------------------------------------------|
| ``mine``        | source       | yes   | mine (Eq. 3-4) for the whole budget — MineGAN w/o FT          |
| ``minegan``     | source       | yes   | mine, then finetune M+G+D (Sec. 3.4.1)                        |
| ``minegan++``   | source       | yes   | as minegan, S^3 on the critic in both stages (Sec. 3.4.2)     |
| ``scratch``     | random       | no    | train G+D                                                     |
| ``transfergan`` | source       | no    | finetune G+D (Wang et al. 2018)                               |
| ``transfergan++`` | source     | no    | finetune G+D with S^3 on the critic                           |
| ``freezed``     | source       | no    | finetune G+D, lowest critic layers frozen (FreezeD)           |
| ``fusion``      | fused G_F    | yes   | fuse the sources (Eq. 15-16, ``fusion_steps``; the fusion     |
|                 |              |       | critic is told each image's source, ``fusion_critic``; G_F's  |
|                 |              |       | regions distilled from their sources, ``fusion_distill``),    |
|                 |              |       | then                                                          |
|                 |              |       | minegan (one miner, or one per prior region: fusion_mining)   |
| ``fusion++``    | fused G_F    | yes   | fuse, then minegan++                                          |

Mining methods also take several sources, or one one-hot conditional source (its classes become the
family members): then there is one miner per member, one critic (initialised from source
``critic_source``), supersamples and the selector of Sec. 3.3 (``core/multi.py``), trained with the
permuted rule of Eq. 9-10 (``selection="permuted"``) or the original max rule of Eq. 5-6 (``"max"``).

:func:`train` runs a method with checkpoints in a run directory and resumes from the latest one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.adapt import adaptation_hooks
from core.augment import diff_augment
from core.colour import ColourMap, fit_colour_map
from core.fusion import FusionConfig, fuse
from core.keep_best import KeepBest
from core.mining import MinedGenerator, mining_stage
from core.model_file import TransferredModel, save_model
from core.multi import MultiGanModules, MultiMinedGenerator, unconditional_critic
from core.nets import GENERATORS, GraphGenerator, JointMiner, JointMinerConfig, Miner, MinerConfig, critic_like, generate, new_like
from core.options import (
    DEFAULTS,
    FINETUNE_METHODS,
    FUSION_METHODS,
    METHODS,
    MINING_METHODS,
    OPTIONS,
    MethodError,
    PreparedRun,
    RunConfig,
    SourceInfo,
    critic_rate,
    is_family,
    miner_lr,
    prepare,
    resolve,
)
from core.sparse import SparseConfig
from core.trainer import GanModules, ProgressFn, StageConfig, StagedRun, StopFn, TargetBatches
from core.zoo import SourceModel, load_source_file

log = logging.getLogger(__name__)

__all__ = ["FUSION_METHODS", "METHODS", "MINING_METHODS", "MethodError", "RunConfig", "build_modules", "plan", "train"]


def finetune_stage(steps: int, *, sparse: bool = False, **opts: object) -> StageConfig:
    """Finetuning after mining (Sec. 3.4.1): M, G and D learn together with the mining objective (Eq. 3-4, now minimised
    w.r.t. M and G); ``sparse`` restricts D to the filters S^3 selects (Eq. 11-14, Sec. 3.4.2: MineGAN++)."""
    return StageConfig("finetune", steps=steps, train_miner=True, train_generator=True, sparse=sparse, **opts)  # type: ignore[arg-type]


def finetune_all_stage(steps: int, *, sparse: bool = False, freeze_critic_layers: int = 0, **opts: object) -> StageConfig:
    """The baselines' one stage (Sec. 5, Tables 1-3): G and D learn directly, no miner. ``scratch`` from random weights,
    ``transfergan`` from the source (Wang et al. 2018), ``transfergan++`` with S^3 on the critic (Sec. 5: S^3 "does not
    require mining"), ``freezed`` with the lowest critic layers fixed (FreezeD, Mo et al. 2020)."""
    return StageConfig("train", steps=steps, train_miner=False, train_generator=True, sparse=sparse,
                       freeze_critic_layers=freeze_critic_layers, **opts)  # type: ignore[arg-type]


def plan(cfg: RunConfig) -> list[StageConfig]:
    """The stages a method runs (see the table in the module docstring)."""
    cfg.validate()
    n_critic, lr_critic = critic_rate(cfg)  # resolved by core.options.resolve (unresolved: Appendix A's)
    opts: dict[str, Any] = dict(n_critic=n_critic, batch_size=cfg.batch_size, lr_miner=miner_lr(cfg), lr_generator=cfg.lr_generator,
                lr_critic=lr_critic, betas=tuple(cfg.betas), gp_weight=cfg.gp_weight, finetune_layers=cfg.finetune_layers)
    # a critic that starts fresh first learns the target alone for a while (critic_warmup, resolved by core.options.resolve)
    warmup = [StageConfig("warmup", steps=cfg.critic_warmup, train_miner=False, train_generator=False, **opts)]
    m, f = cfg.mining_steps, cfg.finetune_steps
    total = m + f
    # the critic while G finetunes after mining (resolved by core.options.resolve; unresolved: the mining critic's)
    fine = opts | {"n_critic": cfg.finetune_n_critic if cfg.finetune_n_critic > 0 else n_critic,
                   "lr_critic": cfg.finetune_lr_critic if cfg.finetune_lr_critic > 0 else lr_critic}
    stages: dict[str, list[StageConfig]] = {
        "mine": [mining_stage(total, **opts)],
        "minegan": [mining_stage(m, **opts), finetune_stage(f, **fine)],
        "minegan++": [mining_stage(m, sparse=True, **opts), finetune_stage(f, sparse=True, **fine)],
        "scratch": [finetune_all_stage(total, **opts)],
        "transfergan": [finetune_all_stage(total, **opts)],
        "transfergan++": [finetune_all_stage(total, sparse=True, **opts)],
        "freezed": [finetune_all_stage(total, freeze_critic_layers=cfg.freeze_critic_layers, **opts)],
        "fusion": [mining_stage(m, **opts), finetune_stage(f, **fine)],  # after fuse(), on G_F
        "fusion++": [mining_stage(m, sparse=True, **opts), finetune_stage(f, sparse=True, **fine)],
    }
    return [s for s in warmup + stages[cfg.method] if s.steps > 0]


def _as_list(source: SourceModel | list[SourceModel]) -> list[SourceModel]:
    return list(source) if isinstance(source, (list, tuple)) else [source]


def _new_miner(cfg: RunConfig, z: int) -> Miner:
    return Miner(MinerConfig(z_dim=z, hidden=cfg.miner_hidden or z, layers=cfg.miner_layers, init_std=cfg.miner_init_std,
                             residual=cfg.miner_init == "identity"))


def build_modules(cfg: RunConfig, source: SourceModel | list[SourceModel]) -> GanModules:
    """Fresh copies of the source nets (random init for ``scratch``) plus a miner for mining methods;
    for a family (several sources or a conditional one) one miner per member and one critic.
    Fusion methods take the fused source (``fuse`` first; ``train`` does). ``cfg`` fits ``source``
    (``core.options.prepare`` checks that)."""
    sources = _as_list(source)
    if cfg.method in FUSION_METHODS:
        if len(sources) != 1:
            raise MethodError("fusion methods mine the fused generator: call fuse() first (train() does)")
        if is_family(cfg, [s.info for s in sources]) and "fusion" in sources[0].meta:
            return _build_region_family(cfg, sources[0])
    elif is_family(cfg, [s.info for s in sources]):
        return _build_family(cfg, sources)
    source = sources[0]
    if cfg.method == "scratch" and isinstance(source.G, GraphGenerator):
        raise MethodError("method: scratch re-initialises the generator, which one read from a graph file (ONNX, .pt2) cannot be; "
                          "use a mining or finetuning method")
    G = new_like(source.G)
    D = critic_like(source.D, fresh=cfg.method == "scratch" or cfg.critic_init == "fresh", patch=max(cfg.critic_patch, 0))
    if cfg.method != "scratch":
        G.load_state_dict(source.G.state_dict())
    z = source.G.cfg.z_dim
    if source.conditional:  # embedding-conditioned G (Sec. 4.1): miners M^z and M^c, critic without labels
        M: nn.Module = JointMiner(JointMinerConfig(z_dim=z, hidden=cfg.miner_hidden or z, layers=cfg.miner_layers,
                                                   init_std=cfg.miner_init_std, embed_dim=source.G.cfg.embed_dim))
        return GanModules(G=G, D=unconditional_critic(D), M=M, z_dim=z)
    return GanModules(G=G, D=D, M=_new_miner(cfg, z) if cfg.method in MINING_METHODS else None, z_dim=z)


def _build_family(cfg: RunConfig, sources: list[SourceModel]) -> MultiGanModules:
    g0 = sources[0].G.cfg
    Gs, members, names = nn.ModuleList(), [], []
    for gi, s in enumerate(sources):
        G = new_like(s.G)
        G.load_state_dict(s.G.state_dict())
        Gs.append(G)
        if s.conditional:  # supplement Sec. A: the family {G(i, z)} of one one-hot conditional generator
            members += [(gi, c) for c in range(s.G.cfg.n_classes)]
            names += [f"{s.name}:{c}" for c in range(s.G.cfg.n_classes)]
        else:
            members.append((gi, -1))
            names.append(s.name)
    D = critic_like(sources[cfg.critic_source].D, fresh=cfg.critic_init == "fresh", patch=max(cfg.critic_patch, 0))
    Ms = nn.ModuleList(_new_miner(cfg, g0.z_dim) for _ in members)
    return MultiGanModules(G=Gs, D=unconditional_critic(D), M=Ms, z_dim=g0.z_dim, members=members, rule=cfg.selection,
                           member_names=names)


def _build_region_family(cfg: RunConfig, fused: SourceModel) -> MultiGanModules:
    """Mining the fused G_F as the conditional GAN it is (Sec. 4.2, Fig. 4 right): its condition is the
    prior region, G_F(i, z) = G_F(mu_i + z), so it is mined like the family {G(i, z)} of a conditional
    generator (supplement Sec. A): one miner per region, supersamples and the selector, whose pi is then
    the share of each source in the target. Miner i starts at its region: its output layer's bias is
    mu_i (its weights are N(0, 0.01) as every miner's), so M_i(u) + 0 ~ mu_i before training."""
    means = torch.tensor(fused.meta["fusion"]["means"], dtype=torch.float32)  # [N, z_dim]
    names = [f"region:{n}" for n in fused.meta["fusion"]["sources"]]
    G = new_like(fused.G)
    G.load_state_dict(fused.G.state_dict())
    D = critic_like(fused.D, fresh=cfg.critic_init == "fresh", patch=max(cfg.critic_patch, 0))
    Ms = nn.ModuleList(_new_miner(cfg, fused.G.cfg.z_dim) for _ in names)
    with torch.no_grad():
        for M, mu in zip(Ms, means):
            M.net[-1].bias.copy_(mu)  # type: ignore[index,union-attr]
    return MultiGanModules(G=nn.ModuleList([G]), D=unconditional_critic(D), M=Ms, z_dim=fused.G.cfg.z_dim,
                           members=[(0, -1)] * len(names), rule=cfg.selection, member_names=names)


@dataclass
class RunResult:
    model: TransferredModel
    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)


PreviewFn = Callable[[int, Callable[[int, int], torch.Tensor]], None]


def train(
    cfg: RunConfig | PreparedRun,
    source: SourceModel | list[SourceModel],
    target: torch.Tensor,
    run_dir: str | Path,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    device: str = "cpu",
    after_checkpoint: Callable[[Path], None] | None = None,
    on_preview: PreviewFn | None = None,
    preview_every: int = 0,
) -> RunResult:
    """Run ``cfg.method`` from ``source`` (one model or a list) on ``target`` ([N, C, H, W] in [-1, 1]);
    resumable via ``run_dir``. ``cfg``: a run that ``core.options.prepare`` made for these sources (run as it is), or a
    plain config (prepared here).

    ``after_checkpoint(path)`` is called after each checkpoint is written (the worker uploads it).
    ``on_preview(step, sample)`` is called every ``preview_every`` mining/finetuning steps (and at the last
    one) with ``sample(n, seed) -> images`` drawing from the model as it is at that step (eval mode, no grad;
    the training RNG is not touched, so previews do not change the run)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sources = _as_list(source)
    g = sources[0].G.cfg if sources else None
    if g is not None and tuple(target.shape[1:]) != (g.channels, g.img_size, g.img_size):
        raise MethodError(f"target images {tuple(target.shape[1:])} do not match the source's output shape")
    prepared = cfg if isinstance(cfg, PreparedRun) else prepare(cfg, [s.info for s in sources])
    cfg, concrete = prepared.asked, prepared.run
    if cfg.method in FUSION_METHODS:  # Sec. 4.2: fuse the sources into G_F first, then mine G_F
        sources = [_fused_source(concrete, sources, run_dir, on_progress, should_stop, device, after_checkpoint)]
    run = mining_run(cfg, sources, target.to(device), run_dir, concrete)
    run.resume()
    for m in (run.mods.G, run.mods.D, run.mods.M, run.mods.colour, *run.extra.values()):
        if m is not None:
            m.to(device)
    run.run(_reporting(on_progress, on_preview, preview_every, run.mods), should_stop, cfg.checkpoint_every, after_checkpoint)
    return _finish(concrete, run, run_dir, target)


def mining_run(cfg: RunConfig, sources: list[SourceModel], images: torch.Tensor, run_dir: Path,
               concrete: RunConfig | None = None) -> StagedRun:
    """The method's stages (after fusion's, for fusion methods) over freshly built modules, as a resumable run.
    ``concrete``: ``cfg`` resolved for the original sources (default: for ``sources``); the run is identified
    by ``cfg`` as given, so a checkpoint records what the user asked for."""
    infos = [s.info for s in sources]
    concrete = concrete or resolve(cfg, infos)
    stages = plan(concrete)
    torch.manual_seed(cfg.seed)
    mods = build_modules(concrete, sources)
    if _fits_map(concrete):  # Eq. MK / BAND fitted on the source generator (no miner):
        mods.colour = _fit_colour(concrete, mods.G, None, mods.z_dim, images)  # the critic sees matched colours and band
    hooks, extra = adaptation_hooks(concrete, mods, diff_augment(concrete.augment))
    keeper = None
    if concrete.keep_best == "on" and concrete.method in FINETUNE_METHODS:
        keeper = KeepBest(mods, images, lambda n, seed: _current_model(mods).sample(n, seed=seed))
        extra["keep_best"] = keeper.state
    return StagedRun(mods, stages, TargetBatches(images), run_dir,
                     {"config": cfg.as_json(), "source": ",".join(s.name for s in sources)},
                     data_rng=torch.Generator().manual_seed(cfg.seed + 1), offset=cfg.pre_steps, total_steps=concrete.total_steps,
                     hooks=hooks, extra=extra,
                     sparse=SparseConfig(cfg.sparse_top_fraction, cfg.sparse_min_weights), identity_defaults=DEFAULTS.as_json(),
                     same_config=lambda saved, asked: _same_run(saved, asked, concrete, infos), before_checkpoint=keeper)


def _same_run(saved: dict[str, Any], asked: dict[str, Any], concrete: RunConfig, infos: list[SourceInfo]) -> bool:
    """Whether a checkpoint's config is this run's: it resolves for these sources as the config asked does, or as the
    concrete run that trains does (a job stored by an earlier version whose asked default has since become "auto": its
    stored run keeps the old value, and so do its checkpoints)."""
    resolved = _resolved_json(saved, infos)
    return resolved is not None and resolved in (_resolved_json(asked, infos), _resolved_json(concrete.as_json(), infos))


def _resolved_json(config: dict[str, Any], infos: list[SourceInfo]) -> dict[str, Any] | None:
    """A stored config as it resolves for these sources (None if it no longer parses): how checkpoints compare (_same_run).
    ``keep_best`` says what is published, not how training goes, so it is left out."""
    known = {f.name for f in OPTIONS}
    try:
        resolved = resolve(RunConfig.from_json(config), infos).as_json() | {k: v for k, v in config.items() if k not in known}
        return {k: v for k, v in resolved.items() if k != "keep_best"}
    except (TypeError, ValueError):
        return None


def _reporting(on_progress: ProgressFn | None, on_preview: PreviewFn | None, preview_every: int, mods: GanModules) -> ProgressFn | None:
    """The caller's progress callback, with the selector's pi added to every report (several sources) and
    preview grids every ``preview_every`` steps."""
    family = mods if isinstance(mods, MultiGanModules) else None
    if family is not None and on_progress is not None:
        user_progress = on_progress

        def on_progress(phase: str, step: int, total: int, stats: dict[str, float]) -> None:
            user_progress(phase, step, total, {**stats, **{f"pi/{n}": p for n, p in zip(family.member_names, family.pi)}})

    if on_preview is not None and preview_every > 0:
        on_progress = _with_previews(on_progress, on_preview, preview_every, mods)
    return on_progress


def _finish(cfg: RunConfig, run: StagedRun, run_dir: Path, target: torch.Tensor) -> RunResult:
    """Write ``model.pt`` (the transferred model for sampling) and ``run.json`` (the run's summary): the best candidate's
    weights when the run keeps the best (core/keep_best.py), else the last."""
    kept = run.before_checkpoint.restore_best(run) if isinstance(run.before_checkpoint, KeepBest) else None
    model = _current_model(run.mods)
    if _fits_map(cfg) and isinstance(model, MinedGenerator):  # Eq. MK / BAND again, on G(M(u))
        model.colour = _fit_colour(cfg, model.G, model.M, run.mods.z_dim, target)
    model.cpu().eval()
    summary = {"method": cfg.method, "source": run.identity["source"], "steps": cfg.total_steps, "train_seconds": round(run.elapsed, 2),
               "steps_per_s": round(cfg.total_steps / max(run.elapsed, 1e-9), 3), **run.history}
    if kept is not None:
        summary["keep_best"] = kept
    if cfg.critic_init == "fresh":
        summary["critic"] = {"init": "fresh", "augment": cfg.augment, "warmup": cfg.critic_warmup}
    if isinstance(model, MultiMinedGenerator):
        summary["selector_pi"] = dict(zip(model.member_names, model.pi))
    elif model.colour is not None:
        summary["colour_map"] = model.colour.as_json()
    save_model(model, run_dir / "model.pt", {"config": run.identity["config"], **summary})
    (run_dir / "run.json").write_text(json.dumps(summary, indent=2))
    return RunResult(model=model, run_dir=run_dir, summary=summary)


def _current_model(mods: GanModules) -> TransferredModel:
    """A sampling view of the modules being trained (shares their parameters)."""
    G = mods.G_ema if mods.G_ema is not None else mods.G  # the moving average, when the run keeps one (core/adapt.py)
    if isinstance(mods, MultiGanModules):
        assert isinstance(G, nn.ModuleList) and isinstance(mods.M, nn.ModuleList)
        return MultiMinedGenerator(G, mods.M, mods.members, mods.pi, mods.member_names)
    assert isinstance(G, GENERATORS) and (mods.M is None or isinstance(mods.M, (Miner, JointMiner)))
    return MinedGenerator(G, mods.M, mods.colour)


def _fits_map(cfg: RunConfig) -> bool:
    """Whether a (resolved) run fits a colour map after G: colour matching (Eq. MK), band matching (Eq. BAND), or both."""
    return "on" in (cfg.colour_match, cfg.band_match)


def _fit_colour(cfg: RunConfig, G: nn.Module, M: nn.Module | None, z_dim: int, targets: torch.Tensor) -> ColourMap:
    """Eq. MK and / or Eq. BAND (as ``cfg`` says) from G(M(u)) in eval mode (batch-norm statistics stay as they are),
    G and M left as they were."""
    nets = [n for n in (G, M) if n is not None]
    was_training = [n.training for n in nets]
    device = next(G.parameters()).device
    for n in nets:
        n.eval()
    try:
        return fit_colour_map(lambda u: generate(G, M, u.to(device)), z_dim, targets, colour=cfg.colour_match == "on",
                              band=cfg.band_match == "on")
    finally:
        for n, t in zip(nets, was_training):
            n.train(t)


def _with_previews(on_progress: ProgressFn | None, on_preview: PreviewFn, every: int, mods: GanModules) -> ProgressFn:
    def progress(phase: str, step: int, total: int, stats: dict[str, float]) -> None:
        if on_progress is not None:
            on_progress(phase, step, total, stats)
        if phase == "select" or not (step % every == 0 or step == total):
            return
        nets = [m for m in (mods.G, mods.G_ema, mods.M) if m is not None]
        was_training = [m.training for m in nets]
        for m in nets:
            m.eval()  # batch-norm statistics must not move because of a preview
        try:
            with torch.no_grad():
                model = _current_model(mods)
                on_preview(step, lambda n, seed: model.sample(n, seed=seed).cpu())
        finally:
            for m, t in zip(nets, was_training):
                m.train(t)
    return progress


def _fused_source(cfg: RunConfig, sources: list[SourceModel], run_dir: Path, on_progress: ProgressFn | None,
                  should_stop: StopFn | None, device: str, after_checkpoint: Callable[[Path], None] | None) -> SourceModel:
    """G_F of the sources: from ``fused.pt`` when an earlier attempt finished fusing, else trained now."""
    fused_path = run_dir / "fused.pt"
    name = "fused(" + ",".join(s.name for s in sources) + ")"
    if fused_path.exists():
        return load_source_file(fused_path, name)
    return fuse(sources, FusionConfig.of(cfg), run_dir, name=name, on_progress=on_progress, should_stop=should_stop,
                after_checkpoint=after_checkpoint, total_steps=cfg.total_steps, device=device)
