"""Sparse Subnetwork Selection, S^3 (MineGAN++ Sec. 3.4.2, Eq. 11-14).

The critic loss on real target data alone, L_D^r(w) = -E_x[D_w(x)], gives a gradient g = grad L_D^r.
The gradient-norm change for a perturbation delta is S(delta) = 2 delta^T H g (Eq. 12); removing a
weight (delta = -w) scores S(-w) = -w (.) Hg (Eq. 13). Hg is a Hessian-gradient product computed by
double backpropagation: Hg = grad_w (g . stopgrad(g)).

theta_w is set so that the top 30 % of all critic weights (ranked by Eq. 13) pass; a filter (one output
channel of a conv, one output row of a linear layer) is trainable when at least theta_f = 6 of its
weights pass (Eq. 14). All weights of the other filters, and their biases, are frozen: their gradients
are zeroed before every optimiser step, so they stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from core.losses import real_critic_loss
from core.nets.layers import is_weighted


@dataclass(frozen=True)
class SparseConfig:
    top_fraction: float  # theta_w: the share of weights kept by S(-w) (Sec. 5: the top 30 %)
    min_weights_per_filter: int  # theta_f (Sec. 5)
    n_batches: int = 4  # real-data batches averaged for g and Hg


def _weighted_layers(critic: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in critic.named_modules() if is_weighted(m, (nn.Conv2d, nn.Linear))]


def weight_scores(critic: nn.Module, real_batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]]) -> dict[str, torch.Tensor]:
    """S(-w) = -w (.) Hg for every weight tensor of the critic (Eq. 13)."""
    layers = _weighted_layers(critic)
    weights: list[torch.Tensor] = [m.weight for _, m in layers]  # type: ignore[misc]
    loss = torch.zeros(())
    n = 0
    for x, c in real_batches:
        d_real = critic(x, c) if c is not None else critic(x)
        loss = loss + real_critic_loss(d_real)
        n += 1
    loss = loss / max(n, 1)
    grads = torch.autograd.grad(loss, weights, create_graph=True)  # g
    dot = torch.stack([(g * g.detach()).sum() for g in grads]).sum()  # g . stopgrad(g)
    hg = torch.autograd.grad(dot, weights)  # Hg (Eq. 12)
    return {f"{name}.weight": (-w.detach() * h).detach() for (name, _), w, h in zip(layers, weights, hg)}


def filter_masks(critic: nn.Module, scores: dict[str, torch.Tensor], cfg: SparseConfig) -> dict[str, torch.Tensor]:
    """Eq. 14: a per-parameter {0,1} mask, 1 for every weight/bias of a selected filter."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = max(1, int(round(cfg.top_fraction * flat.numel())))
    theta_w = torch.topk(flat, k).values.min()  # the threshold that lets the top fraction pass
    masks: dict[str, torch.Tensor] = {}
    for name, module in _weighted_layers(critic):
        s = scores[f"{name}.weight"]
        passing = (s >= theta_w).flatten(1).sum(1)  # [out_filters] weights passing per filter
        keep = (passing >= cfg.min_weights_per_filter).float()  # [out_filters]
        masks[f"{name}.weight"] = keep.view(-1, *([1] * (s.dim() - 1))).expand_as(s).clone()
        if getattr(module, "bias", None) is not None:
            masks[f"{name}.bias"] = keep.clone()
    return masks


def select_subnetwork(
    critic: nn.Module, real_batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]], cfg: SparseConfig
) -> dict[str, torch.Tensor]:
    """Score (Eq. 13) and select filters (Eq. 14); returns masks keyed by parameter name."""
    was_training = critic.training
    critic.eval()
    try:
        scores = weight_scores(critic, real_batches)
    finally:
        critic.train(was_training)
    return filter_masks(critic, scores, cfg)


def apply_grad_masks(module: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the gradients of frozen filters (call between backward() and optimizer.step())."""
    for name, p in module.named_parameters():
        m = masks.get(name)
        if m is not None and p.grad is not None:
            p.grad.mul_(m)


def trainable_fraction(masks: dict[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return float(sum(m.sum().item() for m in masks.values()) / max(total, 1))


def layer_fractions(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Share of trainable weights per layer (the paper's Fig. 11b)."""
    return {k: float(m.mean().item()) for k, m in masks.items() if k.endswith(".weight")}
