"""Frechet distance, kernel MMD and mean variance on feature vectors (MineGAN++ Sec. 5).

* FID / FD: ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between Gaussian fits of two feature
  sets (Heusel et al.).
* KMMD with a Gaussian kernel (as in BSA, Noguchi & Harada 2019): the (biased, non-negative) MMD^2 estimate with
  k(a, b) = exp(-||a - b||^2 / (2 sigma^2)); sigma defaults to the median pairwise distance of the
  pooled features (the usual bandwidth heuristic). Low is better.
* MV, mean variance: the per-dimension variance of the generated features averaged over dimensions;
  higher means more diverse samples.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch


@dataclass(frozen=True)
class GaussianStats:
    mu: np.ndarray  # [F]
    sigma: np.ndarray  # [F, F]
    n: int


def gaussian_stats(feats: np.ndarray) -> GaussianStats:
    feats = np.asarray(feats, dtype=np.float64)  # [N, F]
    if feats.shape[0] < 2:
        raise ValueError("need at least 2 feature vectors for a covariance")
    return GaussianStats(mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), n=feats.shape[0])


def frechet_distance(a: GaussianStats, b: GaussianStats, eps: float = 1e-6) -> float:
    diff = a.mu - b.mu
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular products are handled below
        covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma)
    if not np.isfinite(covmean).all():  # near-singular product: regularise (as in the reference FID code)
        offset = np.eye(a.sigma.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((a.sigma + offset) @ (b.sigma + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean))


def kmmd(x: np.ndarray, y: np.ndarray, sigma: float | None = None) -> float:
    """MMD^2 (biased V-statistic: >= 0, exactly 0 for identical sets) with a Gaussian kernel between feature sets x [N, F] and y [M, F]."""
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if sigma is None:
        pooled = torch.cat([xt, yt])
        d = torch.cdist(pooled, pooled)
        sigma = float(d[d > 0].median()) if (d > 0).any() else 1.0
    gamma = 1.0 / (2 * sigma**2)

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-gamma * torch.cdist(a, b) ** 2)

    return float(k(xt, xt).mean() + k(yt, yt).mean() - 2 * k(xt, yt).mean())


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 estimate with the cubic polynomial
    kernel k(a, b) = (a.b / F + 1)^3 between feature sets x [N, F] and y [M, F], averaged over ``subsets`` random
    subsets of min(N, M, subset_size) from each. Unbiased, so it suits small sets (FID is biased upward there);
    about 0 (it can dip below) for sets from the same distribution."""
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    n, f = min(len(xt), len(yt), subset_size), xt.shape[1]
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(subsets):
        a = xt[torch.randperm(len(xt), generator=gen)[:n]]
        b = yt[torch.randperm(len(yt), generator=gen)[:n]]
        kaa, kbb, kab = (a @ a.T / f + 1) ** 3, (b @ b.T / f + 1) ** 3, (a @ b.T / f + 1) ** 3
        off = n * (n - 1)
        total += float((kaa.sum() - kaa.trace()) / off + (kbb.sum() - kbb.trace()) / off - 2 * kab.mean())
    return total / subsets


def mean_variance(feats: np.ndarray) -> float:
    return float(np.asarray(feats, dtype=np.float64).var(axis=0).mean())
