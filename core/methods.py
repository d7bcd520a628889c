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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import checkpoints
from core.baselines import finetune_all_stage
from core.finetune import finetune_stage
from core.fusion import FUSION_CRITICS, FusionConfig, fuse
from core.mining import MinedGenerator, mining_stage
from core.multi import SELECTION_RULES, MultiGanModules, MultiMinedGenerator, unconditional_critic
from core.nets import GENERATORS, Critic, JointMiner, JointMinerConfig, Miner, MinerConfig
from core.sparse import SparseConfig, select_subnetwork, trainable_fraction
from core.trainer import GanModules, ProgressFn, StageConfig, StageState, StopFn, make_stage_state, run_stage
from core.zoo import SourceModel, load_source_file

log = logging.getLogger(__name__)

METHODS = ("mine", "minegan", "minegan++", "scratch", "transfergan", "transfergan++", "freezed", "fusion", "fusion++")
FUSION_METHODS = ("fusion", "fusion++")
FUSION_MINING = ("regions", "single")
MINING_METHODS = ("mine", "minegan", "minegan++", *FUSION_METHODS)
MODEL_FORMAT = "minegan-model/1"
TransferredModel = MinedGenerator | MultiMinedGenerator
RUN_FORMAT = "minegan-run/1"


class MethodError(ValueError):
    """An unknown method or an option that does not fit the method/source."""


@dataclass(frozen=True)
class RunConfig:
    method: str = "minegan++"
    mining_steps: int = 200
    finetune_steps: int = 100
    batch_size: int = 64
    n_critic: int = 5
    seed: int = 0
    # Appendix A, MNIST: miner of two FC layers of |z|, N(0, 0.01) init, Adam 4e-4, betas (0.5, 0.999).
    miner_layers: int = 2
    miner_hidden: int = 0  # 0: |z|
    miner_init_std: float = 0.01
    lr_miner: float = 4e-4
    lr_generator: float = 1e-4
    lr_critic: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    gp_weight: float = 10.0
    sparse_top_fraction: float = 0.3  # theta_w (Sec. 5)
    sparse_min_weights: int = 6  # theta_f (Sec. 5)
    freeze_critic_layers: int = 2  # FreezeD
    checkpoint_every: int = 50
    selection: str = "permuted"  # several sources: Eq. 9-10 ("permuted") or Eq. 5-6 ("max")
    critic_source: int = 0  # several sources: whose pretrained critic initialises the single critic D
    fusion_steps: int = 1600  # fusion / fusion++: steps training G_F before mining it (Eq. 15-16; docs/multi_gan_notes.md)
    fusion_mean_scale: float = 10.0  # fusion: |mu_i|, distance of each source's prior mean from the origin (docs/multi_gan_notes.md)
    fusion_critic: str = "projection"  # fusion: critic told the source, D(x) + e_i^T phi(x); "plain": D(x)
    fusion_mining: str = "single"  # fusion: one miner in front of G_F, or one per prior region + selector ("regions")
    # Fusion's training of G_F beyond Eq. 15-16 (docs/multi_gan_notes.md; 0 / 1e-4 / False is the paper's recipe):
    fusion_distill: float = 30.0  # weight of the paired term mean|G_F(mu_i + z) - G_i(z)| added to Eq. 16
    fusion_lr_generator: float = 5e-4  # G_F's learning rate while fusing (the critic keeps lr_critic)
    fusion_lr_decay: bool = True  # both fusion learning rates fall linearly to 0 over fusion_steps

    @property
    def total_steps(self) -> int:
        return self.pre_steps + self.mining_steps + self.finetune_steps

    @property
    def pre_steps(self) -> int:
        """Steps before mining starts: the fusion of the sources for fusion methods, else none."""
        return self.fusion_steps if self.method in FUSION_METHODS else 0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise MethodError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.mining_steps < 0 or self.finetune_steps < 0 or self.mining_steps + self.finetune_steps < 1:
            raise MethodError("mining_steps and finetune_steps must be >= 0 with a positive total")
        if self.method in FUSION_METHODS and self.fusion_steps < 1:
            raise MethodError("fusion_steps must be positive for fusion methods")
        if self.batch_size < 1 or self.n_critic < 1 or self.miner_layers < 1:
            raise MethodError("batch_size, n_critic and miner_layers must be positive")
        if self.selection not in SELECTION_RULES:
            raise MethodError(f"selection must be one of {', '.join(SELECTION_RULES)}")
        if self.fusion_critic not in FUSION_CRITICS:
            raise MethodError(f"fusion_critic must be one of {', '.join(FUSION_CRITICS)}")
        if self.fusion_mining not in FUSION_MINING:
            raise MethodError(f"fusion_mining must be one of {', '.join(FUSION_MINING)}")
        if self.fusion_distill < 0 or self.fusion_lr_generator <= 0:
            raise MethodError("fusion_distill must be >= 0 and fusion_lr_generator positive")


