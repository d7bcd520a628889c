"""Multi-GAN mining (Sec. 3.3): selector statistics, the permutation of Eq. 9-10, conditional families."""

from pathlib import Path

import pytest
import torch
from torch import nn

from core.methods import MethodError, RunConfig, build_modules, train
from core.model_file import load_model
from core.multi import MultiGanModules, MultiMinedGenerator, Selector, unconditional_critic
from core.options import prepare
from core.trainer import Stopped
from tests.conftest import tiny_source

TINY = dict(mining_steps=2, finetune_steps=2, batch_size=8, n_critic=2, checkpoint_every=1, keep_best="off")  # the last step is published


def test_selector_averages_win_fractions_over_the_last_window() -> None:
    sel = Selector(3, window=2)
    assert sel.pi == pytest.approx([1 / 3] * 3)  # nothing recorded yet: uniform
    sel.record(torch.tensor([0, 0, 0, 0]))  # falls out of the window below
    sel.record(torch.tensor([0, 1, 1, 1]))  # 1/4, 3/4, 0
    sel.record(torch.tensor([2, 2, 1, 1]))  # 0, 1/2, 1/2
    assert sel.pi == pytest.approx([0.125, 0.625, 0.25])
    other = Selector(3, window=2)
    other.load(sel.state())
    assert other.pi == sel.pi


