"""Every option of a run, declared once, and the rules for which sources fit which method.

Each :class:`RunConfig` field carries its help text, bounds, choices and where it is exposed (field
metadata, via :func:`option`). The HTTP API's ``JobSpec`` / ``MethodOptions`` schemas, the CLI flags, the
recipe stored with a job (``spec.options``) and the fusion stage's :class:`core.fusion.FusionConfig` are all
derived from this table, so adding an option is one line here.

``api``: ``"spec"`` (a top-level field of the job spec), ``"options"`` (in ``spec.options``) or ``None``
(not settable through the service). ``methods``: the methods the option applies to; the stored recipe of a
job keeps only those.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import Field, asdict, dataclass, field, fields, replace
from typing import Any

METHODS = ("mine", "minegan", "minegan++", "scratch", "transfergan", "transfergan++", "freezed", "fusion", "fusion++")
FUSION_METHODS = ("fusion", "fusion++")
MINING_METHODS = ("mine", "minegan", "minegan++", *FUSION_METHODS)
FINETUNE_METHODS = tuple(m for m in METHODS if m != "mine")  # the methods whose generator learns
# band matching's auto (Eq. BAND): the methods it was measured to help on the faces DCGAN, over job seeds where it
# mattered (docs/faces.md: mine, KID 0.0519 -> 0.0464; minegan++ and minegan, seed 0, 0.0657 -> 0.0634 and 0.0672 ->
# 0.0659). transfergan got worse with it (0.0637 -> 0.0693 over seeds 0-2), freezed no better (0.0558 -> 0.0568); fusion
# was not measured.
BAND_METHODS = ("mine", "minegan", "minegan++")
SELECTION_RULES = ("permuted", "max")
FUSION_CRITICS = ("projection", "plain")
FUSION_MINING = ("regions", "single")
CRITIC_INITS = ("auto", "source", "fresh")
MINER_INITS = ("auto", "paper", "identity")
COLOUR_MATCH = ("auto", "on", "off")
# The warm-up "auto" gives a critic that starts fresh, by the source (docs/benchmarks.md, sections "fresh_critic_minegan++"
# and "fresh_critic_defaults_minegan++", benchmarks/fresh_critic.py): on mnist-no-9 -> 9 a fresh critic without a warm-up
# left 18.6 % of the samples off-target and 50 steps 8.2 %; 100 steps, the default where a source's own critic is replaced,
# left fewer (the medians over job seeds are in the second section). A generator-only upload keeps the 50 steps its
# faces measurements (docs/faces.md) were made with.
AUTO_WARMUP: dict[str, int] = {"source": 100, "generator-only": 50}
# The few-shot adaptation options' auto (core/adapt.py), by the source: one that ships its critic runs the paper's recipe
# unchanged, also when its critic is replaced by a fresh one (on mnist-no-9 -> 9 with a fresh critic, g_ema 0.995 raised
# the classifier error from 8.2 % to 11.5 %); a generator-only upload gets what docs/faces.md's screen chose.
ADAPT_AUTO: dict[str, dict[str, float]] = {
    "source": {"g_ema": 0.0, "cdc_weight": 0.0, "r1_weight": 0.0, "lecam_weight": 0.0},
    "generator-only": {"g_ema": 0.995, "cdc_weight": 0.0, "r1_weight": 0.0, "lecam_weight": 0.0},
}


# The critic's updates per step and learning rate (n_critic, lr_critic), by the source: one that ships its critic runs
# Appendix A's 5 updates at 1e-4 (Adam); a critic that starts fresh on a generator-only upload gets a stronger one, in
# every stage. On the faces DCGAN a stronger critic while G finetunes took KID from 0.0457 to 0.0420 (100 finetuning steps
# from one end-of-mining checkpoint: 10 updates at 4e-4; docs/faces.md, "A stronger critic while finetuning"), and the
# same critic from the warm-up on, in whole jobs, from 0.0419 to 0.0385 with 62 % faces found against 58 % (docs/faces.md,
# "The critic from the start", seed 0; 1.5x the job time). The finetuning critic (finetune_n_critic, finetune_lr_critic)
# follows the run's unless set.
CRITIC_AUTO: dict[str, tuple[int, float]] = {"source": (5, 1e-4), "generator-only": (10, 4e-4)}
MINE_THEN_FINETUNE = ("minegan", "minegan++", *FUSION_METHODS)  # the methods that finetune after mining (Sec. 3.4.1)


class MethodError(ValueError):
    """An unknown method or an option that does not fit the method/source."""

    status, code = 422, "bad_spec"


LR_MINER_PAPER = 4e-4  # Appendix A (MNIST): Adam 4e-4
# A miner that starts at the identity against a critic that starts fresh: smaller steps than Appendix A's (docs/faces.md:
# on the faces DCGAN, 4e-4 moved the miner away from the source's prior while the fresh critic's gradients were noise, KID
# 0.0615 against 0.0519 at 4e-5 over three seeds). Beside CRITIC_AUTO's stronger critic the rate is where KID and the
# face rate trade ("Finetuning at the service's defaults", three job seeds each: 4e-5 KID 0.0372 with 59.5 % faces found
# against the source's 64 %, 1e-4 KID 0.0415 with 65.6 %, the source's own rate); 1e-4 keeps the faces.
LR_MINER_IDENTITY = 1e-4
# Beside a patch critic (critic_patch, Eq. PATCH) the identity miner at 1e-4 concentrates on the source's clearest faces
# and pays in KID (0.0508 with 79 % faces found on seed 0); at 3e-5 it keeps the whole-image critic's KID with more
# faces (docs/faces.md, "A patch critic and a slower miner, three seeds": 0.0416, 69.6 %).
LR_MINER_IDENTITY_PATCH = 3e-5
# critic_patch auto, by image size: one generator-only upload (unconditional) mined and finetuned (PATCH_METHODS) gets a
# patch critic where one was measured (the faces DCGAN, 64 px: docs/faces.md); every other run scores whole images (0).
PATCH_AUTO: dict[int, int] = {64: 8}
PATCH_METHODS = ("minegan", "minegan++")
# finetune_layers auto: beside a patch critic only the last 3 weighted layers of G learn (FreezeG: G's first layers fixed): the
# patch critic does not judge the layout the early layers draw. On the faces DCGAN, against every layer learning, over the
# same three job seeds: KID 0.0383, 0.0401, 0.0406 (median 0.0401) against 0.0405, 0.0427, 0.0416 (0.0416), faces found
# 66.2 % against 69.6 % (the source: 65.6 %), FID 85.4 against 84.8 (docs/faces.md, under the defaults' table). Without a
# patch critic every layer learns (0): the fresh whole-image critic asks for a new layout, which the last layers alone
# can only paint over (KID 0.1078 with 2 layers; "The finetuning mechanisms, one at a time").
FINETUNE_LAYERS_PATCH = 3
# g_ema auto beside a patch critic (Eq. EMA): a shorter average than ADAPT_AUTO's generator-only 0.995, so the published
# G keeps more of what the last FINETUNE_LAYERS_PATCH layers learned. On the faces DCGAN, over the same three job seeds:
# KID 0.0370, 0.0361, 0.0363 (median 0.0363) against 0.0383, 0.0401, 0.0406 (0.0401) at 0.995, FID 83.7 against 85.4,
# faces found 66.0 % against 66.2 % (the source: 65.6 %) (docs/faces.md, the defaults' table and "Around FreezeG").
# 0.99 lowers KID further and, on seed 0, the face rate below the source's (63.0 %).
G_EMA_PATCH = 0.9925


def miner_lr(cfg: RunConfig) -> float:
    """``cfg.lr_miner``, or for 0 (auto) the rate for ``cfg.miner_init`` (resolved, or paper for auto) and the critic."""
    if cfg.lr_miner:
        return cfg.lr_miner
    if cfg.miner_init != "identity":
        return LR_MINER_PAPER
    return LR_MINER_IDENTITY_PATCH if cfg.critic_patch > 0 else LR_MINER_IDENTITY


def option(default: Any, help: str = "", *, ge: float | None = None, gt: float | None = None, le: float | None = None,
           choices: tuple[str, ...] | None = None, api: str | None = "options", cli: bool = True,
           methods: tuple[str, ...] = METHODS) -> Any:
    """A RunConfig field with the metadata the API schema and the CLI are generated from."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "choices": choices, "api": api, "cli": cli, "methods": methods}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    method: str = option("minegan++", f"one of {', '.join(METHODS)}", choices=METHODS, api="spec")
    mining_steps: int = option(200, "steps of the mining stage", ge=0, le=100_000, api="spec")
    finetune_steps: int = option(100, "steps of the finetuning stage (mine: added to mining)", ge=0, le=100_000, api="spec")
    batch_size: int = option(64, "images per minibatch (at most the number of target images)", ge=1, le=1024, api="spec")
    n_critic: int = option(-1, "critic updates per generator/miner update; -1 (auto): 5 (Appendix A) for a source that ships "
                           "its critic, CRITIC_AUTO's for a generator-only upload", ge=-1, le=20)
    seed: int = option(0, "seed of initialisation and minibatches", ge=0, le=2**31 - 1, api="spec")
    # Appendix A, MNIST: miner of two FC layers of |z|, N(0, 0.01) init, Adam 4e-4, betas (0.5, 0.999).
    miner_layers: int = option(2, "fully connected layers of the miner (Appendix A: 2)", ge=1, le=8)
    miner_hidden: int = option(0, "miner width; 0: |z| (Appendix A)", ge=0, le=4096)
    miner_init_std: float = option(0.01, "std of the miner's initial weights (Appendix A: N(0, 0.01))", api=None)
    miner_init: str = option("auto", "where the miner starts: paper (Appendix A's M(u) = MLP(u), whose N(0, 0.01) weights start it "
                             "collapsed near z = 0), identity (M(u) = u + MLP(u): at the source's own prior), or auto: paper when "
                             "the critic's source ships a critic, identity for a generator-only upload", choices=MINER_INITS)
    lr_miner: float = option(0.0, f"Adam learning rate of the miner; 0 (auto): {LR_MINER_PAPER:g} for Appendix A's miner (Appendix A), "
                             f"{LR_MINER_IDENTITY:g} for a miner that starts at the identity", ge=0, le=0.1)
    lr_generator: float = option(1e-4, "Adam learning rate of the generator", gt=0, le=0.1)
    lr_critic: float = option(0.0, "Adam learning rate of the critic; 0 (auto): 1e-4 (Appendix A) for a source that ships its "
                              "critic, CRITIC_AUTO's for a generator-only upload", ge=0, le=0.1)
    betas: tuple[float, float] = option((0.5, 0.999), "Adam betas (Appendix A)", api=None, cli=False)
    gp_weight: float = option(10.0, "weight of the WGAN-GP gradient penalty", api=None)
    sparse_top_fraction: float = option(0.3, "S^3: share of the critic weights kept by their score, theta_w (Sec. 5)", gt=0, le=1)
    sparse_min_weights: int = option(6, "S^3: minimum filters kept per layer, theta_f (Sec. 5)", ge=1, le=100_000)
    freeze_critic_layers: int = option(2, "freezed: lowest critic layers kept fixed (FreezeD)", ge=0, le=8)
    finetune_layers: int = option(-1, "weighted generator layers that learn when G is finetuned, counted back from the output "
                                  "(1: only the layer that makes the image; the rest stay fixed, as FreezeG does); 0: all. -1 "
                                  "(auto): 3 beside a patch critic (FINETUNE_LAYERS_PATCH), else all", ge=-1, le=64)
    checkpoint_every: int = option(50, "steps between checkpoints (a run resumes from its newest)", api=None)
    selection: str = option("permuted", "several sources: improved permuted training (Eq. 9-10, default) or the original max rule "
                            "(Eq. 5-6)", choices=SELECTION_RULES)
    critic_source: int = option(0, "several sources: index of the source whose critic initialises D", ge=0, le=7)
    critic_init: str = option("auto", "where the critic starts: the source's pretrained critic (source), random weights (fresh; "
                              "what a generator-only upload has), or auto: source when the source ships a critic, else fresh",
                              choices=CRITIC_INITS)
    critic_patch: int = option(-1, "a fresh critic that scores patches (Eq. PATCH, core/nets/gan.py): k > 0 averages the scores of "
                               "a k x k map of patches (8 for 64px images: each sees 29 px), so it cannot judge the whole image's "
                               "layout; 0: one score per image. Needs a fresh critic. -1 (auto): 8 for minegan and minegan++ on a "
                               "generator-only upload of 64px images (PATCH_AUTO), else 0", ge=-1, le=512)
    augment: str = option("", "DiffAugment policy on every critic input: a comma-separated list of color, translation, cutout "
                          "(e.g. color,translation,cutout); '' for none")
    colour_match: str = option("auto", "a closed-form colour transfer after the generator (core/colour.py), fitted to the targets' "
                               "colour mean and covariance before training and again at the end: on, off, or auto: on for colour "
                               "images from a single unconditional generator", choices=COLOUR_MATCH)
    band_match: str = option("auto", "a band limit after the generator (core/colour.py, Eq. BAND): a resample to the size whose "
                             "power spectrum is closest to the targets' and back, fitted with the colour map: on, off, or auto: "
                             f"on where colour matching is, for {', '.join(BAND_METHODS)}; off for the methods without a miner, "
                             "where it measured no better (docs/faces.md)", choices=COLOUR_MATCH)
    # few-shot adaptation (core/adapt.py); -1 (auto): ADAPT_AUTO's value for the source (with or without its critic)
    g_ema: float = option(-1.0, "decay of an exponential moving average of G's weights while G learns (Eq. EMA, StyleGAN's G_ema), "
                          "published as the generator; 0: off; -1 (auto): see ADAPT_AUTO, and G_EMA_PATCH beside a patch critic",
                          ge=-1, le=0.9999, methods=FINETUNE_METHODS)
    cdc_weight: float = option(-1.0, "weight of the cross-domain correspondence term (CDC, Ojha et al. 2021, Eq. 3-4) that keeps "
                               "the pairwise similarities of a batch as the source G drew it; 0: off; -1 (auto)", ge=-1, le=10_000,
                               methods=FINETUNE_METHODS)
    r1_weight: float = option(-1.0, "gamma of the R1 penalty on the critic's gradient at the real images (Mescheder et al. 2018, "
                              "Eq. 9); 0: off; -1 (auto)", ge=-1, le=10_000)
    lecam_weight: float = option(-1.0, "weight of the LeCam regulariser of the critic (Tseng et al. 2021, Eq. 3); 0: off; -1 (auto)",
                                 ge=-1, le=10_000)
    finetune_n_critic: int = option(-1, "critic updates per generator/miner update while finetuning after mining; -1 (auto): "
                                    "n_critic", ge=-1, le=20,
                                    methods=MINE_THEN_FINETUNE)
    finetune_lr_critic: float = option(-1.0, "the critic's Adam learning rate while finetuning after mining; -1 (auto): lr_critic",
                                       ge=-1, le=0.1, methods=MINE_THEN_FINETUNE)
    keep_best: str = option("auto", "publish the best of the end of mining and each finetuning checkpoint by a pixel-space kernel "
                            "statistic against the targets (core/keep_best.py, Eq. PMMD) instead of the last: on, off (the last), or "
                            "auto: on where the critic starts fresh, off with the source's critic (the paper's recipe)",
                            choices=COLOUR_MATCH, methods=FINETUNE_METHODS)
    critic_warmup: int = option(-1, "steps training the critic alone (n_critic updates each) before the first miner/generator "
                                f"update; -1 (auto): when the critic starts fresh {AUTO_WARMUP['source']} for a source whose critic is replaced, "
                                f"{AUTO_WARMUP['generator-only']} for a generator-only upload; 0 otherwise", ge=-1, le=100_000)
    fusion_steps: int = option(1600, "fusion, fusion++: steps training the fused G_F before mining it (Eq. 15-16)", ge=1, le=100_000,
                               methods=FUSION_METHODS)
    fusion_mean_scale: float = option(10.0, "fusion: |mu_i|, distance of each source's prior mean from the origin", gt=0, le=100,
                                      methods=FUSION_METHODS)
    fusion_mining: str = option("single", "fusion: a single miner in front of G_F (single), or one miner per source region with the "
                                "selector (regions)", choices=FUSION_MINING, methods=FUSION_METHODS)
    fusion_critic: str = option("projection", "fusion: critic told each image's source by projection, D(x) + e_i^T phi(x) "
                                "(projection), or the plain unconditional critic (plain)", choices=FUSION_CRITICS, methods=FUSION_METHODS)
    # Fusion's training of G_F beyond Eq. 15-16 (docs/benchmarks.md, "Several GANs"; 0 / 1e-4 / False is the paper's recipe):
    fusion_distill: float = option(30.0, "fusion: weight of the paired term mean|G_F(mu_i + z) - G_i(z)| added to Eq. 16 "
                                   "(0: adversarial only, as in the paper)", ge=0, le=1000, methods=FUSION_METHODS)
    fusion_lr_generator: float = option(5e-4, "fusion: G_F's learning rate while fusing (the critic keeps lr_critic)", gt=0, le=0.1,
                                        methods=FUSION_METHODS)
    fusion_lr_decay: bool = option(True, "fusion: both learning rates fall linearly to 0 over fusion_steps", methods=FUSION_METHODS)

    @property
    def total_steps(self) -> int:
        """Every step of the run: fusion's, the critic warm-up (once resolved: see :func:`resolve`), mining, finetuning."""
        return self.pre_steps + max(self.critic_warmup, 0) + self.mining_steps + self.finetune_steps

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
        if self.batch_size < 1 or self.n_critic == 0 or self.miner_layers < 1:
            raise MethodError("batch_size and miner_layers must be positive, n_critic positive or -1 (auto)")
        for f in OPTIONS:
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise MethodError(f"{f.name} must be one of {', '.join(choices)}")
        if self.fusion_distill < 0 or self.fusion_lr_generator <= 0:
            raise MethodError("fusion_distill must be >= 0 and fusion_lr_generator positive")
        from core.augment import parse_policy

        try:
            parse_policy(self.augment)
        except ValueError as exc:
            raise MethodError(f"augment: {exc}") from exc

    def as_json(self) -> dict[str, Any]:
        """The config as JSON values (tuples as lists): what checkpoints and model files record."""
        return jsonable(asdict(self))

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RunConfig:
        """The config of :meth:`as_json`'s values (lists back to tuples); keys that are no option are left out. Raises
        ``TypeError`` for a value of the wrong shape."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in obj.items() if k in known}
        return cls(**values)


OPTIONS: tuple[Field[Any], ...] = fields(RunConfig)
OPTION_TYPES: dict[str, Any] = typing.get_type_hints(RunConfig)
DEFAULTS = RunConfig()


def jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def api_options(where: str) -> list[Field[Any]]:
    """The options exposed in the job spec (``"spec"``) or in its ``options`` object (``"options"``)."""
    return [f for f in OPTIONS if f.metadata["api"] == where]


def config_from_spec(spec: Mapping[str, Any], **settings: Any) -> RunConfig:
    """The RunConfig of a job spec (a dict: its top-level fields and its ``options``; options left unset or None
    take the defaults). ``settings``: what the service sets itself, such as ``checkpoint_every``."""
    given = {k: v for k, v in (spec.get("options") or {}).items() if v is not None}
    return RunConfig(**{f.name: spec[f.name] for f in api_options("spec") if f.name in spec}, **given, **settings)


def resolved_options(cfg: RunConfig) -> dict[str, Any]:
    """Every ``spec.options`` option that applies to ``cfg.method``, as the run will use it: the user's values
    with this version's defaults filled in (stored with a job, so a later default cannot change it)."""
    return {f.name: getattr(cfg, f.name) for f in api_options("options") if cfg.method in f.metadata["methods"]}


