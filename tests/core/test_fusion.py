"""Fusion (Sec. 4.2, Eq. 15-16): balanced pseudo-real batches, per-source prior means, fusion + mining."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.fusion import (
    PAPER_RECIPE,
    FusionConfig,
    FusionModules,
    ProjectionCritic,
    balanced_labels,
    fuse,
    fusion_means,
    pseudo_real,
    sample_source_region,
)
from core.methods import MethodError, RunConfig, train
from core.model_file import load_model
from core.trainer import Stopped
from core.zoo import load_source_file
from tests.conftest import stop_after, tiny_source

# the paper's recipe (Eq. 15-16 alone, constant rates); the tests switch the additions on one at a time
TINY_F = replace(PAPER_RECIPE, steps=3, batch_size=8, n_critic=2, checkpoint_every=1)


def _assert_cut_and_resumed_run_matches(srcs, cfg: FusionConfig, full, run_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Stopping ``cfg``'s fusion after two steps and resuming it gives the G_F of the uninterrupted run ``full``."""
    with pytest.raises(Stopped):
        fuse(srcs, cfg, run_dir, should_stop=stop_after(2))
    resumed = fuse(srcs, cfg, run_dir)
    for x, y in zip(full.G.state_dict().values(), resumed.G.state_dict().values()):
        assert torch.equal(x, y)


def test_balanced_labels_give_every_source_the_same_share() -> None:
    for n, k in [(64, 2), (64, 3), (9, 3)]:
        labels = balanced_labels(n, k, torch.Generator().manual_seed(0))
        counts = torch.bincount(labels, minlength=k)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n


def test_means_are_distinct_and_at_the_given_scale() -> None:
    mu = fusion_means(3, 16, 3.0)
    assert mu.shape == (3, 16)
    assert torch.allclose(mu.norm(dim=1), torch.full((3,), 3.0), atol=1e-5)
    assert torch.allclose(mu @ mu.T, 9.0 * torch.eye(3), atol=1e-4)  # orthogonal: regions far apart


def test_pseudo_real_batch_takes_each_slot_from_its_source() -> None:
    a, b = tiny_source(name="a"), tiny_source(name="b")
    torch.nn.init.constant_(a.G.ups[-1].bias, 5.0)  # a's images saturate at +1
    torch.nn.init.constant_(b.G.ups[-1].bias, -5.0)  # b's at -1
    labels = torch.tensor([0, 1, 1, 0, 1])
    x = pseudo_real([a, b], labels)
    means = x.flatten(1).mean(1)
    assert torch.all(means[labels == 0] > 0.5) and torch.all(means[labels == 1] < -0.5)


def test_projection_critic_starts_as_the_source_critic_and_learns_each_source() -> None:
    src = tiny_source(name="a")
    D = ProjectionCritic(src.D, 2)
    x = torch.randn(6, 1, 28, 28)
    for i in (0, 1):  # e_i = 0 at the start: D_F(x, i) = D(x) for every source
        assert torch.allclose(D(x, torch.full((6,), i)), src.D(x))
    with torch.no_grad():
        D.embed.weight[1] += 0.1
    assert torch.allclose(D(x, torch.zeros(6, dtype=torch.long)), src.D(x))
    assert not torch.allclose(D(x, torch.ones(6, dtype=torch.long)), src.D(x))  # the source index reaches the score


def test_fusion_critic_sees_the_source_of_each_fake() -> None:
    """With the projection critic every fake is scored under the source whose prior region produced it."""
    a = tiny_source(name="a")
    seen: list[torch.Tensor] = []

    class Spy(ProjectionCritic):
        def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            seen.append(c.clone())
            return super().forward(x, c)

    mods = FusionModules(G=a.G, D=Spy(a.D, 2), z_dim=a.G.cfg.z_dim, n_classes=2, means=fusion_means(2, a.G.cfg.z_dim, 3.0))
    labels = torch.tensor([1, 0, 1])
    mods.critic(mods.critic_fakes(3, labels, torch.device("cpu")), labels)
    assert torch.equal(seen[-1], labels)


