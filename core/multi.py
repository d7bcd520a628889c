"""Mining several pretrained generators at once (MineGAN++ Sec. 3.3; supplement Sec. A).

A *family* is a list of members, each a generator G_i with its own miner M_i. Members are either
separate unconditional generators (several sources) or the classes of one one-hot conditional generator,
G_i(z) = G(i, z) (supplement Sec. A: "we consider G(i, z) as G_i"); then all members share that G.

Fake minibatches are built from *supersamples* {G_i(M_i(u(j))) | i = 1..N}, j = 1..K: one sample per
member for the same latent u(j). A single critic D scores all K x N images and for every supersample
m(j) = argmax_i D(G_i(M_i(u(j)))) is recorded. Two training rules:

* ``max`` — the original MineGAN rule, Eq. 5-6 written per minibatch as Eq. 7-8: the fake minibatch is
  {G_m(j)(M_m(j)(u(j)))}_j, so only the winning images receive gradient.
* ``permuted`` (default) — the improved rule, Eq. 9-10: after selection, the supersample index is
  permuted by a random r, fake_j = G_m(r(j))(M_m(r(j))(u(j))). Each member keeps its share of the
  minibatch (the critic still sees the selected frequencies) but the latent codes that did not win are
  trained too. (Eq. 9 read literally indexes u by r(j) as well, which would only reorder the same sum;
  pairing the permuted generator index with the un-permuted latent is what makes "the latent codes u
  that do not directly result in the maximum critic score" receive gradient, as the text says.)

The selector (Sec. 3.3): pi_i is the empirical frequency with which member i wins the argmax, averaged
over the last 1000 minibatches; at inference the member index is drawn from Categorical(pi).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.nets import AnyCritic, Critic, CriticConfig, generate
from core.options import SELECTION_RULES
from core.trainer import GanModules


class Selector:
    """Running estimate of pi: per-minibatch argmax-win fractions, averaged over the last ``window``."""

    def __init__(self, n_members: int, window: int = 1000) -> None:
        self.n, self.window = n_members, window
        self.history: deque[list[float]] = deque(maxlen=window)

    def record(self, winners: torch.Tensor) -> None:
        """``winners`` [K]: the argmax member of each supersample of one minibatch."""
        counts = torch.bincount(winners.cpu(), minlength=self.n).double()
        self.history.append((counts / counts.sum()).tolist())

    @property
    def pi(self) -> list[float]:
        if not self.history:
            return [1.0 / self.n] * self.n
        return torch.tensor(list(self.history), dtype=torch.float64).mean(0).tolist()

    def state(self) -> dict[str, object]:
        return {"n": self.n, "window": self.window, "history": [list(h) for h in self.history]}

    def load(self, state: dict[str, object]) -> None:
        self.history = deque((list(h) for h in state["history"]), maxlen=self.window)  # type: ignore[attr-defined]


@dataclass
class MultiGanModules(GanModules):
    """N members (generator index, class label or -1) with one miner each and one critic.

    ``G`` is an ``nn.ModuleList`` of the distinct generators and ``M`` an ``nn.ModuleList`` of the N
    miners, so optimisers, ``requires_grad_``, ``state_dict`` and ``to(device)`` treat them as one module.
    """

    members: list[tuple[int, int]] = field(default_factory=list)
    member_names: list[str] = field(default_factory=list)
    rule: str = "permuted"
    selector: Selector | None = None

    def __post_init__(self) -> None:
        if self.rule not in SELECTION_RULES:
            raise ValueError(f"selection rule must be one of {SELECTION_RULES}")
        if self.selector is None:
            self.selector = Selector(len(self.members))

    @property
    def pi(self) -> list[float]:
        assert self.selector is not None
        return self.selector.pi

    def aux_state(self) -> str:
        return json.dumps(self.selector.state()) if self.selector else ""

    def load_aux_state(self, state: str) -> None:
        if self.selector:
            self.selector.load(json.loads(state))

    def member_fake(self, i: int, u: torch.Tensor) -> torch.Tensor:
        """G_i(M_i(u)) for member i; u [K, z_dim] -> [K, C, H, W]."""
        return member_images(self.G, self.M, self.members, i, u)  # type: ignore[arg-type]

    def _select(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """K = n supersamples: latents u [K, z], all images [N, K, C, H, W], chosen member per slot [K]."""
        u = self.latent(n, device=device)
        with torch.no_grad():
            imgs = torch.stack([self.member_fake(i, u) for i in range(len(self.members))])  # [N, K, C, H, W]
            scores = self.D(imgs.flatten(0, 1)).view(len(self.members), n)  # D(G_i(M_i(u(j)))): [N, K]
        winners = scores.argmax(0)  # m(j): [K]
        assert self.selector is not None
        self.selector.record(winners)
        if self.rule == "permuted":  # Eq. 9-10: slot j gets member m(r(j)); shares are unchanged
            winners = winners[torch.randperm(n).to(device)]
        return u, imgs, winners

    def critic_fakes(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Fakes of the critic loss, Eq. 7 (max) or Eq. 9 (permuted): one selected image per supersample."""
        _, imgs, chosen = self._select(n, device)
        return imgs[chosen, torch.arange(n, device=device)]  # [K, C, H, W]

    def generator_fakes(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Fakes of the miner/generator loss, Eq. 8 (max) or Eq. 10 (permuted), recomputed with grad."""
        u, _, chosen = self._select(n, device)
        out: list[torch.Tensor | None] = [None] * n
        for i in range(len(self.members)):
            slots = (chosen == i).nonzero().flatten()
            if len(slots):
                for s, img in zip(slots.tolist(), self.member_fake(i, u[slots])):
                    out[s] = img
        return torch.stack(out)  # type: ignore[arg-type]


class MultiMinedGenerator(nn.Module):
    """The transferred family for sampling: member i ~ Categorical(pi), then x = G_i(M_i(u))."""

    def __init__(self, G: nn.ModuleList, M: nn.ModuleList, members: list[tuple[int, int]], pi: list[float],
                 member_names: list[str]) -> None:
        super().__init__()
        self.G, self.M = G, M
        self.members, self.pi, self.member_names = [tuple(m) for m in members], list(pi), list(member_names)

    @property
    def z_dim(self) -> int:
        return int(self.G[0].cfg.z_dim)  # type: ignore[union-attr,arg-type]

    @property
    def values_per_image(self) -> int:
        """C * H * W of one output image (sizes render chunks without running the model)."""
        cfg: Any = self.G[0].cfg
        return int(cfg.channels * cfg.img_size**2)

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, batch: int = 256, return_members: bool = False):  # type: ignore[no-untyped-def]
        """``n`` images [n, C, H, W] in [-1, 1] (and the member index of each); same seed, same images."""
        which, u = self._draw(n, seed)
        parts = list(self._decode(which, u, batch))
        out = torch.cat(parts) if parts else torch.empty(0)
        return (out, which) if return_members else out

    @torch.no_grad()
    def sample_chunks(self, n: int, seed: int = 0, chunk: int = 256) -> Iterator[torch.Tensor]:
        """``sample(n, seed)`` in consecutive pieces of at most ``chunk`` images, in order (same draws)."""
        which, u = self._draw(n, seed)
        yield from self._decode(which, u, chunk)

    def _draw(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        which = torch.multinomial(torch.tensor(self.pi, dtype=torch.float64), n, replacement=True, generator=gen)  # [n]
        return which, torch.randn(n, self.z_dim, generator=gen)  # [n], [n, z_dim]

    def _decode(self, which: torch.Tensor, u: torch.Tensor, chunk: int) -> Iterator[torch.Tensor]:
        """x_j = G_which(j)(M_which(j)(u_j)) for consecutive slices of at most ``chunk`` slots."""
        device = next(self.G.parameters()).device
        for k in range(0, len(u), chunk):
            w, uk = which[k : k + chunk], u[k : k + chunk]
            out = torch.empty(0)
            for i in range(len(self.members)):
                idx = (w == i).nonzero().flatten()
                if len(idx) == 0:
                    continue
                x = member_images(self.G, self.M, self.members, i, uk[idx].to(device))
                if out.numel() == 0:
                    out = torch.empty(len(uk), *x.shape[1:])
                out[idx] = x.cpu()
            yield out


def member_images(Gs: nn.ModuleList, Ms: nn.ModuleList | None, members: list[tuple[int, ...]], i: int, u: torch.Tensor) -> torch.Tensor:
    """x = G_i(M_i(u)) for family member i (generator index, class label or -1): training and sampling both use it.
    u [K, z_dim] -> [K, C, H, W]."""
    g_idx, label = members[i]
    c = torch.full((u.shape[0],), label, dtype=torch.long, device=u.device) if label >= 0 else None
    return generate(Gs[g_idx], Ms[i] if Ms is not None else None, u, c)


def unconditional_critic(D: AnyCritic) -> AnyCritic:
    """An unconditional critic from a one-hot conditional one: the label input planes are dropped (as if
    they were zero), like the paper ignores the critic's label projection when target labels are unknown.
    Unconditional critics (graph critics, ONNX or .pt2, always are) come back as they are."""
    if not isinstance(D, Critic) or not D.cfg.n_classes:
        return D
    cfg = CriticConfig(**{**D.cfg.__dict__, "n_classes": 0})
    out = Critic(cfg)
    state = D.state_dict()
    own = out.state_dict()
    for k, v in state.items():
        own[k] = v[:, : cfg.channels].clone() if own[k].shape != v.shape else v.clone()
    out.load_state_dict(own)
    return out

