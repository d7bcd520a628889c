import torch

from core.nets import Critic, CriticConfig, Generator, GeneratorConfig
from core.sparse import SparseConfig, apply_grad_masks, filter_masks, select_subnetwork, trainable_fraction, weight_scores
from core.trainer import GanModules, StageConfig, TargetBatches, make_stage_state, run_stage


def _batches(x: torch.Tensor) -> list[tuple[torch.Tensor, None]]:
    return [(x[:8], None), (x[8:], None)]


def test_hessian_gradient_product_matches_finite_differences(target: torch.Tensor) -> None:
    torch.manual_seed(1)
    D = Critic(CriticConfig(width=2)).double()
    x = target.double()
    scores = weight_scores(D, _batches(x))
    # S(-w) = -w * Hg. Check Hg along a random direction v: v.Hg == d/de [g(w + e v) . g(w)]
    params = [m.weight for m in D.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    names = list(scores)

    def grads() -> list[torch.Tensor]:
        loss = sum(-D(b).mean() for b, _ in _batches(x)) / 2
        return list(torch.autograd.grad(loss, params))

    g0 = grads()
    hg = [-(scores[n] / p.detach()) for n, p in zip(names, params)]  # recover Hg from S = -w * Hg
    v = [torch.randn_like(p) for p in params]
    eps = 1e-5
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(eps * d)
    g1 = grads()
    fd = sum(((a - b) * c).sum() for a, b, c in zip(g1, g0, g0)) / eps
    analytic = sum((h * d).sum() for h, d in zip(hg, v))
    assert torch.allclose(fd, analytic, rtol=1e-3, atol=1e-7)


def test_filter_selection_follows_eq14() -> None:
    D = Critic(CriticConfig(width=2))
    names = [n for n, _ in D.named_parameters() if n.endswith(".weight")]
    scores = {n: torch.zeros_like(dict(D.named_parameters())[n]) for n in names}
    first = names[0]  # conv [2, 1, 5, 5]: filter 0 gets 6 high weights, filter 1 gets 5
    scores[first].view(2, -1)[0, :6] = 10.0
    scores[first].view(2, -1)[1, :5] = 10.0
    cfg = SparseConfig(top_fraction=11 / sum(s.numel() for s in scores.values()), min_weights_per_filter=6)
    masks = filter_masks(D, scores, cfg)
    assert masks[first][0].eq(1).all() and masks[first][1].eq(0).all()
    assert masks[first.replace("weight", "bias")].tolist() == [1.0, 0.0]
    assert all(m.sum() == 0 for k, m in masks.items() if not k.startswith(first.rsplit(".", 1)[0]))


def test_frozen_filters_stay_bit_identical_through_training(target: torch.Tensor) -> None:
    G = Generator(GeneratorConfig(z_dim=8, width=4))
    D = Critic(CriticConfig(width=4))
    # a tiny critic has few filters; a small top fraction leaves some of them frozen
    masks = select_subnetwork(D, _batches(target), SparseConfig(top_fraction=0.02, min_weights_per_filter=6))
    frac = trainable_fraction(masks)
    assert 0.0 < frac < 1.0
    before = {k: v.clone() for k, v in D.state_dict().items()}
    mods = GanModules(G=G, D=D, z_dim=8)
    cfg = StageConfig("finetune", steps=3, train_miner=False, train_generator=True, sparse=True, n_critic=2, batch_size=8)
    st = make_stage_state(mods, cfg, masks)
    run_stage(mods, st, cfg, TargetBatches(target), step_offset=0, total_steps=3)
    after = D.state_dict()
    changed_any = False
    for name, m in masks.items():
        frozen = m == 0
        assert torch.equal(after[name][frozen], before[name][frozen]), name
        changed_any |= not torch.equal(after[name][~frozen], before[name][~frozen])
    assert changed_any


def test_apply_grad_masks_zeroes_only_frozen() -> None:
    D = Critic(CriticConfig(width=2))
    for p in D.parameters():
        p.grad = torch.ones_like(p)
    masks = {n: torch.zeros_like(p) for n, p in D.named_parameters()}
    name = next(iter(masks))
    masks[name] = torch.ones_like(masks[name])
    apply_grad_masks(D, masks)
    for n, p in D.named_parameters():
        assert p.grad.sum() == (p.numel() if n == name else 0)