def plan(cfg: RunConfig) -> list[StageConfig]:
    """The stages a method runs (see the table in the module docstring)."""
    cfg.validate()
    opts: dict[str, Any] = dict(n_critic=cfg.n_critic, batch_size=cfg.batch_size, lr_miner=cfg.lr_miner, lr_generator=cfg.lr_generator,
                lr_critic=cfg.lr_critic, betas=tuple(cfg.betas), gp_weight=cfg.gp_weight)
    m, f = cfg.mining_steps, cfg.finetune_steps
    total = m + f
    stages: dict[str, list[StageConfig]] = {
        "mine": [mining_stage(total, **opts)],
        "minegan": [mining_stage(m, **opts), finetune_stage(f, **opts)],
        "minegan++": [mining_stage(m, sparse=True, **opts), finetune_stage(f, sparse=True, **opts)],
        "scratch": [finetune_all_stage(total, **opts)],
        "transfergan": [finetune_all_stage(total, **opts)],
        "transfergan++": [finetune_all_stage(total, sparse=True, **opts)],
        "freezed": [finetune_all_stage(total, freeze_critic_layers=cfg.freeze_critic_layers, **opts)],
        "fusion": [mining_stage(m, **opts), finetune_stage(f, **opts)],  # after fuse(), on G_F
        "fusion++": [mining_stage(m, sparse=True, **opts), finetune_stage(f, sparse=True, **opts)],
    }
    return [s for s in stages[cfg.method] if s.steps > 0]


def _as_list(source: SourceModel | list[SourceModel]) -> list[SourceModel]:
    return list(source) if isinstance(source, (list, tuple)) else [source]


def is_family(sources: list[SourceModel]) -> bool:
    """Several sources, or one one-hot conditional source: multi-GAN mining with a selector (Sec. 3.3,
    supp. A). A source conditioned through a class embedding is mined with M^z and M^c instead (Sec. 4.1)."""
    return len(sources) > 1 or (sources[0].conditional and not sources[0].G.cfg.embed_dim)


def _new_miner(cfg: RunConfig, z: int) -> Miner:
    return Miner(MinerConfig(z_dim=z, hidden=cfg.miner_hidden or z, layers=cfg.miner_layers, init_std=cfg.miner_init_std))