# --- which sources fit which method --------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceInfo:
    """What the rules need to know of a source model (from a loaded model or from the registry's listing)."""

    name: str
    z_dim: int
    img_size: int
    channels: int
    conditional: bool
    has_critic: bool = True  # False: a generator-only upload (its critic would start fresh)
    class_embedding: bool = False  # conditioned through a learned class embedding (mined with M^z and M^c, Sec. 4.1)

    @classmethod
    def of_listing(cls, m: Mapping[str, Any]) -> SourceInfo:
        """From an entry of the source listing (``GET /models``, store/sources.py)."""
        return cls(m["id"], m["z_dim"], m["resolution"], m["channels"], m["conditional"], m.get("critic", True))


def check_sources(cfg: RunConfig, sources: list[SourceInfo]) -> None:
    """Raise :class:`MethodError` (its message names the spec field) if ``sources`` do not suit ``cfg``.

    One conditional source or several sources form a family that only mining methods take; fusion takes two
    or more unconditional sources; several sources must share |z| and image shape."""
    if not sources:
        raise MethodError("sources: at least one source model is needed")
    ids = [s.name for s in sources]
    if len(set(ids)) != len(ids):
        raise MethodError("sources: each source at most once")
    if len({(s.z_dim, s.img_size, s.channels) for s in sources}) > 1:
        raise MethodError(f"sources: {ids} differ in resolution, channels or |z|; sources must share them")
    if cfg.method in FUSION_METHODS:
        if len(sources) < 2 or any(s.conditional for s in sources):
            raise MethodError(f"sources: {cfg.method} fuses two or more unconditional sources")
    elif (len(sources) > 1 or sources[0].conditional) and cfg.method not in MINING_METHODS:
        what = "several sources" if len(sources) > 1 else f"{ids[0]} is conditional and"
        raise MethodError(f"method: {cfg.method} takes one unconditional source; {what} need a mining method "
                          f"({', '.join(m for m in MINING_METHODS if m not in FUSION_METHODS)})")
    if cfg.critic_source >= len(sources):
        raise MethodError(f"options.critic_source: {cfg.critic_source} is not the index of one of the {len(sources)} sources")
    for name in ("colour_match", "band_match"):
        if getattr(cfg, name) == "on" and not _one_unconditional(cfg, sources):
            raise MethodError(f"options.{name}: on applies to a single unconditional generator (fusion with fusion_mining "
                              "single included), not to a family of several sources or classes")


