"""Plots of a run as PNG bytes (matplotlib, Agg backend): losses over steps, the selector's pi over steps
(several sources, Sec. 3.3), and the final metric values. ``history`` is a list of progress records
``{"step", "phase", <stat>: value, ...}`` as the worker collects them from ``on_progress``."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOSSES = ("d_loss", "g_loss", "wdist")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _phase_bounds(history: list[dict[str, Any]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for h in history:
        if not out or out[-1][1] != h.get("phase"):
            out.append((int(h["step"]), str(h.get("phase"))))
    return out


def loss_plot(history: list[dict[str, Any]]) -> bytes | None:
    keys = [k for k in LOSSES if any(k in h for h in history)]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k in keys:
        pts = [(h["step"], h[k]) for h in history if k in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=1)
    for step, phase in _phase_bounds(history)[1:]:
        ax.axvline(step, color="gray", ls=":", lw=0.8)
        ax.text(step, ax.get_ylim()[1], f" {phase}", va="top", fontsize=8, color="gray")
    ax.set_xlabel("step")
    ax.set_title("critic / generator losses (Eq. 3-4)")
    ax.legend(fontsize=8)
    return _png(fig)


def pi_plot(history: list[dict[str, Any]]) -> bytes | None:
    names = sorted({k[3:] for h in history for k in h if k.startswith("pi/")})
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for n in names:
        pts = [(h["step"], h[f"pi/{n}"]) for h in history if f"pi/{n}" in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=n, lw=1.2)
    ax.set_ylim(0, 1)
    ax.set_xlabel("step")
    ax.set_ylabel("pi")
    ax.set_title("selector pi (argmax-critic win frequency over the last 1000 minibatches)")
    ax.legend(fontsize=8)
    return _png(fig)


def metrics_plot(metrics: dict[str, Any]) -> bytes | None:
    vals = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not vals:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(vals)))
    ax.barh(list(vals), list(vals.values()), color="#4c72b0")
    for i, v in enumerate(vals.values()):
        ax.text(v, i, f" {v:.4g}", va="center", fontsize=8)
    ax.set_title("final metrics")
    return _png(fig)
