"""A source without a critic: DiffAugment (core/augment.py), critic_init and the critic warm-up (issue 18)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.augment import diff_augment, parse_policy
from core.methods import RunConfig, build_modules, plan, train
from core.options import (
    ADAPT_AUTO,
    AUTO_WARMUP,
    CRITIC_AUTO,
    FINETUNE_LAYERS_PATCH,
    G_EMA_PATCH,
    LR_MINER_IDENTITY,
    LR_MINER_IDENTITY_PATCH,
    LR_MINER_PAPER,
    MethodError,
    SourceInfo,
    resolve,
)
from core.trainer import Stopped
from core.zoo import SourceModel
from tests.conftest import stop_after, tiny_source

POLICY = "color,translation,cutout"

TINY = dict(mining_steps=2, finetune_steps=1, batch_size=8, n_critic=2, checkpoint_every=1, keep_best="off")  # the last step is published


def _generator_only(name: str = "upload") -> SourceModel:
    src = tiny_source(name=name)
    return SourceModel(name=src.name, G=src.G, D=src.D, meta={"critic": "fresh"})  # as zoo.source_from_state_dicts marks it


def test_policies_are_differentiable_and_change_images_per_sample() -> None:
    x = torch.linspace(-1, 1, 4 * 3 * 16 * 16).view(4, 3, 16, 16).requires_grad_(True)
    for policy in ("color", "translation", "cutout", POLICY):
        torch.manual_seed(0)
        y = diff_augment(policy)(x)  # type: ignore[misc]
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert not torch.equal(y, x)
        (g,) = torch.autograd.grad(y.sum(), x)
        assert g.abs().sum() > 0  # gradients reach the images (and so G and M)
    torch.manual_seed(1)
    cut = diff_augment("cutout")(torch.ones(8, 1, 16, 16))  # type: ignore[misc]
    zeros = (cut == 0).flatten(1).sum(1)
    assert (zeros > 0).all() and (zeros <= 64).all()  # at most an 8x8 square each
    torch.manual_seed(2)
    img = torch.zeros(16, 1, 16, 16)
    img[:, :, 8, 8] = 1.0
    moved = diff_augment("translation")(img)  # type: ignore[misc]
    assert (moved.flatten(1).sum(1) <= 1).all() and (moved[:, :, 8, 8] != 1).any()  # the dot moves (or leaves), never copies
    assert diff_augment("") is None and parse_policy(" color , cutout ") == ["color", "cutout"]
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        parse_policy("color,flip")
    with pytest.raises(MethodError, match="augment"):
        RunConfig(augment="flip").validate()


def test_auto_follows_the_source_critic() -> None:
    info = SourceInfo("s", 8, 28, 1, False)
    assert resolve(RunConfig(), [info]) == RunConfig(critic_init="source", critic_warmup=0, miner_init="paper", colour_match="off",
                                                     band_match="off", lr_miner=4e-4, keep_best="off", n_critic=5, lr_critic=1e-4,
                                                     finetune_n_critic=5, finetune_lr_critic=1e-4, critic_patch=0, finetune_layers=0,
                                                     **ADAPT_AUTO["source"])
    no_critic = resolve(RunConfig(), [SourceInfo("s", 8, 28, 1, False, has_critic=False)])
    assert (no_critic.critic_init, no_critic.critic_warmup, no_critic.miner_init) == ("fresh", AUTO_WARMUP["generator-only"], "identity")
    assert (no_critic.keep_best, no_critic.g_ema) == ("on", ADAPT_AUTO["generator-only"]["g_ema"])  # a generator-only upload
    assert (no_critic.n_critic, no_critic.lr_critic) == CRITIC_AUTO["generator-only"] == (10, 4e-4)  # the stronger critic
    assert (no_critic.finetune_n_critic, no_critic.finetune_lr_critic) == (10, 4e-4)  # also while G finetunes
    asked = resolve(RunConfig(n_critic=3, finetune_lr_critic=2e-3), [SourceInfo("s", 8, 28, 1, False, has_critic=False)])
    assert (asked.n_critic, asked.lr_critic, asked.finetune_n_critic, asked.finetune_lr_critic) == (3, 4e-4, 3, 2e-3)  # what is set stays
    assert (resolve(RunConfig(n_critic=3, lr_critic=2e-4), [info]).finetune_n_critic,
            resolve(RunConfig(n_critic=3, lr_critic=2e-4), [info]).finetune_lr_critic) == (3, 2e-4)  # with its critic: the mining one's
    forced = resolve(RunConfig(critic_init="fresh", augment=POLICY, critic_warmup=3), [info])
    # a zoo source keeps Appendix A's miner when its critic is replaced (the MNIST measurement of options.resolve)
    assert (forced.critic_init, forced.augment, forced.critic_warmup, forced.miner_init) == ("fresh", POLICY, 3, "paper")
    assert (forced.keep_best, forced.g_ema) == ("on", 0.0)  # a zoo source's fresh critic: the best candidate, no G_ema
    replaced = resolve(RunConfig(critic_init="fresh"), [info])  # its own critic replaced: the longer warm-up
    assert replaced.critic_warmup == AUTO_WARMUP["source"] > AUTO_WARMUP["generator-only"]
    assert _generator_only().info.has_critic is False and tiny_source().info.has_critic is True


def test_fresh_critic_ignores_the_source_critic() -> None:
    src = tiny_source()
    kept = build_modules(RunConfig(method="minegan"), src)
    fresh = build_modules(RunConfig(method="minegan", critic_init="fresh"), src)
    assert all(torch.equal(a, b) for a, b in zip(kept.D.state_dict().values(), src.D.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(fresh.D.state_dict().values(), src.D.state_dict().values()))


def test_warm_up_trains_the_critic_alone_first(target: torch.Tensor, tmp_path: Path) -> None:
    src = _generator_only()
    cfg = RunConfig(method="minegan++", critic_warmup=3, augment=POLICY, **TINY)  # critic_init: auto
    assert [s.name for s in plan(resolve(cfg, [src.info]))] == ["warmup", "mine", "finetune"]
    seen: list[tuple[str, int, int]] = []
    res = train(cfg, src, target, tmp_path / "full", on_progress=lambda ph, s, t, st: seen.append((ph, s, t)))
    steps = [(ph, s) for ph, s, _ in seen if ph != "select"]
    assert steps == [("warmup", 1), ("warmup", 2), ("warmup", 3), ("mine", 4), ("mine", 5), ("finetune", 6)]
    assert all(t == 6 for _, _, t in seen) and res.summary["steps"] == 6
    assert res.summary["critic"] == {"init": "fresh", "augment": POLICY, "warmup": 3}
    with pytest.raises(Stopped):  # cut inside the warm-up, resumed: the same model
        train(cfg, src, target, tmp_path / "cut", should_stop=stop_after(2))
    resumed = train(cfg, src, target, tmp_path / "cut")
    for a, b in zip(res.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_warm_up_leaves_generator_and_miner_alone(target: torch.Tensor, tmp_path: Path) -> None:
    src = tiny_source()
    cfg = RunConfig(method="minegan", critic_init="fresh", augment="color", critic_warmup=2, **TINY)
    only_warmup = []
    train(cfg, src, target, tmp_path, on_progress=lambda ph, s, t, st: only_warmup.append(st) if ph == "warmup" else None)
    assert only_warmup and all("g_loss" not in st and "d_loss" in st for st in only_warmup)


@pytest.mark.parametrize("method", ["minegan++", "transfergan"])
def test_finetune_layers_trains_only_the_last_weighted_layers_of_the_generator(method: str, target: torch.Tensor, tmp_path: Path) -> None:
    from core.nets.layers import WEIGHTED
    from core.trainer import generator_params

    src = tiny_source()
    before = {k: v.clone() for k, v in src.G.state_dict().items()}
    res = train(RunConfig(method=method, finetune_layers=1, **TINY), src, target, tmp_path)
    after = res.model.G.state_dict()
    learning = {id(p) for p in generator_params(src.G, 1)}
    names = {n for n, p in src.G.named_parameters() if id(p) in learning}
    last = [m for m in src.G.modules() if isinstance(m, WEIGHTED)][-1]  # the layer that makes the image
    assert names == {n for n, p in src.G.named_parameters() if any(p is q for q in last.parameters())} and names
    for name, value in before.items():
        if name in names:
            assert not torch.equal(after[name], value), name  # the image layer learned
        elif "running" not in name and "num_batches" not in name:
            assert torch.equal(after[name], value), name  # every other weight stayed the source's
    assert len(generator_params(src.G, 0)) == len(list(src.G.parameters()))
    assert len(generator_params(src.G, 99)) == len(list(src.G.parameters()))  # more layers than it has: all


def test_the_miners_learning_rate_follows_where_it_starts() -> None:
    """lr_miner 0 (auto): Appendix A's 4e-4 for Appendix A's miner, 1e-4 for the identity miner of a generator-only upload."""
    zoo_src, upload = SourceInfo("z", 8, 28, 1, False), SourceInfo("u", 8, 28, 3, False, has_critic=False)
    assert RunConfig().lr_miner == 0
    assert resolve(RunConfig(), [zoo_src]).lr_miner == LR_MINER_PAPER == 4e-4
    assert resolve(RunConfig(), [upload]).lr_miner == LR_MINER_IDENTITY == 1e-4
    assert resolve(RunConfig(miner_init="paper"), [upload]).lr_miner == LR_MINER_PAPER
    assert resolve(RunConfig(lr_miner=1e-3), [upload]).lr_miner == 1e-3  # a rate given is kept
    mining = [s for s in plan(RunConfig(miner_init="identity")) if s.train_miner]
    assert mining and all(s.lr_miner == LR_MINER_IDENTITY for s in mining)  # plan() on an unresolved config too


def test_a_generator_only_uploads_stages_get_the_stronger_critic_and_a_source_with_its_critic_appendix_as() -> None:
    from core.methods import plan

    run = resolve(RunConfig(method="minegan++"), [SourceInfo("s", 8, 28, 1, False, has_critic=False)])
    stages = {s.name: (s.n_critic, s.lr_critic) for s in plan(run)}
    assert stages == {"warmup": (10, 4e-4), "mine": (10, 4e-4), "finetune": (10, 4e-4)}
    own = resolve(RunConfig(method="minegan++", finetune_n_critic=20), [SourceInfo("s", 8, 28, 1, False, has_critic=False)])
    assert {s.name: (s.n_critic, s.lr_critic) for s in plan(own)}["finetune"] == (20, 4e-4)
    with_critic = {s.name: (s.n_critic, s.lr_critic) for s in plan(resolve(RunConfig(method="minegan++"), [SourceInfo("s", 8, 28, 1, False)]))}
    assert with_critic == {"mine": (5, 1e-4), "finetune": (5, 1e-4)}  # the paper's recipe
    assert {s.name: (s.n_critic, s.lr_critic) for s in plan(RunConfig(method="minegan++"))} == with_critic  # unresolved: Appendix A's
    with pytest.raises(MethodError, match="n_critic"):
        RunConfig(n_critic=0).validate()


def test_a_patch_critic_scores_the_mean_of_its_patch_map_by_hand() -> None:
    """Eq. PATCH on a 32px critic stopped at its 8 x 8 map: every position scored by the 1x1 head, the image's score their
    mean; each score depends on its patch alone (a change in one corner leaves the far corner's score as it was)."""
    from core.nets import Critic, CriticConfig

    torch.manual_seed(0)
    D = Critic(CriticConfig(img_size=32, channels=3, width=4, patch=8))
    assert [m.stride for m in D.convs if isinstance(m, torch.nn.Conv2d)] == [(2, 2), (2, 2)]  # 32 -> 16 -> 8, then the head
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        phi = D.convs(x)  # [2, 8, 8, 8]
        w, b = D.fc.weight.view(-1), float(D.fc.bias)  # type: ignore[union-attr]
        by_hand = [sum(float((phi[n, :, i, j] * w).sum()) + b for i in range(8) for j in range(8)) / 64 for n in range(2)]
        assert torch.allclose(D(x), torch.tensor(by_hand), atol=1e-5)
    y = x.clone()
    y[:, :, :8, :8] += 1.0  # the top-left corner only
    scores = lambda v: D.fc(D.convs(v))[:, 0].detach()  # noqa: E731  [2, 8, 8]
    assert torch.equal(scores(x)[:, -1, -1], scores(y)[:, -1, -1]) and not torch.equal(scores(x)[:, 0, 0], scores(y)[:, 0, 0])
    with pytest.raises(ValueError, match="one of 16, 8, 4"):
        Critic(CriticConfig(img_size=32, channels=3, width=4, patch=5))


def test_critic_patch_builds_a_fresh_patch_critic_and_is_refused_for_a_pretrained_one(target: torch.Tensor, tmp_path: Path) -> None:
    src = _generator_only()
    cfg = RunConfig(method="minegan++", critic_patch=7, critic_warmup=1, **TINY)
    D = build_modules(resolve(cfg, [src.info]), src).D
    assert D.cfg.patch == 7 and isinstance(D.fc, torch.nn.Conv2d)  # type: ignore[union-attr]
    res = train(cfg, src, target, tmp_path / "run")
    assert res.summary["steps"] == 4
    with pytest.raises(MethodError, match="needs a fresh critic"):
        resolve(RunConfig(method="minegan++", critic_patch=7), [tiny_source().info])  # ships its critic: auto keeps it
    with pytest.raises(MethodError, match="one of 14, 7, 4"):
        resolve(RunConfig(method="minegan++", critic_patch=8), [src.info])


def test_critic_patch_auto_gives_a_generator_only_64px_upload_a_patch_critic_and_a_slower_miner() -> None:
    """critic_patch -1 (auto): 8 (PATCH_AUTO) and the miner at LR_MINER_IDENTITY_PATCH for minegan and minegan++ on a
    generator-only 64px upload; whole images (0) for every other method, size or a source that ships its critic."""
    upload64, zoo64 = SourceInfo("u", 100, 64, 3, False, has_critic=False), SourceInfo("z", 100, 64, 3, False)
    assert RunConfig().critic_patch == -1
    for method in ("minegan", "minegan++"):
        run = resolve(RunConfig(method=method), [upload64])
        assert (run.critic_patch, run.lr_miner) == (8, LR_MINER_IDENTITY_PATCH) == (8, 3e-5)
    for method in ("mine", "transfergan"):
        assert resolve(RunConfig(method=method), [upload64]).critic_patch == 0
    assert resolve(RunConfig(method="mine"), [upload64]).lr_miner == LR_MINER_IDENTITY
    assert resolve(RunConfig(), [SourceInfo("u", 8, 28, 3, False, has_critic=False)]).critic_patch == 0  # no size measured
    assert resolve(RunConfig(critic_init="fresh"), [zoo64]).critic_patch == 0  # a source's critic replaced: the paper's
    assert resolve(RunConfig(), [zoo64]).critic_patch == 0
    assert resolve(RunConfig(), [upload64, SourceInfo("v", 100, 64, 3, False, has_critic=False)]).critic_patch == 0  # a family
    off = resolve(RunConfig(critic_patch=0), [upload64])
    assert (off.critic_patch, off.lr_miner) == (0, LR_MINER_IDENTITY)  # 0 is whole images, set or stored
    assert resolve(RunConfig(critic_patch=8, lr_miner=1e-4), [upload64]).lr_miner == 1e-4  # a rate given is kept
    assert resolve(RunConfig(critic_patch=16), [upload64]).critic_patch == 16


def test_finetune_layers_auto_keeps_gs_early_layers_beside_a_patch_critic_only() -> None:
    """finetune_layers -1 (auto): FINETUNE_LAYERS_PATCH (3) wherever the critic scores patches, all layers (0) otherwise;
    a value set is kept."""
    upload64, zoo64 = SourceInfo("u", 100, 64, 3, False, has_critic=False), SourceInfo("z", 100, 64, 3, False)
    assert RunConfig().finetune_layers == -1
    for method in ("minegan", "minegan++"):
        assert resolve(RunConfig(method=method), [upload64]).finetune_layers == FINETUNE_LAYERS_PATCH == 3
    assert resolve(RunConfig(method="transfergan"), [upload64]).finetune_layers == 0  # whole images: every layer learns
    assert resolve(RunConfig(critic_patch=0), [upload64]).finetune_layers == 0
    assert resolve(RunConfig(), [zoo64]).finetune_layers == 0
    assert resolve(RunConfig(critic_init="fresh", critic_patch=8), [zoo64]).finetune_layers == 3  # a patch critic asked for
    assert resolve(RunConfig(finetune_layers=0), [upload64]).finetune_layers == 0
    assert resolve(RunConfig(finetune_layers=2), [upload64]).finetune_layers == 2


def test_g_ema_auto_is_shorter_beside_a_patch_critic_only() -> None:
    """g_ema -1 (auto): G_EMA_PATCH (0.9925) wherever the critic scores patches, ADAPT_AUTO's value otherwise; a value
    set is kept."""
    upload64, zoo64 = SourceInfo("u", 100, 64, 3, False, has_critic=False), SourceInfo("z", 100, 64, 3, False)
    assert G_EMA_PATCH == 0.9925 < ADAPT_AUTO["generator-only"]["g_ema"] == 0.995
    for method in ("minegan", "minegan++"):
        assert resolve(RunConfig(method=method), [upload64]).g_ema == G_EMA_PATCH
    assert resolve(RunConfig(method="transfergan"), [upload64]).g_ema == 0.995  # whole images: the generator-only average
    assert resolve(RunConfig(critic_patch=0), [upload64]).g_ema == 0.995
    assert resolve(RunConfig(), [SourceInfo("u", 100, 28, 1, False, has_critic=False)]).g_ema == 0.995  # no patch critic at 28 px
    assert resolve(RunConfig(), [zoo64]).g_ema == 0.0  # a source with its critic: the paper's recipe
    assert resolve(RunConfig(critic_init="fresh", critic_patch=8), [zoo64]).g_ema == G_EMA_PATCH  # a patch critic asked for
    assert resolve(RunConfig(g_ema=0.0), [upload64]).g_ema == 0.0
    assert resolve(RunConfig(g_ema=0.999), [upload64]).g_ema == 0.999
