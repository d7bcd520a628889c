"""Which modules are layers with weights, for the options that act per layer (FreezeG, FreezeD, S^3, CDC)."""

from __future__ import annotations

from torch import nn

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def is_weighted(m: nn.Module, kinds: tuple[type, ...] = WEIGHTED) -> bool:
    """A layer with a weight matrix or kernel: a module of ``kinds``, or, in a program read from a .pt2 file (whose
    layers are plain ``nn.Module`` holders of their parameters), a plain module owning a ``weight`` of 2+ dimensions."""
    if isinstance(m, kinds):
        return True
    w = m._parameters.get("weight") if type(m) is nn.Module else None
    return w is not None and w.dim() >= 2
