"""Baselines on the same data and step budget (MineGAN++ Sec. 5, Tables 1-3).

* ``scratch`` — G and D randomly initialised, trained on the target set only.
* ``transfergan`` — Wang et al. 2018 (TransferGAN): G and D initialised from the source and finetuned.
* ``transfergan++`` — TransferGAN with S^3 on the critic (Sec. 5: S^3 "does not require mining").
* ``freezed`` — FreezeD (Mo et al. 2020): finetune with the lowest critic layers frozen.
"""

from __future__ import annotations

from core.trainer import StageConfig


def finetune_all_stage(steps: int, *, sparse: bool = False, freeze_critic_layers: int = 0, **opts: object) -> StageConfig:
    """G and D learn directly (no miner)."""
    return StageConfig("train", steps=steps, train_miner=False, train_generator=True, sparse=sparse,
                       freeze_critic_layers=freeze_critic_layers, **opts)  # type: ignore[arg-type]
