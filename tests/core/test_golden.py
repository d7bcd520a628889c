"""Every method gives the tensors and metrics recorded before the one-loop refactor, and the runs that
version cut mid-way resume under this one (tests/core/golden.py says how the fixtures were made)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from core.methods import train
from tests.core.golden import CASES, CUT_AT, GOLDEN, OLD_CHECKPOINTS, case_config, digest, machine, run_metrics, tensors_of, tiny_target

RECORDED = json.loads(GOLDEN.read_text())


def _same_kernels() -> bool:
    """Whether this CPU rounds as the recording machine did. The machine string alone cannot tell: two AVX512 Xeons
    with the same string gave other digests (2026-11-30). A CPU with that string that also reproduces the recorded
    ``mine`` run bit for bit is taken to be the recording machine's kind, and then every run must match bit for bit;
    on any other CPU every run must match to a tolerance."""
    if RECORDED["machine"] != machine():
        return False
    srcs, cfg = case_config("mine")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, srcs, tiny_target(), tmp)
            return digest(tensors_of(Path(tmp) / "model.pt")) == RECORDED["runs"]["mine"]["sha256"]
    finally:
        torch.set_num_threads(threads)


SAME_CPU = _same_kernels()


def _assert_matches(case: str, run_dir: Path) -> None:
    want = RECORDED["runs"][case]
    got = tensors_of(run_dir / "model.pt")
    assert sorted(got) == sorted(want["tensors"]), "model.pt holds other tensors than before"
    if SAME_CPU:  # bit-identical on the recording machine
        assert digest(got) == want["sha256"], f"{case}: model.pt tensors differ from the recorded run"
    else:  # another CPU's kernels round differently: the same run to a tolerance
        for k, v in got.items():
            assert v.double().sum().item() == pytest.approx(want["tensors"][k], rel=1e-3, abs=1e-3), f"{case}: {k}"
    got_metrics = run_metrics(run_dir)
    if SAME_CPU:
        assert got_metrics == want["metrics"]
    else:
        assert set(got_metrics) == set(want["metrics"])


@pytest.mark.parametrize("case", list(CASES))
def test_every_method_reproduces_the_recorded_run(case: str, tmp_path: Path) -> None:
    srcs, cfg = case_config(case)
    torch.set_num_threads(1)
    train(cfg, srcs, tiny_target(), tmp_path)
    _assert_matches(case, tmp_path)


@pytest.mark.parametrize("case", list(CUT_AT))
def test_a_run_checkpointed_by_the_previous_version_resumes(case: str, tmp_path: Path) -> None:
    files = sorted(p.name for p in (OLD_CHECKPOINTS / case).iterdir())
    assert any(f.startswith("ckpt-") for f in files)
    shutil.copytree(OLD_CHECKPOINTS / case, tmp_path, dirs_exist_ok=True)
    srcs, cfg = case_config(case)
    torch.set_num_threads(1)
    seen: list[int] = []
    train(cfg, srcs, tiny_target(), tmp_path, on_progress=lambda ph, s, t, st: seen.append(s) if ph != "select" else None)
    assert seen and seen[0] == CUT_AT[case] + 1, f"resumed at step {seen[:1]}, not after the {CUT_AT[case]} steps of the cut run"
    _assert_matches("fusion" if case == "fusion-late" else case, tmp_path)
