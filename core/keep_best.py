"""Publish the best of a run's candidates, not the last (option ``keep_best``).

The candidates are the model at the end of mining and at every checkpoint of a stage in which G learns (and the
end of the run). Each is scored by a kernel two-sample statistic in pixel space, with no pretrained network (Inception
is the evaluation network, and selecting on it inflates FID/KID: Kynkaenniemi et al., ICLR 2023):

    MMD^2(X, Y) = E k(x, x') + E k(y, y') - 2 E k(x, y),   k(a, b) = sum_s exp(-||a - b||^2 / (s * m))   (Eq. PMMD)

over ``SAMPLES`` samples X of the candidate (latents of a fixed seed, so every candidate is judged on the same u) and
the target images Y, both average-pooled to 16x16 (Gretton et al. 2012, the unbiased estimate; m is the median
squared distance of the pooled set, s in {0.5, 1, 2}). The best candidate's weights are kept beside the run's (a
module of ``StagedRun.extra``, so a resumed run still knows it) and are what the run publishes.

What this statistic sees is the images' pixel layout and brightness, not their semantics: docs/faces.md measures how
it ranks finetuning checkpoints against KID and a face detector.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from core.trainer import GanModules, StagedRun

SAMPLES = 256
SEED = 7919  # the latents every candidate is scored on
POOL = 16
SCALES = (0.5, 1.0, 2.0)


def pixel_mmd(x: torch.Tensor, y: torch.Tensor) -> float:
    """Eq. PMMD between two image sets [N, C, H, W] and [M, C, H, W] (N, M >= 2)."""
    a, b = (F.adaptive_avg_pool2d(t.float(), POOL).flatten(1) for t in (x, y))
    d = torch.cdist(torch.cat([a, b]), torch.cat([a, b])).pow(2)  # [N+M, N+M]
    m = d[d > 0].median() if (d > 0).any() else torch.tensor(1.0)
    k = torch.stack([torch.exp(-d / (s * m)) for s in SCALES]).sum(0)
    n, mm = len(a), len(b)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - kxx.diag().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diag().sum()) / (mm * (mm - 1)) - 2 * kxy.mean())


class KeepBest:
    """Scores candidates as a run saves them and keeps the best one's weights (``state``: G, M and the selector)."""

    def __init__(self, mods: GanModules, targets: torch.Tensor, sample: Any) -> None:
        self.mods, self.targets, self.sample = mods, targets.cpu(), sample  # sample(n, seed) -> images of the model as it is
        self.state = nn.ModuleDict({"G": copy.deepcopy(self.published_G()).requires_grad_(False)})
        if mods.M is not None:
            self.state["M"] = copy.deepcopy(mods.M).requires_grad_(False)

    def published_G(self) -> nn.Module:
        return self.mods.G_ema if self.mods.G_ema is not None else self.mods.G

    @staticmethod
    def is_candidate(run: StagedRun) -> bool:
        """At a save: in a stage where G learns, or when a stage ends and the next one trains G (the end of mining), or
        at the end of the run."""
        if run.state is not None:
            return run.stages[run.stage_idx].train_generator
        return run.stage_idx >= len(run.stages) or run.stages[run.stage_idx].train_generator

    def __call__(self, run: StagedRun) -> None:
        """Called before each checkpoint is written, so the checkpoint holds the scores and the best weights."""
        if not self.is_candidate(run):
            return
        nets = [m for m in (self.mods.G, self.mods.G_ema, self.mods.M) if m is not None]
        was = [m.training for m in nets]
        for m in nets:
            m.eval()
        try:
            with torch.no_grad():
                x = self.sample(SAMPLES, SEED)
        finally:
            for m, t in zip(nets, was):
                m.train(t)
        score = pixel_mmd(x, self.targets)
        entry = run.history.setdefault("keep_best", {"criterion": "pixel_mmd", "scores": {}, "best_step": None})
        entry["scores"][str(run.global_step)] = round(score, 6)
        best = entry["best_step"]
        if best is None or score < entry["scores"][str(best)]:
            entry["best_step"] = run.global_step
            self.state["G"].load_state_dict(self.published_G().state_dict())
            if self.mods.M is not None:
                self.state["M"].load_state_dict(self.mods.M.state_dict())
            entry["selector"] = self.mods.aux_state()

    def restore_best(self, run: StagedRun) -> dict[str, Any] | None:
        """Load the best candidate into the run's modules (published G and M); returns the record for the summary."""
        entry = run.history.get("keep_best")
        if not entry or entry.get("best_step") is None:
            return None
        self.published_G().load_state_dict(self.state["G"].state_dict())
        if self.mods.M is not None:
            self.mods.M.load_state_dict(self.state["M"].state_dict())
        if entry.get("selector"):
            self.mods.load_aux_state(entry["selector"])
        return {"criterion": entry["criterion"], "published_step": entry["best_step"],
                "last_step": max(int(s) for s in entry["scores"]), "scores": entry["scores"]}