def build_modules(cfg: RunConfig, source: SourceModel | list[SourceModel]) -> GanModules:
    """Fresh copies of the source nets (random init for ``scratch``) plus a miner for mining methods;
    for a family (several sources or a conditional one) one miner per member and one critic."""
    sources = _as_list(source)
    if not sources:
        raise MethodError("at least one source model is needed")
    if cfg.method in FUSION_METHODS and len(sources) > 1:
        raise MethodError("fusion methods mine the fused generator: call fuse() first (train() does)")
    if is_family(sources):
        return _build_family(cfg, sources)
    if cfg.method in FUSION_METHODS and cfg.fusion_mining == "regions" and "fusion" in sources[0].meta:
        return _build_region_family(cfg, sources[0])
    source = sources[0]
    G = type(source.G)(source.G.cfg)  # type: ignore[arg-type]
    D = Critic(source.D.cfg)
    if cfg.method != "scratch":
        G.load_state_dict(source.G.state_dict())
        D.load_state_dict(source.D.state_dict())
    z = source.G.cfg.z_dim
    if source.conditional:  # embedding-conditioned G (Sec. 4.1): miners M^z and M^c, critic without labels
        if cfg.method not in MINING_METHODS:
            raise MethodError(f"{source.name} is conditional; {cfg.method} needs an unconditional source (use a mining method)")
        M: nn.Module = JointMiner(JointMinerConfig(z_dim=z, hidden=cfg.miner_hidden or z, layers=cfg.miner_layers,
                                                   init_std=cfg.miner_init_std, embed_dim=source.G.cfg.embed_dim))
        return GanModules(G=G, D=unconditional_critic(D), M=M, z_dim=z)
    return GanModules(G=G, D=D, M=_new_miner(cfg, z) if cfg.method in MINING_METHODS else None, z_dim=z)


def _build_family(cfg: RunConfig, sources: list[SourceModel]) -> MultiGanModules:
    what = "a conditional source" if len(sources) == 1 else "several sources"
    if cfg.method not in MINING_METHODS:
        raise MethodError(f"{cfg.method} uses one unconditional source; {what} need a mining method ({', '.join(MINING_METHODS)})")
    if cfg.method in FUSION_METHODS and any(s.conditional for s in sources):
        raise MethodError("fusion takes unconditional sources")
    g0 = sources[0].G.cfg
    for s in sources[1:]:
        if (s.G.cfg.z_dim, s.G.cfg.img_size, s.G.cfg.channels) != (g0.z_dim, g0.img_size, g0.channels):
            raise MethodError(f"sources must share |z|, resolution and channels; {s.name} differs from {sources[0].name}")
    if not 0 <= cfg.critic_source < len(sources):
        raise MethodError(f"critic_source must index one of the {len(sources)} sources")
    Gs, members, names = nn.ModuleList(), [], []
    for gi, s in enumerate(sources):
        G = type(s.G)(s.G.cfg)  # type: ignore[arg-type]
        G.load_state_dict(s.G.state_dict())
        Gs.append(G)
        if s.conditional:  # supplement Sec. A: the family {G(i, z)} of one one-hot conditional generator
            members += [(gi, c) for c in range(s.G.cfg.n_classes)]
            names += [f"{s.name}:{c}" for c in range(s.G.cfg.n_classes)]
        else:
            members.append((gi, -1))
            names.append(s.name)
    crit = sources[cfg.critic_source].D
    D = Critic(crit.cfg)
    D.load_state_dict(crit.state_dict())
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
    G = type(fused.G)(fused.G.cfg)  # type: ignore[arg-type]
    G.load_state_dict(fused.G.state_dict())
    D = Critic(fused.D.cfg)
    D.load_state_dict(fused.D.state_dict())
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


def _latest_checkpoint(run_dir: Path, after: int = 0) -> Path | None:
    """The newest run checkpoint; ``after``: ignore ckpt-{step} with step <= after (fusion's own checkpoints)."""
    found = sorted((p for p in run_dir.glob("ckpt-*.pt") if int(p.stem.split("-")[1]) > after), key=lambda p: int(p.stem.split("-")[1]))
    return found[-1] if found else None