def test_fuse_trains_writes_a_source_file_and_resumes(tmp_path: Path) -> None:
    srcs = [tiny_source(name="a"), tiny_source(name="b")]
    progress: list[tuple[str, int]] = []
    fused = fuse(srcs, TINY_F, tmp_path / "full", on_progress=lambda ph, s, t, st: progress.append((ph, s)))
    assert progress == [("fuse", 1), ("fuse", 2), ("fuse", 3)]
    assert not any(torch.equal(x, y) for x, y in zip(fused.G.state_dict().values(), srcs[0].G.state_dict().values())
                   if x.dtype.is_floating_point and x.numel() > 1)
    loaded = load_source_file(tmp_path / "full" / "fused.pt")
    assert loaded.meta["fusion"]["sources"] == ["a", "b"] and not loaded.conditional
    assert sample_source_region(loaded, 1, 4).shape == (4, 1, 28, 28)
    with pytest.raises(Stopped):
        fuse(srcs, TINY_F, tmp_path / "cut", should_stop=stop_after(2))
    assert [p.name for p in (tmp_path / "cut").glob("ckpt-*.pt")] == ["ckpt-2.pt"]
    resumed = fuse(srcs, TINY_F, tmp_path / "cut")
    for x, y in zip(fused.G.state_dict().values(), resumed.G.state_dict().values()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("method,mining", [("fusion", "single"), ("fusion++", "single"), ("fusion", "regions"), ("fusion++", "regions")])
def test_fusion_method_fuses_then_mines(method: str, mining: str, target, tmp_path: Path) -> None:
    srcs = [tiny_source(name="a"), tiny_source(name="b")]
    phases: list[tuple[str, int, int]] = []
    stats: list[tuple[str, dict[str, float]]] = []
    cfg = RunConfig(method=method, fusion_steps=2, mining_steps=2, finetune_steps=1, batch_size=8, n_critic=2, checkpoint_every=1,
                    fusion_mining=mining)
    res = train(cfg, srcs, target, tmp_path, on_progress=lambda ph, s, t, st: phases.append((ph, s, t)) or stats.append((ph, st)))
    assert [(p, s) for p, s, _ in phases if p != "select"] == [("fuse", 1), ("fuse", 2), ("mine", 3), ("mine", 4), ("finetune", 5)]
    assert all(t == 5 for _, _, t in phases)
    assert (tmp_path / "fused.pt").exists() and res.model.M is not None
    model, meta = load_model(tmp_path / "model.pt")
    assert meta["source"] == "fused(a,b)" and model.sample(3, seed=1).shape == (3, 1, 28, 28)
    if mining == "single":  # one miner in front of G_F
        assert "selector_pi" not in res.summary
        return
    # mined as the conditional GAN it is: one miner per prior region, the selector's pi over the regions
    assert set(res.summary["selector_pi"]) == {"region:a", "region:b"}
    assert all("pi/region:a" in st and "pi/region:b" in st for ph, st in stats if ph in ("mine", "finetune"))


def test_region_miners_start_in_their_regions_and_single_mining_remains(target, tmp_path: Path) -> None:
    from core.methods import build_modules

    srcs = [tiny_source(name="a"), tiny_source(name="b")]
    fused = fuse(srcs, TINY_F, tmp_path / "f")
    mods = build_modules(RunConfig(method="fusion", fusion_mining="regions"), fused)
    means = torch.tensor(fused.meta["fusion"]["means"])
    u = torch.randn(256, fused.G.cfg.z_dim)
    with torch.no_grad():
        for i, M in enumerate(mods.M):  # type: ignore[arg-type]
            z = M(u)
            assert (z.mean(0) - means[i]).norm() < 0.1 * means[i].norm()  # M_i(u) starts at mu_i
    assert mods.member_names == ["region:a", "region:b"] and mods.members == [(0, -1), (0, -1)]  # type: ignore[attr-defined]
    single = build_modules(RunConfig(method="fusion"), fused)  # the default
    assert not hasattr(single, "members") and single.M is not None
    with pytest.raises(MethodError, match="fusion_mining"):
        RunConfig(method="fusion", fusion_mining="nope").validate()


def test_fusion_needs_several_unconditional_sources(target, tmp_path: Path) -> None:
    with pytest.raises(MethodError, match="two or more"):
        train(RunConfig(method="fusion", fusion_steps=1, mining_steps=1, finetune_steps=0), tiny_source(), target, tmp_path)


def test_plain_fusion_critic_still_runs_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    from dataclasses import replace

    srcs = [tiny_source(name="a"), tiny_source(name="b")]
    fused = fuse(srcs, replace(TINY_F, steps=1, critic="plain"), tmp_path / "plain")
    assert fused.meta["fusion"]["config"]["critic"] == "plain"
    with pytest.raises(ValueError, match="fusion critic"):
        fuse(srcs, replace(TINY_F, critic="nope"), tmp_path / "bad")
    with pytest.raises(MethodError, match="fusion_critic"):
        RunConfig(method="fusion", fusion_critic="nope").validate()


def test_weight_averaged_fusion_keeps_the_average_and_resumes_it(tmp_path: Path) -> None:
    from dataclasses import replace

    from core.adapt import ema_update

    a, b = torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)
    avg, live = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)), torch.nn.Sequential(a, b)
    before = [p.clone() for p in avg.parameters()]
    live[1].running_mean.fill_(3.0)
    ema_update(avg, live, 0.9)
    for p0, pa, pl in zip(before, avg.parameters(), live.parameters()):
        assert torch.allclose(pa, 0.9 * p0 + 0.1 * pl)
    assert torch.equal(avg[1].running_mean, live[1].running_mean)  # statistics are copied, not averaged

    srcs = [tiny_source(name="a"), tiny_source(name="b")]
    cfg = replace(TINY_F, ema=0.5)
    plain = fuse(srcs, TINY_F, tmp_path / "plain")
    averaged = fuse(srcs, cfg, tmp_path / "ema")  # same seed and batches: only the returned weights differ
    assert any(not torch.equal(x, y) for x, y in zip(plain.G.parameters(), averaged.G.parameters()))
    _assert_cut_and_resumed_run_matches(srcs, cfg, averaged, tmp_path / "cut")


