"""Golden runs: a short run of every method on tiny deterministic sources, reduced to hashes.

Recorded once with the engine as it was before the one-loop refactor (issue 17) in
``tests/fixtures/golden_runs.json``; ``tests/core/test_golden.py`` re-runs them and asks for the same
tensors and the same ``run.json`` metrics. The same file also holds checkpoints written mid-run by that
version (``tests/fixtures/v1_checkpoints/``), which the current engine must resume.

    python -m tests.core.golden --write       # re-record (only when a change is meant to alter results)
    python -m tests.core.golden --checkpoints # re-write the old-version checkpoints (only from the old engine)

Bit-identity is asked on the CPU the fixture was recorded on (same torch CPU capability); on another CPU
the kernels round differently, so the test then compares the tensors with a tolerance instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from core import checkpoints
from core.methods import RunConfig, train
from core.nets import Critic, CriticConfig, Generator, GeneratorConfig
from core.trainer import Stopped
from core.zoo import SourceModel
from tests.conftest import blobs_target, stop_after

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = FIXTURES / "golden_runs.json"
OLD_CHECKPOINTS = FIXTURES / "v1_checkpoints"
TIMING_KEYS = ("train_seconds", "steps_per_s")

# keep_best off: these runs publish their last step, as every run did when they were recorded
BASE = dict(mining_steps=2, finetune_steps=2, batch_size=8, n_critic=2, checkpoint_every=1, fusion_steps=3, keep_best="off")

# case name -> (sources, RunConfig options)
CASES: dict[str, tuple[list[str], dict[str, Any]]] = {
    **{m: (["a"], {"method": m}) for m in ("mine", "minegan", "minegan++", "scratch", "transfergan", "transfergan++", "freezed")},
    "fusion": (["a", "b"], {"method": "fusion"}),
    "fusion++": (["a", "b"], {"method": "fusion++"}),
    "fusion-regions": (["a", "b"], {"method": "fusion", "fusion_mining": "regions", "fusion_critic": "plain", "fusion_lr_decay": False}),
    "two-source-minegan": (["a", "b"], {"method": "minegan"}),
    "two-source-max": (["a", "b"], {"method": "mine", "selection": "max", "critic_source": 1}),
    "onehot-conditional": (["onehot"], {"method": "minegan++"}),
    "embedding-conditional": (["embed"], {"method": "minegan"}),
}

# runs cut by the old engine and resumed by the new one: case -> steps let run before the stop
CUT_AT = {"minegan++": 3, "fusion": 2, "fusion-late": 4, "two-source-minegan": 3}


def tiny_sources() -> dict[str, SourceModel]:
    """Deterministic tiny sources: unconditional a and b, a one-hot conditional and an embedding-conditional one."""
    out = {}
    for i, (name, n_classes, embed) in enumerate([("a", 0, 0), ("b", 0, 0), ("onehot", 3, 0), ("embed", 3, 4)]):
        torch.manual_seed(100 + i)
        G = Generator(GeneratorConfig(z_dim=8, img_size=28, channels=1, width=4, n_classes=n_classes, embed_dim=embed))
        D = Critic(CriticConfig(img_size=28, channels=1, width=4, n_classes=n_classes if not embed else 0))
        out[name] = SourceModel(name=name, G=G.eval(), D=D, meta={})
    return out


def tiny_target(n: int = 16) -> torch.Tensor:
    return blobs_target(n)  # bright rectangles on black: [n, 1, 28, 28] in [-1, 1]


def case_config(case: str) -> tuple[list[SourceModel], RunConfig]:
    name = "fusion" if case == "fusion-late" else case
    names, opts = CASES[name]
    srcs = tiny_sources()
    return [srcs[n] for n in names], RunConfig(**{**BASE, **opts})  # type: ignore[arg-type]


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor in a model.pt, flattened to dotted keys."""
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            out[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (list, tuple)):
            for k, v in enumerate(obj):
                walk(f"{prefix}.{k}", v)

    walk("", checkpoints.load(path))
    return out


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].contiguous().numpy().tobytes())
    return h.hexdigest()


def run_metrics(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "run.json").read_text())
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS}


def run_case(case: str, run_dir: Path) -> dict[str, Any]:
    srcs, cfg = case_config(case)
    torch.set_num_threads(1)
    train(cfg, srcs, tiny_target(), run_dir)
    t = tensors_of(run_dir / "model.pt")
    return {"sha256": digest(t), "metrics": run_metrics(run_dir), "tensors": {k: v.double().sum().item() for k, v in t.items()}}


def machine() -> str:
    return f"{platform.machine()}/{torch.backends.cpu.get_cpu_capability()}/torch {torch.__version__}"


def write_checkpoints() -> None:
    """Cut each CUT_AT case after its steps and keep the run directory's files (run by the old engine)."""
    shutil.rmtree(OLD_CHECKPOINTS, ignore_errors=True)
    for case, n in CUT_AT.items():
        srcs, cfg = case_config(case)
        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                train(cfg, srcs, tiny_target(), tmp, should_stop=stop_after(n))
            except Stopped:
                pass
            dest = OLD_CHECKPOINTS / case
            dest.mkdir(parents=True)
            for f in Path(tmp).iterdir():
                shutil.copy(f, dest / f.name)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--write", action="store_true", help="record golden_runs.json with this engine")
    p.add_argument("--checkpoints", action="store_true", help="write mid-run checkpoints with this engine")
    a = p.parse_args()
    if a.checkpoints:
        write_checkpoints()
    results = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            results[case] = run_case(case, Path(tmp))
        print(case, results[case]["sha256"][:16])
    if a.write:
        FIXTURES.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"machine": machine(), "runs": results}, indent=1, sort_keys=True))
        print(f"wrote {GOLDEN}")
    elif GOLDEN.exists():
        want = json.loads(GOLDEN.read_text())["runs"]
        for case, r in results.items():
            same = want.get(case, {}).get("sha256") == r["sha256"] and want[case]["metrics"] == r["metrics"]
            print(f"{case:24s} {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