class _Run:
    """State of one run between checkpoints (modules, current stage, optimisers, RNG)."""

    def __init__(self, cfg: RunConfig, sources: list[SourceModel], target: torch.Tensor, run_dir: Path) -> None:
        self.cfg, self.target, self.run_dir = cfg, target, run_dir
        self.offset = cfg.pre_steps  # fusion's steps come first; checkpoints and progress count on from there
        self.source_name = ",".join(s.name for s in sources)
        self.stages = plan(cfg)
        torch.manual_seed(cfg.seed)
        self.mods = build_modules(cfg, sources)
        self.data_rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.stage_idx = 0
        self.state: StageState | None = None
        self.elapsed = 0.0
        self.history: dict[str, Any] = {"stages": []}

    @property
    def global_step(self) -> int:
        done = sum(s.steps for s in self.stages[: self.stage_idx])
        return self.offset + done + (self.state.step if self.state else 0)

    def checkpoint(self) -> Path:
        st = self.state
        obj = {
            "format": RUN_FORMAT, "config": _jsonable(asdict(self.cfg)), "source": self.source_name,
            "stage_idx": self.stage_idx, "stage_step": st.step if st else 0, "elapsed": self.elapsed,
            "G": self.mods.G.state_dict(), "D": self.mods.D.state_dict(),
            "M": self.mods.M.state_dict() if self.mods.M is not None else {},
            "opt_d": st.opt_d.state_dict() if st else {}, "opt_g": st.opt_g.state_dict() if st and st.opt_g else {},
            "masks": st.masks if st else {}, "rng": torch.get_rng_state(), "data_rng": self.data_rng.get_state(),
            "history": json.dumps(self.history),
            "selector": json.dumps(self.mods.selector.state()) if isinstance(self.mods, MultiGanModules) and self.mods.selector else "",
        }
        path = self.run_dir / f"ckpt-{self.global_step}.pt"
        checkpoints.save(obj, path)
        for old in self.run_dir.glob("ckpt-*.pt"):  # keep only the newest
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def restore(self, path: Path) -> None:
        obj = checkpoints.load(path)
        # options added in later versions take their defaults, so an upgrade does not orphan running jobs
        saved = {**_jsonable(asdict(RunConfig())), **dict(obj.get("config") or {})}
        if obj.get("format") != RUN_FORMAT or saved != _jsonable(asdict(self.cfg)) or obj.get("source") != self.source_name:
            raise MethodError(f"{path} belongs to a different run configuration; use a fresh run directory")
        self.mods.G.load_state_dict(obj["G"])
        self.mods.D.load_state_dict(obj["D"])
        if self.mods.M is not None:
            self.mods.M.load_state_dict(obj["M"])
        self.stage_idx, self.elapsed = int(obj["stage_idx"]), float(obj["elapsed"])
        self.history = json.loads(obj["history"])
        if isinstance(self.mods, MultiGanModules) and self.mods.selector and obj.get("selector"):
            self.mods.selector.load(json.loads(obj["selector"]))
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


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _sparse_batches(target: torch.Tensor, batch: int, n: int, gen: torch.Generator) -> list[tuple[torch.Tensor, None]]:
    return [(target[torch.randint(0, target.shape[0], (batch,), generator=gen)], None) for _ in range(n)]