def is_family(cfg: RunConfig, sources: list[SourceInfo]) -> bool:
    """Whether the run mines a family, one miner per member, with a selector (Sec. 3.3, supp. A): several sources, or one
    source conditioned by a one-hot class; for fusion methods, the fused generator's regions (``fusion_mining`` regions).
    A source conditioned through a class embedding is one generator, mined with M^z and M^c (Sec. 4.1)."""
    if cfg.method in FUSION_METHODS:
        return cfg.fusion_mining == "regions"
    return len(sources) > 1 or (sources[0].conditional and not sources[0].class_embedding)


def _one_unconditional(cfg: RunConfig, sources: list[SourceInfo]) -> bool:
    """One unconditional generator: what the colour and band maps (Eq. MK, BAND) are fitted to."""
    return not is_family(cfg, sources) and (cfg.method in FUSION_METHODS or not sources[0].conditional)


@dataclass(frozen=True)
class PreparedRun:
    """A run checked against its sources, with every "auto" setting made concrete (:func:`prepare`): what the API stores
    with a job (``run``, the concrete config), what the worker and ``minegan train`` hand to ``core.methods.train``,
    which runs it without checking it again."""

    asked: RunConfig  # as given: identifies the run's checkpoints, so a later change of an "auto" rule still resumes them
    run: RunConfig  # concrete: what trains

    @property
    def total_steps(self) -> int:
        return self.run.total_steps