def test_distillation_pairs_each_region_with_its_source_on_the_same_noise(tmp_path: Path) -> None:
    from dataclasses import replace

    from core.fusion import paired_term
    from core.trainer import StageConfig, generator_step, make_stage_state

    srcs = [tiny_source(name="a"), tiny_source(name="b")]
    G = type(srcs[0].G)(srcs[0].G.cfg)
    G.load_state_dict(srcs[0].G.state_dict())
    G.eval()  # BatchNorm on running statistics: the same forward in the step and in the check below
    means = fusion_means(2, G.cfg.z_dim, 10.0)
    mods = FusionModules(G=G, D=ProjectionCritic(srcs[0].D, 2), z_dim=G.cfg.z_dim, n_classes=2, means=means)
    st = make_stage_state(mods, StageConfig("fuse", steps=1, train_miner=False, train_generator=True, lr_generator=1e-3))
    for s in srcs:
        s.G.eval()
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    torch.manual_seed(5)
    with torch.no_grad():
        z = torch.randn(6, G.cfg.z_dim)
        want = torch.stack([(G(means[c] + z[k:k + 1]) - srcs[c].G(z[k:k + 1])).abs().mean() for k, c in enumerate(labels.tolist())]).mean()
    torch.manual_seed(5)
    term = paired_term(mods, srcs, 50.0)
    first = generator_step(mods, st, 6, labels, labels.device, extra=term)
    assert abs(first["distill_l1"] - float(want)) < 1e-5  # region c of G_F against G_c, on the same z
    for _ in range(30):
        last = generator_step(mods, st, 6, labels, labels.device, extra=term)
    assert last["distill_l1"] < 0.7 * first["distill_l1"], (first, last)  # the paired term pulls regions to sources

    cfg = replace(TINY_F, distill=5.0)
    plain = fuse(srcs, TINY_F, tmp_path / "plain")
    distilled = fuse(srcs, cfg, tmp_path / "distill")
    assert any(not torch.equal(x, y) for x, y in zip(plain.G.parameters(), distilled.G.parameters()))
    assert distilled.meta["fusion"]["config"]["distill"] == 5.0 and "distill" not in plain.meta["fusion"]["config"]
    _assert_cut_and_resumed_run_matches(srcs, cfg, distilled, tmp_path / "cut")


def test_linear_learning_rate_decay_follows_the_step_and_resumes(tmp_path: Path) -> None:
    from dataclasses import replace

    srcs = [tiny_source(name="a"), tiny_source(name="b")]
    cfg = replace(TINY_F, steps=4, lr_decay=True)
    seen: list[float] = []
    orig = torch.optim.Adam.step

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.Adam, "step", spy)
        decayed = fuse(srcs, cfg, tmp_path / "decay")
    g_lrs = seen[cfg.n_critic::cfg.n_critic + 1]  # each step: n_critic critic updates, then one generator update
    c_lrs = seen[0::cfg.n_critic + 1]
    assert g_lrs == pytest.approx([cfg.lr_generator * f for f in (1.0, 0.75, 0.5, 0.25)])
    assert c_lrs == pytest.approx([cfg.lr_critic * f for f in (1.0, 0.75, 0.5, 0.25)])
    assert decayed.meta["fusion"]["config"]["lr_decay"] is True
    _assert_cut_and_resumed_run_matches(srcs, cfg, decayed, tmp_path / "cut")
