"""``minegan`` command line: train, sample, zoo, data helpers. Glue over ``core``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from core import zoo
from core.data import TargetDataError, load_target, write_mnist_zip
from core.images import grid_png, zip_of_pngs
from core.methods import METHODS, MethodError, RunConfig, load_model, train
from core.trainer import Stopped


def _progress_bar(total: int):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)

    def on_progress(phase: str, step: int, total_steps: int, stats: dict[str, float]) -> None:
        bar.set_description(phase)
        shown = {k: f"{v:.3g}" for k, v in stats.items() if k in ("d_loss", "g_loss", "wdist", "s3_trainable_fraction") or k.startswith("pi/")}
        bar.set_postfix(shown, refresh=False)
        bar.n = step
        bar.refresh()

    return bar, on_progress


def cmd_train(a: argparse.Namespace) -> int:
    sources = [zoo.load_source(n) for name in a.source for n in name.split(",")]
    source = sources[0]
    target = load_target(a.target, source.G.cfg.channels, source.G.cfg.img_size)
    conv = target.report.get("converted")
    print(f"target: {len(target)} images from {a.target}" + (f" (converted: {conv})" if conv else ""), file=sys.stderr)
    cfg = RunConfig(method=a.method, mining_steps=a.mining_steps, finetune_steps=a.finetune_steps,
                    batch_size=a.batch_size, seed=a.seed, checkpoint_every=a.checkpoint_every, selection=a.selection,
                    critic_source=a.critic_source, fusion_steps=a.fusion_steps)
    if a.threads:
        torch.set_num_threads(a.threads)
    bar, on_progress = _progress_bar(cfg.total_steps)
    t0 = time.time()
    try:
        result = train(cfg, sources, target.images, a.out, on_progress=on_progress, device=a.device)
    finally:
        bar.close()
    print(f"done in {time.time() - t0:.0f}s: {result.run_dir / 'model.pt'}", file=sys.stderr)
    if "selector_pi" in result.summary:
        print("selector pi: " + ", ".join(f"{k} {v:.3f}" for k, v in result.summary["selector_pi"].items()), file=sys.stderr)
    print(json.dumps(result.summary))
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    model, _ = load_model(Path(a.run_dir) / "model.pt" if Path(a.run_dir).is_dir() else a.run_dir)
    images = model.sample(a.n, seed=a.seed)
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(zip_of_pngs(images) if a.format == "zip" else grid_png(images))
    print(f"wrote {a.n} samples to {out}", file=sys.stderr)
    return 0


def cmd_zoo_list(a: argparse.Namespace) -> int:
    rows = zoo.available()
    for r in rows:
        kind = "conditional" if r["conditional"] else "unconditional"
        print(f"{r['id']:<14} {r['resolution']}x{r['resolution']}x{r['channels']}  {kind:<13} {r['description']}")
    return 0


def cmd_zoo_build(a: argparse.Namespace) -> int:
    bar, on_progress = _progress_bar(a.steps or zoo.recipe(a.name).steps) if a.name != "mnist-classifier" else (None, None)
    try:
        path = zoo.build(a.name, steps=a.steps, seed=a.seed, on_progress=on_progress)
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_zoo_register(a: argparse.Namespace) -> int:
    path = Path(a.path) / "fused.pt" if Path(a.path).is_dir() else Path(a.path)
    try:
        dest = zoo.register(path, a.name)
    except ValueError as exc:
        raise MethodError(str(exc)) from exc
    print(f"registered {a.name} -> {dest}; use it with --source {a.name}", file=sys.stderr)
    return 0


def cmd_mnist_zip(a: argparse.Namespace) -> int:
    digits = [int(d) for d in a.digits.split(",")]
    weights = [float(w) for w in a.ratios.split(",")] if a.ratios else None
    path = write_mnist_zip(a.output, digits, a.n, seed=a.seed, split=a.split, weights=weights)
    print(f"wrote {a.n} MNIST images of digit(s) {digits} to {path}", file=sys.stderr)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app
    from store.settings import get_settings

    settings = get_settings()
    mode = "embedded (SQLite, local storage, in-process worker, no auth)" if settings.embedded else "service (Celery + S3)"
    print(f"minegan serve: {mode}; database {settings.database_url}; http://{a.host}:{a.port}/docs", file=sys.stderr)
    # "auto" picks httptools + uvloop (dependencies) when importable; no per-request access log on the hot path
    uvicorn.run(create_app(settings), host=a.host, port=a.port, log_level="warning", access_log=False, http="auto", loop="auto")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minegan", description="Few-shot GAN transfer by mining (MineGAN / MineGAN++).")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="transfer a source GAN to a target image set")
    t.add_argument("--source", required=True, action="append",
                   help="source model id (see `minegan zoo list`); repeat it (or comma-separate) to mine several GANs or fuse them")
    t.add_argument("--target", required=True, help="zip or folder of target images (PNG/JPEG)")
    t.add_argument("--method", default="minegan++", choices=METHODS)
    t.add_argument("--out", required=True, help="run directory (re-running resumes from its last checkpoint)")
    d = RunConfig()
    t.add_argument("--mining-steps", type=int, default=d.mining_steps)
    t.add_argument("--finetune-steps", type=int, default=d.finetune_steps)
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    t.add_argument("--selection", choices=("permuted", "max"), default=d.selection,
                   help="several sources: improved training of Eq. 9-10 (permuted) or the original Eq. 5-6 (max)")
    t.add_argument("--critic-source", type=int, default=d.critic_source, help="several sources: whose critic initialises D")
    t.add_argument("--fusion-steps", type=int, default=d.fusion_steps, help="fusion, fusion++: steps training the fused G_F")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a finished run")
    s.add_argument("run_dir", help="run directory or its model.pt")
    s.add_argument("-n", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--output", default="grid.png")
    s.add_argument("--format", choices=("png", "zip"), default="png")
    s.set_defaults(fn=cmd_sample)

    z = sub.add_parser("zoo", help="source models").add_subparsers(dest="zoo_cmd", required=True)
    z.add_parser("list", help="source models with weights").set_defaults(fn=cmd_zoo_list)
    b = z.add_parser("build", help="train a source model from its recipe (mnist-all, mnist-no-<d>, mnist-<a>-<b>, mnist-cond, "
                                   "fashion-all, mnist-classifier)")
    b.add_argument("name")
    b.add_argument("--steps", type=int, default=None)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(fn=cmd_zoo_build)
    r = z.add_parser("register", help="make a fusion run's fused.pt a source model ($MINEGAN_MODELS_DIR)")
    r.add_argument("path", help="a fusion run directory or its fused.pt")
    r.add_argument("name", help="the new source id")
    r.set_defaults(fn=cmd_zoo_register)

    v = sub.add_parser("serve", help="run the HTTP API (embedded worker unless MINEGAN_BROKER_URL is set)")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.set_defaults(fn=cmd_serve)

    m = sub.add_parser("mnist-zip", help="write a zip of real MNIST images (for demos and tests)")
    m.add_argument("--digits", required=True, help="comma-separated digits, e.g. 9 or 3,8")
    m.add_argument("-n", type=int, default=100)
    m.add_argument("--ratios", default="", help="share of each digit, e.g. 0.3,0.7 (default: even)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--split", default="test", choices=("train", "valid", "test"))
    m.add_argument("-o", "--output", required=True)
    m.set_defaults(fn=cmd_mnist_zip)
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(a.fn(a))
    except (zoo.UnknownModelError, TargetDataError, MethodError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
