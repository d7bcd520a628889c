"""Finetuning after mining (MineGAN++ Sec. 3.4.1) and with Sparse Subnetwork Selection (Sec. 3.4.2).

Once M has moved the prior towards the target, the generator's weights are released and M, G and D are
trained together with the same objective (Eq. 3-4, now minimised w.r.t. M and G). MineGAN++ restricts the
critic to the filters S^3 selects (Eq. 11-14, ``core/sparse.py``) in both the mining and this stage.
"""

from __future__ import annotations

from core.trainer import StageConfig


def finetune_stage(steps: int, *, sparse: bool = False, **opts: object) -> StageConfig:
    """M, G and D all learn; ``sparse`` restricts D to the S^3-selected filters (MineGAN++)."""
    return StageConfig("finetune", steps=steps, train_miner=True, train_generator=True, sparse=sparse, **opts)  # type: ignore[arg-type]