def train(
    cfg: RunConfig,
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
    resumable via ``run_dir``.

    ``after_checkpoint(path)`` is called after each checkpoint is written (the worker uploads it).
    ``on_preview(step, sample)`` is called every ``preview_every`` mining/finetuning steps (and at the last
    one) with ``sample(n, seed) -> images`` drawing from the model as it is at that step (eval mode, no grad;
    the training RNG is not touched, so previews do not change the run)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sources = _as_list(source)
    g = sources[0].G.cfg
    if tuple(target.shape[1:]) != (g.channels, g.img_size, g.img_size):
        raise MethodError(f"target images {tuple(target.shape[1:])} do not match the source's output shape")
    cfg.validate()
    if cfg.method in FUSION_METHODS:  # Sec. 4.2: fuse the sources into G_F first, then mine G_F
        sources = [_fused_source(cfg, sources, run_dir, on_progress, should_stop, device, after_checkpoint)]
    run = _Run(cfg, sources, target, run_dir)
    latest = _latest_checkpoint(run_dir, after=cfg.pre_steps)
    if latest is not None:
        run.restore(latest)
    mods = run.mods
    for m in (mods.G, mods.D, mods.M):
        if m is not None:
            m.to(device)
    family = mods if isinstance(mods, MultiGanModules) else None
    if family is not None and on_progress is not None:  # the selector's pi goes out with every progress report
        user_progress = on_progress

        def on_progress(phase: str, step: int, total: int, stats: dict[str, float]) -> None:
            user_progress(phase, step, total, {**stats, **{f"pi/{n}": p for n, p in zip(family.member_names, family.pi)}})

    if on_preview is not None and preview_every > 0:
        on_progress = _with_previews(on_progress, on_preview, preview_every, mods, family)
    images = target.to(device)
    sparse_cfg = SparseConfig(cfg.sparse_top_fraction, cfg.sparse_min_weights)
    t_mark = [time.perf_counter()]

    def save() -> None:
        now = time.perf_counter()
        run.elapsed += now - t_mark[0]  # training time only, summed over resumed attempts
        t_mark[0] = now
        path = run.checkpoint()
        if after_checkpoint is not None:
            after_checkpoint(path)

    while run.stage_idx < len(run.stages):
        stage = run.stages[run.stage_idx]
        if run.state is None:  # a fresh stage: new optimisers; S^3 selects the critic filters now
            masks: dict[str, torch.Tensor] = {}
            if stage.sparse:
                masks = select_subnetwork(mods.D, _sparse_batches(images, cfg.batch_size, sparse_cfg.n_batches, run.data_rng), sparse_cfg)
                frac = trainable_fraction(masks)
                run.history["stages"].append({"stage": stage.name, "s3_trainable_fraction": frac})
                if on_progress:
                    on_progress("select", run.global_step, cfg.total_steps, {"s3_trainable_fraction": frac})
            run.state = make_stage_state(mods, stage, masks)
        run_stage(mods, run.state, stage, images, None, step_offset=run.global_step - run.state.step,
                  total_steps=cfg.total_steps, on_progress=on_progress, should_stop=should_stop,
                  on_checkpoint=save, checkpoint_every=cfg.checkpoint_every, rng=run.data_rng)
        run.stage_idx += 1
        run.state = None
        save()
    model: TransferredModel
    if family is not None:
        assert isinstance(family.G, nn.ModuleList) and isinstance(family.M, nn.ModuleList)
        model = MultiMinedGenerator(family.G.cpu().eval(), family.M.cpu().eval(), family.members, family.pi, family.member_names)
    else:
        assert isinstance(mods.G, GENERATORS) and (mods.M is None or isinstance(mods.M, (Miner, JointMiner)))
        model = MinedGenerator(mods.G.cpu().eval(), mods.M.cpu().eval() if mods.M is not None else None)
    summary = {"method": cfg.method, "source": run.source_name, "steps": cfg.total_steps, "train_seconds": round(run.elapsed, 2),
               "steps_per_s": round(cfg.total_steps / max(run.elapsed, 1e-9), 3), **run.history}
    if family is not None:
        summary["selector_pi"] = dict(zip(family.member_names, family.pi))
    save_model(model, run_dir / "model.pt", {"config": _jsonable(asdict(cfg)), **summary})
    (run_dir / "run.json").write_text(json.dumps(summary, indent=2))
    return RunResult(model=model, run_dir=run_dir, summary=summary)


PreviewFn = Callable[[int, Callable[[int, int], torch.Tensor]], None]


def _current_model(mods: GanModules, family: MultiGanModules | None) -> TransferredModel:
    """A sampling view of the modules being trained (shares their parameters)."""
    if family is not None:
        assert isinstance(family.G, nn.ModuleList) and isinstance(family.M, nn.ModuleList)
        return MultiMinedGenerator(family.G, family.M, family.members, family.pi, family.member_names)
    assert isinstance(mods.G, GENERATORS)
    return MinedGenerator(mods.G, mods.M)  # type: ignore[arg-type]


def _with_previews(on_progress: ProgressFn | None, on_preview: PreviewFn, every: int, mods: GanModules,
                   family: MultiGanModules | None) -> ProgressFn:
    def progress(phase: str, step: int, total: int, stats: dict[str, float]) -> None:
        if on_progress is not None:
            on_progress(phase, step, total, stats)
        if phase == "select" or not (step % every == 0 or step == total):
            return
        nets = [m for m in (mods.G, mods.M) if m is not None]
        was_training = [m.training for m in nets]
        for m in nets:
            m.eval()  # batch-norm statistics must not move because of a preview
        try:
            with torch.no_grad():
                model = _current_model(mods, family)
                on_preview(step, lambda n, seed: model.sample(n, seed=seed).cpu())
        finally:
            for m, t in zip(nets, was_training):
                m.train(t)
    return progress


def _fused_source(cfg: RunConfig, sources: list[SourceModel], run_dir: Path, on_progress: ProgressFn | None,
                  should_stop: StopFn | None, device: str, after_checkpoint: Callable[[Path], None] | None) -> SourceModel:
    if len(sources) < 2:
        raise MethodError("fusion needs at least two sources")
    if any(s.conditional for s in sources):
        raise MethodError("fusion takes unconditional sources")
    fused_path = run_dir / "fused.pt"
    name = "fused(" + ",".join(s.name for s in sources) + ")"
    if fused_path.exists():  # fusion finished in an earlier attempt
        return load_source_file(fused_path, name)
    fcfg = FusionConfig(steps=cfg.fusion_steps, batch_size=cfg.batch_size, n_critic=cfg.n_critic, lr_generator=cfg.fusion_lr_generator,
                        lr_critic=cfg.lr_critic, betas=tuple(cfg.betas), gp_weight=cfg.gp_weight,  # type: ignore[arg-type]
                        mean_scale=cfg.fusion_mean_scale, critic=cfg.fusion_critic, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every,
                        distill=cfg.fusion_distill, lr_decay=cfg.fusion_lr_decay)
    try:
        return fuse(sources, fcfg, run_dir, name=name, on_progress=on_progress, should_stop=should_stop,
                    after_checkpoint=after_checkpoint, total_steps=cfg.total_steps, device=device)
    except ValueError as exc:
        raise MethodError(str(exc)) from exc


def save_model(model: TransferredModel, path: Path, meta: dict[str, Any]) -> Path:
    obj: dict[str, Any] = {"format": MODEL_FORMAT, "meta": json.dumps(meta)}
    if isinstance(model, MultiMinedGenerator):
        obj |= {"generators": [checkpoints.pack_module("generator", g) for g in model.G],
                "miners": [checkpoints.pack_module("miner", m) for m in model.M],
                "family": json.dumps({"members": model.members, "pi": model.pi, "names": model.member_names})}
    else:
        kind = "joint-miner" if isinstance(model.M, JointMiner) else "miner"
        obj |= {"generator": checkpoints.pack_module("generator", model.G),
                "miner": checkpoints.pack_module(kind, model.M) if model.M is not None else {}}
    return checkpoints.save(obj, path)


def load_model(path: str | Path | bytes) -> tuple[TransferredModel, dict[str, Any]]:
    """The transferred generator(s) and miner(s) of a finished run, from ``model.pt`` (weights only)."""
    obj = checkpoints.load(path)
    if obj.get("format") != MODEL_FORMAT:
        raise checkpoints.CheckpointError("not a MineGAN model file")
    meta = json.loads(obj["meta"])
    if "family" in obj:
        fam = json.loads(obj["family"])
        Gs = nn.ModuleList(checkpoints.unpack_module(g) for g in obj["generators"])
        Ms = nn.ModuleList(checkpoints.unpack_module(m) for m in obj["miners"])
        return MultiMinedGenerator(Gs.eval(), Ms.eval(), fam["members"], fam["pi"], fam["names"]), meta
    G = checkpoints.unpack_module(obj["generator"])
    M = checkpoints.unpack_module(obj["miner"]) if obj.get("miner") else None
    assert isinstance(G, GENERATORS) and (M is None or isinstance(M, (Miner, JointMiner)))
    return MinedGenerator(G.eval(), M.eval() if M is not None else None), meta


def with_overrides(cfg: RunConfig, **kw: Any) -> RunConfig:
    return replace(cfg, **{k: v for k, v in kw.items() if v is not None})

