"""Few-shot adaptation (core/adapt.py) and publishing the best candidate (core/keep_best.py): each mechanism changes the
loss or the weights as its equation says, on small cases computed by hand."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from core.adapt import LeCam, cdc_loss, layer_features, r1_penalty, similarity_distribution
from core.keep_best import pixel_mmd
from core.methods import RunConfig, train
from core.model_file import load_model
from core.nets import generate
from core.options import MethodError
from core.trainer import Stopped
from tests.conftest import stop_after, tiny_source

TINY = dict(mining_steps=2, finetune_steps=2, batch_size=8, n_critic=1, checkpoint_every=1, keep_best="off")


def test_similarity_distribution_is_the_softmax_of_cosines_over_the_others() -> None:
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = similarity_distribution(f)
    c = 1 / math.sqrt(2)  # cos between (1, 0) or (0, 1) and (1, 1)
    row0 = torch.softmax(torch.tensor([0.0, c]), 0)  # sample 0 against samples 1 and 2
    row2 = torch.softmax(torch.tensor([c, c]), 0)
    assert torch.allclose(y[0], row0) and torch.allclose(y[2], row2)


def test_cdc_is_zero_for_the_same_structure_and_the_kl_otherwise() -> None:
    f = torch.randn(4, 6)
    assert cdc_loss([f], [2 * f]).abs() < 1e-6  # cosine similarities do not see scale
    g = torch.randn(4, 6)
    ys, yt = similarity_distribution(f), similarity_distribution(g)
    by_hand = (ys * (ys.log() - yt.log())).sum(1).mean()  # Ojha et al. Eq. 3: KL(y^s || y^t), mean over the batch
    assert torch.allclose(cdc_loss([f, f], [g, f]), by_hand / 2, atol=1e-6)  # averaged over layers


def test_layer_features_reads_every_weighted_layer_and_the_image() -> None:
    G = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    feats = layer_features(G, lambda: G(torch.ones(4, 3)))
    assert [tuple(f.shape) for f in feats] == [(4, 5), (4, 2), (4, 2)]


def test_r1_is_half_gamma_times_the_squared_gradient_norm() -> None:
    w = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    critic = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731  # D(x) = <w, x>: grad_x D = w everywhere
    pen = r1_penalty(critic, torch.randn(5, 2, 2), weight=4.0)
    assert torch.allclose(pen, torch.tensor(4.0 / 2 * 14.0))  # ||w||^2 = 1 + 4 + 9


def test_lecam_anchors_each_side_to_the_others_moving_average() -> None:
    lc = LeCam(decay=0.5)
    reg = lc(torch.tensor([2.0, 2.0]), torch.tensor([-1.0, -1.0]))  # first call: the averages start at the means
    assert torch.allclose(reg, torch.tensor((2 - (-1)) ** 2 + (-1 - 2) ** 2.0))
    lc(torch.tensor([4.0]), torch.tensor([1.0]))
    assert torch.allclose(lc.alpha_real, torch.tensor(3.0)) and torch.allclose(lc.alpha_fake, torch.tensor(0.0))


def test_pixel_mmd_is_zero_in_expectation_for_one_set_and_grows_with_a_shift() -> None:
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 16, 16), torch.rand(64, 1, 16, 16)
    assert abs(pixel_mmd(x, y)) < 0.05 < pixel_mmd(x, y + 0.5) < pixel_mmd(x, y + 1.0)


def test_g_ema_publishes_the_moving_average(source, target, tmp_path: Path) -> None:
    plain = train(RunConfig(method="minegan", g_ema=0.0, **TINY), source, target, tmp_path / "plain")
    avg = train(RunConfig(method="minegan", g_ema=0.5, **TINY), source, target, tmp_path / "avg")
    # same seed, same steps: the live G of both runs is the same; the published one of the second is the EMA:
    # after two finetuning steps with decay 0.5 it is 0.25 G_0 + 0.25 G_1 + 0.5 G_2, so it lies between source and G_2
    g0, g2, ga = source.G.state_dict(), plain.model.G.state_dict(), avg.model.G.state_dict()
    moved = [k for k in g0 if g0[k].is_floating_point() and not torch.equal(g0[k], g2[k])]
    assert moved
    for k in moved:
        assert (ga[k] - g2[k]).abs().sum() > 0 and (ga[k] - g0[k]).norm() < (g2[k] - g0[k]).norm()


def test_g_ema_is_exact_for_one_step(source, target, tmp_path: Path) -> None:
    cfg = dict(TINY, finetune_steps=1)
    plain = train(RunConfig(method="minegan", g_ema=0.0, **cfg), source, target, tmp_path / "plain")
    avg = train(RunConfig(method="minegan", g_ema=0.25, **cfg), source, target, tmp_path / "avg")
    for k, v in avg.model.G.state_dict().items():  # Eq. EMA once: 0.25 theta_source + 0.75 theta_1
        assert torch.allclose(v, 0.25 * source.G.state_dict()[k] + 0.75 * plain.model.G.state_dict()[k], atol=1e-6)


def test_cdc_keeps_the_generator_closer_to_the_source_structure(source, target, tmp_path: Path) -> None:
    lr = dict(TINY, finetune_steps=4, lr_generator=1e-2)
    free = train(RunConfig(method="minegan", cdc_weight=0.0, **lr), source, target, tmp_path / "free")
    held = train(RunConfig(method="minegan", cdc_weight=1000.0, **lr), source, target, tmp_path / "cdc")
    u = torch.randn(16, source.G.cfg.z_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = layer_features(source.G.eval(), lambda: generate(source.G, None, u))
        dist = {name: cdc_loss(ref, layer_features(r.model.G.eval(), lambda g=r.model.G: generate(g, None, u))).item()
                for name, r in (("free", free), ("cdc", held))}
    assert dist["cdc"] < dist["free"]
    with pytest.raises(MethodError, match="cdc_weight"):
        train(RunConfig(method="minegan", cdc_weight=1.0, **TINY), [tiny_source(name="a"), tiny_source(name="b")], target,
              tmp_path / "family")


def test_critic_regularisers_enter_the_critic_loss(source, target, tmp_path: Path) -> None:
    stats: dict[str, list[float]] = {"r1": [], "lecam": []}

    def progress(phase: str, step: int, total: int, s: dict[str, float]) -> None:
        for k in stats:
            if k in s:
                stats[k].append(s[k])

    train(RunConfig(method="minegan", r1_weight=10.0, lecam_weight=0.1, **TINY), source, target, tmp_path, on_progress=progress)
    assert len(stats["r1"]) == 4 and all(v > 0 for v in stats["r1"]) and len(stats["lecam"]) == 4


def test_keep_best_publishes_the_mining_checkpoint_when_finetuning_only_gets_worse(source, tmp_path: Path) -> None:
    # the targets are the source's own images, so mining starts where it should end, and a generator learning rate of
    # 0.1 throws G off them in a few steps: every finetuning candidate scores worse
    with torch.no_grad():
        target = source.G(torch.randn(64, source.G.cfg.z_dim, generator=torch.Generator().manual_seed(0)))
    cfg = dict(TINY, finetune_steps=3, lr_generator=0.1, keep_best="on")
    res = train(RunConfig(method="minegan", **cfg), source, target, tmp_path / "best")
    kept = res.summary["keep_best"]
    assert kept["published_step"] == 2 and kept["last_step"] == 5 and set(kept["scores"]) == {"2", "3", "4", "5"}
    assert all(kept["scores"]["2"] < kept["scores"][s] for s in ("3", "4", "5"))
    for k, v in res.model.G.state_dict().items():  # mining leaves G as the source: the published G is the source's
        assert torch.equal(v, source.G.state_dict()[k])
    last = train(RunConfig(method="minegan", **dict(cfg, keep_best="off")), source, target, tmp_path / "last")
    assert "keep_best" not in last.summary
    assert any(not torch.equal(v, source.G.state_dict()[k]) for k, v in last.model.G.state_dict().items())


def test_keep_best_resumes_across_the_selection(source, target, tmp_path: Path) -> None:
    cfg = RunConfig(method="minegan++", **dict(TINY, finetune_steps=3, lr_generator=0.1, keep_best="on", g_ema=0.5))
    full = train(cfg, source, target, tmp_path / "full")
    with pytest.raises(Stopped):
        train(cfg, source, target, tmp_path / "cut", should_stop=stop_after(4))  # stopped after the first finetuning step
    resumed = train(cfg, source, target, tmp_path / "cut")
    assert resumed.summary["keep_best"] == full.summary["keep_best"]
    for x, y in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(x, y)
    model, meta = load_model(tmp_path / "cut" / "model.pt")
    assert meta["keep_best"]["published_step"] == full.summary["keep_best"]["published_step"]
