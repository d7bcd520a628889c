import pytest
import torch

from core.nets import ClassEmbeddingMiner, Critic, CriticConfig, Generator, GeneratorConfig, Miner, MinerConfig


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3)])
def test_generator_and_critic_shapes(size: int, channels: int) -> None:
    G = Generator(GeneratorConfig(z_dim=16, img_size=size, channels=channels, width=4))
    D = Critic(CriticConfig(img_size=size, channels=channels, width=4))
    x = G(torch.randn(3, 16))
    assert x.shape == (3, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (3,)


def test_conditional_variant_uses_the_label() -> None:
    G = Generator(GeneratorConfig(z_dim=8, width=4, n_classes=10))
    D = Critic(CriticConfig(width=4, n_classes=10))
    z = torch.randn(2, 8)
    a = G(z, torch.tensor([0, 0]))
    b = G(z, torch.tensor([5, 5]))
    assert not torch.allclose(a, b)
    assert D(a, torch.tensor([0, 1])).shape == (2,)
    with pytest.raises(ValueError):
        G(z)


def test_unsupported_size_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported image size"):
        Generator(GeneratorConfig(img_size=30))


def test_miner_matches_appendix_a() -> None:
    M = Miner(MinerConfig())  # MNIST: two FC layers of |z| = 128, N(0, 0.01) init
    linears = [m for m in M.modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(128, 128), (128, 128)]
    w = torch.cat([lin.weight.detach().flatten() for lin in linears])
    assert abs(float(w.std()) - 0.01) < 0.001 and abs(float(w.mean())) < 0.001
    assert M(torch.randn(5, 128)).shape == (5, 128)
    deep = Miner(MinerConfig(z_dim=16, hidden=32, layers=4))
    assert sum(isinstance(m, torch.nn.Linear) for m in deep.modules()) == 4


def test_class_embedding_miner_outputs_embeddings() -> None:
    Mc = ClassEmbeddingMiner(MinerConfig(z_dim=16, hidden=16, layers=2, out_dim=12))
    assert Mc(torch.randn(4, 16)).shape == (4, 12)
    with pytest.raises(ValueError):
        ClassEmbeddingMiner(MinerConfig(z_dim=16))


def test_a_residual_miner_starts_at_the_identity_and_the_paper_miner_near_zero() -> None:
    from core.nets import Miner, MinerConfig

    torch.manual_seed(0)
    u = torch.randn(64, 16)
    paper, residual = Miner(MinerConfig(z_dim=16, hidden=16)), Miner(MinerConfig(z_dim=16, hidden=16, residual=True))
    assert paper(u).abs().max() < 0.05  # Appendix A's N(0, 0.01) init: every u maps near z = 0
    assert (residual(u) - u).abs().max() < 0.05 and residual(u).std() > 0.9  # starts at the source's own prior


def test_a_dcgan_generator_keeps_its_batch_norm_statistics_from_construction_on() -> None:
    """The DCGAN layout's BatchNorm layers use their pretrained statistics even before anyone calls train()/eval()
    (a run's generator is built fresh and its weights loaded; nothing else sets its mode): a forward pass neither
    uses the batch's statistics nor moves the stored ones."""
    import torch

    from core.nets import DCGANGenerator, DCGANGeneratorConfig

    G = DCGANGenerator(DCGANGeneratorConfig(z_dim=8, width=4))
    bn = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in bn]
    z = torch.randn(6, 8)
    x = G(z)
    assert all(not m.training for m in bn)
    assert all(torch.equal(m.running_mean, a) and torch.equal(m.running_var, b) for m, (a, b) in zip(bn, stats, strict=True))
    assert torch.allclose(x[:1], G(z[:1]), atol=1e-6)  # a row does not depend on the rest of the batch
