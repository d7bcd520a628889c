"""Few-shot adaptation: what keeps a pretrained generator intact while it is finetuned on ~100 images against a critic
that starts fresh (a generator-only source). Each mechanism is one option of ``core/options.py`` and one hook of the
training loop (``core.trainer.StageHooks``), active in every stage that trains G (or, for the critic's, every stage):

| option         | what                                                                  | reference                              |
|----------------|-----------------------------------------------------------------------|----------------------------------------|
| ``g_ema``      | the published G is an exponential moving average of G's weights (EMA)  | Karras et al. 2018/2020 (``G_ema``)     |
| ``cdc_weight`` | keep the pairwise similarities of a batch as the source G drew it (CDC)| Ojha et al., CVPR 2021, Eq. 3-4         |
| ``r1_weight``  | penalise the critic's gradient on the real images (R1)                | Mescheder et al., ICML 2018, Eq. 9      |
| ``lecam_weight``| anchor the critic's outputs to moving averages of each other (LeCam) | Tseng et al., CVPR 2021, Eq. 3          |

FreezeG (``finetune_layers``) and DiffAugment (``augment``) live in ``core/trainer.py`` and ``core/augment.py``.
docs/faces.md gives the measurements that chose the defaults.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from core.augment import Augment
from core.nets import Miner, generate
from core.nets.layers import WEIGHTED
from core.options import MethodError, RunConfig
from core.trainer import CriticTerm, GanModules, StageConfig, StageHooks

# --- EMA of G ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def ema_update(avg: nn.Module, live: nn.Module, decay: float) -> None:
    """Eq. EMA: theta_avg <- decay * theta_avg + (1 - decay) * theta for parameters; buffers (BatchNorm statistics)
    copied, as StyleGAN's ``G_ema``."""
    for pa, pl in zip(avg.parameters(), live.parameters()):
        pa.lerp_(pl, 1.0 - decay)
    for ba, bl in zip(avg.buffers(), live.buffers()):
        ba.copy_(bl)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def frozen_copy(G: ModuleT) -> ModuleT:
    """A copy of G that never learns (the EMA's average, CDC's source)."""
    return copy.deepcopy(G).requires_grad_(False)


# --- CDC --------------------------------------------------------------------------------------------------------------


def layer_features(G: nn.Module, run: Callable[[], torch.Tensor]) -> list[torch.Tensor]:
    """The outputs of G's weighted layers (conv, transposed conv, linear; any architecture, ONNX conversions included:
    only module types are read) while ``run()`` calls G, each flattened to [N, -1]; the image itself last."""
    feats: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: feats.append(out.flatten(1)))
               for m in G.modules() if isinstance(m, WEIGHTED)]
    try:
        x = run()
    finally:
        for h in handles:
            h.remove()
    return [*feats, x.flatten(1)]


def similarity_distribution(f: torch.Tensor) -> torch.Tensor:
    """Ojha et al. Eq. 1-2: for each sample i of a batch [N, D], the softmax over j != i of cos(f_i, f_j): [N, N-1]."""
    n = f.shape[0]
    sim = F.cosine_similarity(f.unsqueeze(1), f.unsqueeze(0), dim=-1)  # [N, N]
    off = ~torch.eye(n, dtype=torch.bool, device=f.device)
    return F.softmax(sim[off].view(n, n - 1), dim=1)


def cdc_loss(source_feats: list[torch.Tensor], feats: list[torch.Tensor]) -> torch.Tensor:
    """Ojha et al. Eq. 3-4: L_dist = mean over layers l and samples i of D_KL(y_i^{s,l} || y_i^{t,l}), where y^s are the
    similarity distributions of the source G's features and y^t those of the adapted G on the same latents."""
    terms = []
    for fs, ft in zip(source_feats, feats):
        ys, yt = similarity_distribution(fs.detach()), similarity_distribution(ft)
        terms.append(F.kl_div(yt.log(), ys, reduction="batchmean"))  # sum_j ys (log ys - log yt), mean over i
    return torch.stack(terms).mean()


