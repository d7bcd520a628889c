"""Options are declared once (core/options.py); the API schema, the CLI flags, the stored recipe and the fusion
stage's config are derived from that table, and the source/method rules are one core function."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from api.schemas import JobSpec, MethodOptions
from cli.main import parser
from core.fusion import FusionConfig
from core.options import DEFAULTS, OPTIONS, MethodError, RunConfig, SourceInfo, api_options, check_sources, resolved_options

ROOT = Path(__file__).resolve().parents[1]


def test_every_option_reaches_the_api_schema_the_cli_and_the_recipe() -> None:
    schema = {**JobSpec.model_json_schema()["properties"], **MethodOptions.model_json_schema()["properties"]}
    train = {a.dest: a for a in parser()._subparsers._group_actions[0].choices["train"]._actions}  # type: ignore[union-attr]
    for f in OPTIONS:
        m = f.metadata
        if m["api"]:
            prop = schema[f.name]
            if m["api"] == "spec":
                assert prop["default"] == f.default
            bounds = {k: prop.get(k) for k in ("minimum", "exclusiveMinimum", "maximum")}
            if not bounds["minimum"] and "anyOf" in prop:
                bounds = {k: next((o[k] for o in prop["anyOf"] if k in o), None) for k in bounds}
            assert bounds == {"minimum": m["ge"], "exclusiveMinimum": m["gt"], "maximum": m["le"]}, f.name
        if m["cli"]:
            assert train[f.name].default == f.default and train[f.name].help == m["help"], f.name
    opts = set(resolved_options(RunConfig(method="fusion")))
    assert opts == {f.name for f in api_options("options")}
    assert not {o for o in resolved_options(RunConfig(method="minegan")) if o.startswith("fusion_")}


def test_fusion_config_comes_from_the_run_config() -> None:
    cfg = RunConfig(method="fusion", fusion_steps=7, fusion_distill=2.0, batch_size=16, lr_critic=3e-4)
    f = FusionConfig.of(cfg)
    assert (f.steps, f.distill, f.batch_size, f.lr_critic, f.lr_generator) == (7, 2.0, 16, 3e-4, DEFAULTS.fusion_lr_generator)
    assert FusionConfig.of(DEFAULTS) == FusionConfig()


def test_each_default_is_written_once() -> None:
    """No other config class or signature repeats an option's default as a literal: they refer to DEFAULTS."""
    code = "\n".join(p.read_text() for d in ("core", "api", "cli", "worker") for p in (ROOT / d).rglob("*.py") if p.name != "options.py")
    for f in OPTIONS:
        if f.name == "seed" or isinstance(f.default, bool) or not isinstance(f.default, (int, float, str)):  # seed: sampling seeds too
            continue
        names = {f.name, f.name.removeprefix("fusion_"), f.name.removeprefix("sparse_")}
        for name in names:
            literal = re.escape(repr(f.default))
            hit = re.search(rf"\b{name}\s*:[^=\n]*=\s*{literal}(?![\w.])", code)
            assert hit is None, f"a second literal default for {f.name}: {hit.group(0) if hit else ''}"


@pytest.mark.parametrize("method,infos,msg", [
    ("fusion", [SourceInfo("a", 8, 28, 1, False)], "sources: fusion fuses two or more"),
    ("transfergan", [SourceInfo("a", 8, 28, 1, False), SourceInfo("b", 8, 28, 1, False)], "need a mining method"),
    ("transfergan", [SourceInfo("c", 8, 28, 1, True)], "c is conditional"),
    ("mine", [SourceInfo("a", 8, 28, 1, False), SourceInfo("b", 4, 28, 1, False)], "sources must share"),
    ("mine", [SourceInfo("a", 8, 28, 1, False), SourceInfo("a", 8, 28, 1, False)], "each source at most once"),
])
def test_source_rules(method: str, infos: list[SourceInfo], msg: str) -> None:
    with pytest.raises(MethodError, match=msg):
        check_sources(RunConfig(method=method), infos)
    check_sources(RunConfig(method="minegan"), [SourceInfo("a", 8, 28, 1, False), SourceInfo("b", 8, 28, 1, False)])


def test_a_new_option_is_one_line_in_one_file(tmp_path: Path) -> None:
    """Add one line to a copy of core/options.py: the option is in the API schema (with its bounds), the CLI,
    the job's stored recipe and the RunConfig the worker builds, with nothing else edited."""
    for pkg in ("core", "api", "cli", "worker", "store", "client"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pt"))
    opts = tmp_path / "core" / "options.py"
    src = opts.read_text()
    anchor = '    critic_source: int = option('
    assert anchor in src
    opts.write_text(src.replace(anchor, '    test_knob: int = option(3, "a knob", ge=0, le=9)\n' + anchor, 1))
    check = textwrap.dedent("""
        import json
        from api.schemas import JobSpec
        from cli.main import parser
        from core.options import config_from_spec, resolved_options
        spec = JobSpec.model_validate({"sources": ["s"], "options": {"test_knob": 5}})
        cfg = spec.run_config()
        try:
            JobSpec.model_validate({"sources": ["s"], "options": {"test_knob": 10}})
            bound = "accepted"
        except ValueError as exc:
            bound = "refused" if "test_knob" in str(exc) else str(exc)
        a = parser().parse_args(["train", "--source", "s", "--target", "t", "--out", "o", "--test-knob", "7"])
        stored = resolved_options(cfg)
        print(json.dumps({"cfg": cfg.test_knob, "bound": bound, "cli": a.test_knob, "stored": stored["test_knob"],
                          "worker": config_from_spec({"method": "mine", "options": stored}).test_knob}))
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == '{"cfg": 5, "bound": "refused", "cli": 7, "stored": 5, "worker": 5}'
