import torch
from torch import nn

from core.losses import critic_loss, generator_loss, gradient_penalty, real_critic_loss


class Linear(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) * self.w.flatten()).sum(1)


def test_wgan_losses() -> None:
    d_fake, d_real = torch.tensor([1.0, 3.0]), torch.tensor([5.0, 7.0])
    assert critic_loss(d_fake, d_real).item() == 2.0 - 6.0
    assert generator_loss(d_fake).item() == -2.0
    assert real_critic_loss(d_real).item() == -6.0


def test_gradient_penalty_zero_for_unit_gradient_and_positive_otherwise() -> None:
    x, y = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    w = torch.randn(16)
    unit = Linear((w / w.norm()).view(1, 4, 4))
    assert gradient_penalty(unit, x, y).item() < 1e-10
    double = Linear((2 * w / w.norm()).view(1, 4, 4))
    assert abs(gradient_penalty(double, x, y, weight=10.0).item() - 10.0) < 1e-4  # (2 - 1)^2 * 10