def cdc_term(G: nn.Module, source: nn.Module, M: nn.Module | None, z_dim: int, batch: int, weight: float,
             ) -> Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, dict[str, float]]]:
    """The CDC term added to L_G (``StageHooks.generator_term``): weight * L_dist on a batch of its own latents
    z = M(u) (the miner's output, detached: the term is on G), through G and the source G (``source``: G as it was
    when finetuning began, never trained)."""

    def term(fake: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        u = torch.randn(batch, z_dim, device=fake.device)
        source.to(fake.device)  # a no-op after the first step
        with torch.no_grad():
            z = M(u) if M is not None else u
            fs = layer_features(source, lambda: generate(source, None, z))
        ft = layer_features(G, lambda: generate(G, None, z))
        loss = cdc_loss(fs, ft)
        return weight * loss, {"cdc": loss.item()}

    return term


# --- the critic's regularisers ------------------------------------------------------------------------------------------


def r1_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, weight: float) -> torch.Tensor:
    """Mescheder et al. Eq. 9: R1 = (weight / 2) * E_x[||grad_x D(x)||^2] on the real images."""
    x = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return weight / 2 * grad.flatten(1).pow(2).sum(1).mean()


class LeCam(nn.Module):
    """Tseng et al. Eq. 3: R_LC = E_x[||D(x) - alpha_F||^2] + E_z[||D(G(z)) - alpha_R||^2], where alpha_R and alpha_F are
    moving averages (decay 0.99) of the critic's mean output on real and on fake images. Its two averages are buffers,
    so a checkpoint keeps them (``StagedRun``'s ``extra``)."""

    def __init__(self, decay: float = 0.99) -> None:
        super().__init__()
        self.decay = decay
        self.alpha_real: torch.Tensor
        self.alpha_fake: torch.Tensor
        self.seen: torch.Tensor
        self.register_buffer("alpha_real", torch.zeros(()))
        self.register_buffer("alpha_fake", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            first = bool(self.seen == 0)
            for alpha, d in ((self.alpha_real, d_real), (self.alpha_fake, d_fake)):
                alpha.copy_(d.mean() if first else torch.lerp(d.mean(), alpha, self.decay))
            self.seen.add_(1)
        return (d_real - self.alpha_fake).pow(2).mean() + (d_fake - self.alpha_real).pow(2).mean()


# --- the hooks of a run ---------------------------------------------------------------------------------------------------


def adaptation_hooks(cfg: RunConfig, mods: GanModules, augment: Augment | None) -> tuple[StageHooks, dict[str, nn.Module]]:
    """The loop's hooks for a resolved ``cfg`` (its options above, DiffAugment ``augment``), and the modules a checkpoint
    must keep beside G, D and M (the EMA, LeCam's averages). Sets ``mods.G_ema``, which sampling then uses."""
    extra: dict[str, nn.Module] = {}
    after_step = generator_term = None
    if cfg.g_ema > 0:
        G_ema = mods.G_ema = extra["G_ema"] = frozen_copy(mods.G)

        def after_step(stage: StageConfig) -> None:  # G_ema follows G exactly while G does not learn (mining)
            ema_update(G_ema, mods.G, cfg.g_ema if stage.train_generator else 0.0)

    if cfg.cdc_weight > 0:
        if isinstance(mods.G, nn.ModuleList) or (mods.M is not None and not isinstance(mods.M, Miner)):
            raise MethodError("options.cdc_weight: CDC applies to a single unconditional generator")
        generator_term = cdc_term(mods.G, frozen_copy(mods.G), mods.M, mods.z_dim, cfg.batch_size, cfg.cdc_weight)
    critic_terms: list[CriticTerm] = []
    if cfg.r1_weight > 0:
        def r1(real: torch.Tensor, labels: torch.Tensor | None, d_real: torch.Tensor, d_fake: torch.Tensor,
               ) -> tuple[torch.Tensor, dict[str, float]]:
            pen = r1_penalty(lambda x: mods.critic(x, labels), real, cfg.r1_weight)
            return pen, {"r1": pen.item()}
        critic_terms.append(r1)
    if cfg.lecam_weight > 0:
        lecam = extra["lecam"] = LeCam()

        def lc(real: torch.Tensor, labels: torch.Tensor | None, d_real: torch.Tensor, d_fake: torch.Tensor,
               ) -> tuple[torch.Tensor, dict[str, float]]:
            reg = lecam(d_real, d_fake)
            return cfg.lecam_weight * reg, {"lecam": reg.item()}
        critic_terms.append(lc)
    return StageHooks(augment=augment, generator_term=generator_term, critic_term=_sum_terms(critic_terms),
                      after_step=after_step), extra


def _sum_terms(terms: list[CriticTerm]) -> CriticTerm | None:
    if not terms:
        return None

    def total(real: torch.Tensor, labels: torch.Tensor | None, d_real: torch.Tensor, d_fake: torch.Tensor,
              ) -> tuple[torch.Tensor, dict[str, float]]:
        out, stats = torch.zeros((), device=real.device), dict[str, float]()
        for term in terms:
            t, s = term(real, labels, d_real, d_fake)
            out, stats = out + t, stats | s
        return out, stats

    return total