class _Brightness(nn.Module):
    """A fixed 'critic' preferring bright images, so the argmax is known in advance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(1, keepdim=True)


class _Const(nn.Module):
    def __init__(self, value: float, k: int) -> None:
        super().__init__()
        self.value, self.k = value, k
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # brightness = value + a small term from latent coordinate k (its own per member, so no ties)
        return (self.value + 0.01 * z[:, self.k : self.k + 1] + self.w).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)


def _family(rule: str, values=(0.0, 1.0, -1.0)) -> MultiGanModules:
    Gs = nn.ModuleList(_Const(v, k) for k, v in enumerate(values))
    Ms = nn.ModuleList(nn.Identity() for _ in values)
    return MultiGanModules(G=Gs, D=_Brightness(), M=Ms, z_dim=4, members=[(i, -1) for i in range(len(values))], rule=rule,
                           member_names=[str(v) for v in values])


def test_argmax_selection_and_pi() -> None:
    fam = _family("max")
    fakes = fam.critic_fakes(32, None, torch.device("cpu"))
    assert torch.all(fakes.flatten(1).mean(1) > 0.9)  # Eq. 7: every supersample's winner is the bright member
    assert fam.pi == pytest.approx([0.0, 1.0, 0.0])


def test_permutation_keeps_each_generators_share() -> None:
    """Eq. 9-10: after the argmax the slots are permuted, so each member keeps exactly its number of slots."""
    torch.manual_seed(0)
    fam = _family("permuted", values=(0.0, 0.0, 0.0))  # equal brightness: winners decided by the latent term
    u, imgs, chosen = fam._select(64, torch.device("cpu"))
    winners = imgs.flatten(2).mean(2).argmax(0)
    assert torch.equal(torch.bincount(chosen, minlength=3), torch.bincount(winners, minlength=3))
    assert not torch.equal(chosen, winners)  # ...but not on the same latents
    assert fam.pi == pytest.approx((torch.bincount(winners, minlength=3) / 64).tolist())
    # the generator minibatch is assembled from the chosen members, with gradient to their parameters
    out = fam.generator_fakes(16, None, torch.device("cpu"))
    out.sum().backward()
    assert out.shape == (16, 1, 4, 4) and any(g.w.grad is not None for g in fam.G)


@pytest.mark.parametrize("rule", ["permuted", "max"])
def test_two_sources_mine_sample_and_round_trip(rule: str, target, tmp_path: Path) -> None:
    a, b = tiny_source(name="a"), tiny_source(name="b")
    progress: list[dict[str, float]] = []
    res = train(RunConfig(method="minegan++", selection=rule, critic_source=1, **TINY), [a, b], target, tmp_path,
                on_progress=lambda ph, s, t, st: progress.append(st))
    assert isinstance(res.model, MultiMinedGenerator)
    pi = res.summary["selector_pi"]
    assert set(pi) == {"a", "b"} and sum(pi.values()) == pytest.approx(1.0)
    assert {"pi/a", "pi/b"} <= set(progress[-1])
    # the generators were finetuned, the critic came from source b
    assert any(not torch.equal(x, y) for x, y in zip(res.model.G[0].state_dict().values(), a.G.state_dict().values()))
    model, meta = load_model(tmp_path / "model.pt")
    assert isinstance(model, MultiMinedGenerator) and meta["selector_pi"] == pi
    x1, w1 = model.sample(12, seed=5, return_members=True)
    x2 = res.model.sample(12, seed=5)
    assert x1.shape == (12, 1, 28, 28) and torch.equal(x1, x2) and set(w1.tolist()) <= {0, 1}


def test_sampling_follows_pi() -> None:
    fam = _family("max", values=(0.0, 1.0))
    m = MultiMinedGenerator(fam.G, fam.M, fam.members, [0.25, 0.75], ["x", "y"])
    m.G[0].cfg = m.G[1].cfg = type("C", (), {"z_dim": 4})()
    _, which = m.sample(4000, seed=0, return_members=True)
    assert (which == 1).float().mean().item() == pytest.approx(0.75, abs=0.03)


def test_conditional_source_is_a_family_of_its_classes(target, tmp_path: Path) -> None:
    cond = tiny_source(n_classes=3, name="cond")
    mods = build_modules(RunConfig(method="mine"), cond)
    assert isinstance(mods, MultiGanModules) and mods.members == [(0, 0), (0, 1), (0, 2)] and len(mods.M) == 3
    assert mods.D.cfg.n_classes == 0  # one unconditional critic: target images carry no labels
    res = train(RunConfig(method="mine", **TINY), cond, target, tmp_path)
    assert set(res.summary["selector_pi"]) == {"cond:0", "cond:1", "cond:2"}
    for v, w in zip(res.model.G[0].state_dict().values(), cond.G.state_dict().values()):
        assert torch.equal(v, w)  # mining keeps the generator fixed


def test_unconditional_critic_drops_label_planes() -> None:
    D = tiny_source(n_classes=3).D
    U = unconditional_critic(D)
    x = torch.randn(5, 1, 28, 28)
    zeros = torch.zeros(5, dtype=torch.long)
    # same as the conditional critic with all-zero label planes: compare via the features with labels zeroed
    with torch.no_grad():
        first = D.layer_modules()[0]
        w = first.weight.clone()
        first.weight[:, 1:] = 0  # label planes contribute nothing
        assert torch.allclose(U(x), D(x, zeros), atol=1e-5)
        first.weight.copy_(w)


def test_family_rejects_baselines_and_mismatched_sources(target, tmp_path: Path) -> None:
    with pytest.raises(MethodError, match="need a mining method"):
        train(RunConfig(method="transfergan", **TINY), [tiny_source(name="a"), tiny_source(name="b")], target, tmp_path)
    with pytest.raises(MethodError, match="share"):
        prepare(RunConfig(method="mine"), [tiny_source(name="a").info, tiny_source(z_dim=4, name="b").info])
    with pytest.raises(MethodError, match="critic_source"):
        prepare(RunConfig(method="mine", critic_source=2), [tiny_source(name="a").info, tiny_source(name="b").info])


def test_multi_resume_is_bit_identical(target, tmp_path: Path) -> None:
    srcs = [tiny_source(name="a"), tiny_source(name="b")]
    cfg = RunConfig(method="minegan", mining_steps=3, finetune_steps=3, batch_size=8, n_critic=2, checkpoint_every=2)
    full = train(cfg, srcs, target, tmp_path / "full")
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    with pytest.raises(Stopped):
        train(cfg, srcs, target, tmp_path / "cut", should_stop=stop)
    resumed = train(cfg, srcs, target, tmp_path / "cut")
    assert resumed.summary["selector_pi"] == full.summary["selector_pi"]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_embedding_conditioned_source_is_mined_with_mz_and_mc(target, tmp_path: Path) -> None:
    """Sec. 4.1: G(M^z(u), M^c(u)) -- the class-embedding miner replaces the label; G stays fixed in mining."""
    from core.nets import Critic, CriticConfig, Generator, GeneratorConfig, JointMiner
    from core.zoo import SourceModel

    G = Generator(GeneratorConfig(z_dim=8, width=4, n_classes=3, embed_dim=5))
    src = SourceModel("emb", G.eval(), Critic(CriticConfig(width=4, n_classes=3)), {})
    assert G(torch.randn(2, 8), torch.tensor([0, 2])).shape == (2, 1, 28, 28)
    mods = build_modules(RunConfig(method="mine"), src)
    assert isinstance(mods.M, JointMiner) and not isinstance(mods, MultiGanModules) and mods.D.cfg.n_classes == 0
    before = [p.clone() for p in G.parameters()]
    res = train(RunConfig(method="mine", **TINY), src, target, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(before, res.model.G.parameters()))
    assert any(p.grad is not None for p in res.model.M.mc.parameters())  # M^c learned the embedding
    model, _ = load_model(tmp_path / "model.pt")
    assert isinstance(model.M, JointMiner) and torch.equal(model.sample(4, seed=2), res.model.sample(4, seed=2))
    with pytest.raises(MethodError, match="conditional"):
        prepare(RunConfig(method="transfergan"), [src.info])


@pytest.mark.parametrize("chunk", [4, 7, 300])
def test_sampling_in_pieces_gives_the_same_images(chunk: int) -> None:
    """The API renders in pieces (api/compute.sample_on_loop): same draws, same images, same order."""
    a, b = tiny_source(name="a"), tiny_source(name="b")
    fam = build_modules(RunConfig(method="mine"), [a, b])
    m = MultiMinedGenerator(fam.G.eval(), fam.M.eval(), fam.members, [0.4, 0.6], ["a", "b"])
    whole, which = m.sample(37, seed=3, return_members=True)
    pieces = list(m.sample_chunks(37, seed=3, chunk=chunk))
    assert [len(p) for p in pieces] == [min(chunk, 37 - k) for k in range(0, 37, chunk)]
    assert set(which.tolist()) == {0, 1} and torch.allclose(torch.cat(pieces), whole, atol=1e-6)
    assert m.values_per_image == 28 * 28
