"""docs/options.md from core/options.py: every option of a run, its type, default, where it is set and what it does,
and what the "auto" defaults become for a source with and without its critic.

Usage: python scripts/options_doc.py            (writes docs/options.md)
       python scripts/options_doc.py --check    (exit 1 if docs/options.md is not what this would write)

Importing this module changes nothing: ``render()`` returns the page as a string; tests/test_docs.py compares it
with the file.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "options.md"

HEAD = """# Options of a run

Generated from `core/options.py` by `python scripts/options_doc.py`; do not edit it by hand (`tests/test_docs.py`
fails when it is stale). Each option is declared once there, with its type, default, bounds and help; the job spec
of `POST /jobs`, the flags of `minegan train` and the recipe a job stores (`spec.options` in `GET /jobs/{id}`,
the options that apply to its method, with every default filled in) are derived from that declaration.

Where an option is set (column "set as"):

- **spec**: a top-level field of the job spec, `{"method": "minegan++", "mining_steps": 200, ...}`;
- **options**: a field of the spec's `options` object, `{"options": {"n_critic": 5}}`;
- the `minegan train` flag, where there is one (`--no-NAME` turns a boolean off);
- **internal**: neither; the engine or the service sets it.

Options listed for some methods only are ignored by the others and left out of their stored recipe."""


def _type(name: str, types: dict[str, Any]) -> str:
    t = types[name]
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


def _value(v: Any) -> str:
    return f"`{json.dumps(list(v) if isinstance(v, tuple) else v)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _limits(m: dict[str, Any]) -> str:
    if m["choices"]:
        return ", ".join(f"`{c}`" for c in m["choices"])
    parts = [f"{op} {_number(m[key])}" for op, key in ((">=", "ge"), (">", "gt"), ("<=", "le")) if m[key] is not None]
    return ", ".join(p for p in parts if p)


def _set_as(f: Any, types: dict[str, Any]) -> str:
    m = f.metadata
    where = [m["api"]] if m["api"] else []
    if m["cli"]:
        flag = "--" + f.name.replace("_", "-")
        where.append(f"`{flag}`" + (f" / `--no-{flag[2:]}`" if types[f.name] is bool else ""))
    return ", ".join(where) or "internal"


def _options_table() -> list[str]:
    from core.options import METHODS, OPTION_TYPES, OPTIONS

    lines = ["| option | type | default | set as | bounds or choices | methods | what it does |", "|---|---|---|---|---|---|---|"]
    for f in OPTIONS:
        m = f.metadata
        methods = "all" if tuple(m["methods"]) == METHODS else ", ".join(m["methods"])
        lines.append(f"| `{f.name}` | {_type(f.name, OPTION_TYPES)} | {_value(f.default)} | {_set_as(f, OPTION_TYPES)} | "
                     f"{_cell(_limits(m))} | {methods} | {_cell(m['help'])} |")
    return lines


def _auto() -> list[str]:
    from core.options import ADAPT_AUTO, DEFAULTS, G_EMA_PATCH, SOURCE_DEPENDENT, SourceInfo, resolve, source_defaults

    rule = inspect.cleandoc(resolve.__doc__ or "").replace("``", "`")
    zoo = SourceInfo("zoo", z_dim=100, img_size=28, channels=1, conditional=False, has_critic=True)
    upload = SourceInfo("upload", z_dim=100, img_size=64, channels=3, conditional=False, has_critic=False)
    with_critic, generator_only = source_defaults(zoo), source_defaults(upload)
    lines = [
        "## What \"auto\" becomes",
        "",
        "Options whose default is `auto` (or `-1`, or `0` for `lr_miner`) are made concrete for the job's sources when it "
        "is submitted (`core.options.prepare`, by the rule of `core.options.resolve`); the job keeps that run and "
        "`GET /jobs/{id}` shows it (`run`), `minegan train` prints what each auto became, and `GET /models` lists per "
        "source what a job that sets nothing runs (`job_defaults`). The rule, as `resolve` states it:",
        "",
        *(f"> {line}" if line else ">" for line in rule.splitlines()),
        "",
        f"With the default method (`{DEFAULTS.method}`), for a grayscale source that ships its critic (as the zoo's do) and for "
        "a generator-only RGB upload:",
        "",
        "| option | default | source with its critic | generator-only RGB upload |",
        "|---|---|---|---|",
        *(f"| `{k}` | {_value(getattr(DEFAULTS, k))} | {_value(with_critic[k])} | {_value(generator_only[k])} |" for k in SOURCE_DEPENDENT),
        "",
        "The few-shot adaptation options' auto values (`ADAPT_AUTO`), by whether the critic's source ships a critic; a "
        "source that ships one keeps them with a fresh critic too:",
        "",
        "| source | " + " | ".join(f"`{k}`" for k in next(iter(ADAPT_AUTO.values()))) + " |",
        "|---|" + "---|" * len(next(iter(ADAPT_AUTO.values()))),
        *(f"| {kind} | " + " | ".join(_number(v) for v in values.values()) + " |" for kind, values in ADAPT_AUTO.items()),
        "",
        f"Beside a patch critic (`critic_patch` > 0 once resolved) `g_ema`'s auto is `G_EMA_PATCH`, {_number(G_EMA_PATCH)}.",
    ]
    return lines


def render() -> str:
    """The page, as a string."""
    return "\n".join([HEAD, "", "## Every option", "", *_options_table(), "", *_auto()]) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run python scripts/options_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