def prepare(cfg: RunConfig, sources: list[SourceInfo]) -> PreparedRun:
    """The one place a run is checked and made concrete: ``cfg`` validated, the sources checked against the method
    (:func:`check_sources`) and every "auto" setting resolved for them (:func:`resolve`). Raises :class:`MethodError`
    naming the spec field. The API calls it when a job is submitted and stores the result with the job (the 422 it
    answers, the step count); ``minegan train`` calls it before it trains; ``core.methods.train`` calls it only for a
    plain :class:`RunConfig` (a library caller's)."""
    cfg.validate()
    check_sources(cfg, sources)
    return PreparedRun(cfg, resolve(cfg, sources))


def critic_rate(cfg: RunConfig, kind: str = "source") -> tuple[int, float]:
    """``cfg.n_critic`` and ``cfg.lr_critic``, each of them that is auto from ``CRITIC_AUTO[kind]`` (``kind``: "source"
    or "generator-only"; an unresolved config gets Appendix A's)."""
    n, lr = CRITIC_AUTO[kind]
    return (cfg.n_critic if cfg.n_critic > 0 else n, cfg.lr_critic if cfg.lr_critic > 0 else lr)


def resolve(cfg: RunConfig, sources: list[SourceInfo]) -> RunConfig:
    """``cfg`` with its "auto" settings made concrete for these sources: the critic starts fresh when asked to, or
    when the critic's source ships none (a generator-only upload), and a fresh critic gets a warm-up; one from a
    pretrained critic gets none, as in the paper. A generator-only upload's miner starts at the identity: Appendix A's
    miner starts collapsed near z = 0 and, against a fresh critic on the faces DCGAN, stayed collapsed (docs/faces.md);
    a zoo source keeps it, also with ``critic_init`` fresh (it reached 8.2 % error on mnist-no-9 -> 9 there, the
    identity 13.6 %). Colour matching is on for colour images from one unconditional generator (not for ``scratch``,
    whose generator has no colours to start from); band matching, when auto, goes with it for the methods in
    ``BAND_METHODS``. ``critic_patch``, when auto, gives minegan and minegan++ on one generator-only upload a patch
    critic where ``PATCH_AUTO`` has one for the image size, and beside a patch critic only ``FINETUNE_LAYERS_PATCH`` of G's
    layers learn and ``g_ema`` is ``G_EMA_PATCH``. The miner's learning rate, when auto, follows where the
    miner starts and the critic (``miner_lr``). The critic's updates per step and learning rate, when auto, are
    ``CRITIC_AUTO``'s for the source; while G finetunes after mining it keeps them unless ``finetune_n_critic`` or
    ``finetune_lr_critic`` is set."""
    critic_from = sources[cfg.critic_source] if cfg.critic_source < len(sources) else sources[0]
    fresh = cfg.critic_init == "fresh" or (cfg.critic_init == "auto" and not critic_from.has_critic)
    patch = cfg.critic_patch
    if patch < 0:
        measured = fresh and not critic_from.has_critic and cfg.method in PATCH_METHODS and _one_unconditional(cfg, sources)
        patch = PATCH_AUTO.get(critic_from.img_size, 0) if measured else 0
    elif patch:
        from core.nets.gan import patch_sizes

        if not fresh:
            raise MethodError("critic_patch needs a fresh critic (critic_init fresh, or a generator-only source): a "
                              "pretrained critic scores whole images")
        if cfg.critic_patch not in patch_sizes(critic_from.img_size):
            raise MethodError(f"critic_patch for {critic_from.img_size}px images is one of "
                              f"{', '.join(map(str, patch_sizes(critic_from.img_size)))} (the sizes of the critic's feature maps)")
    miner_init = cfg.miner_init if cfg.miner_init != "auto" else ("paper" if critic_from.has_critic else "identity")
    colour = cfg.colour_match
    if colour == "auto":
        colour = "on" if sources[0].channels > 1 and cfg.method != "scratch" and _one_unconditional(cfg, sources) else "off"
    band = cfg.band_match
    if band == "auto":
        band = colour if cfg.method in BAND_METHODS and _one_unconditional(cfg, sources) else "off"
    kind = "source" if critic_from.has_critic else "generator-only"
    auto = ADAPT_AUTO[kind]
    adapt: dict[str, Any] = {k: v if getattr(cfg, k) < 0 else getattr(cfg, k) for k, v in auto.items()}
    if patch and cfg.g_ema < 0:
        adapt["g_ema"] = G_EMA_PATCH
    keep = cfg.keep_best if cfg.keep_best != "auto" else ("on" if fresh else "off")
    n_critic, lr_critic = critic_rate(cfg, kind)
    finetune_critic: dict[str, Any] = {"finetune_n_critic": cfg.finetune_n_critic if cfg.finetune_n_critic > 0 else n_critic,
                                       "finetune_lr_critic": cfg.finetune_lr_critic if cfg.finetune_lr_critic > 0 else lr_critic}
    return replace(cfg, critic_init="fresh" if fresh else "source", miner_init=miner_init, colour_match=colour, band_match=band, **adapt,
                   keep_best=keep, n_critic=n_critic, lr_critic=lr_critic, **finetune_critic,
                   critic_patch=patch, finetune_layers=cfg.finetune_layers if cfg.finetune_layers >= 0 else (FINETUNE_LAYERS_PATCH if patch else 0),
                   lr_miner=miner_lr(replace(cfg, miner_init=miner_init, critic_patch=patch)),
                   critic_warmup=(AUTO_WARMUP[kind] if fresh else 0) if cfg.critic_warmup < 0 else cfg.critic_warmup)


SOURCE_DEPENDENT = ("critic_init", "critic_warmup", "critic_patch", "finetune_layers", "miner_init", "lr_miner", "colour_match", "band_match",
                    "g_ema", "cdc_weight", "r1_weight", "lecam_weight", "n_critic", "lr_critic", "finetune_n_critic", "finetune_lr_critic",
                    "keep_best")


def source_defaults(info: SourceInfo) -> dict[str, Any]:
    """What a job on this source runs when it sets nothing (the default method, every "auto" resolved): the options whose
    default depends on the source (``GET /models`` shows them)."""
    cfg = resolve(DEFAULTS, [info])
    return {"method": cfg.method, **{k: getattr(cfg, k) for k in SOURCE_DEPENDENT}}
