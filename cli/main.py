"""``minegan`` command line: train, sample, zoo, data helpers. Glue over ``core``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from core import zoo
from core.checkpoints import CheckpointError
from core.data import TargetDataError, load_target, write_mnist_zip
from core.export import FORMATS as EXPORT_FORMATS
from core.export import describe, export, triton_repository
from core.images import grid_png, zip_of_pngs
from core.methods import train
from core.model_file import load_model
from core.options import OPTION_TYPES, OPTIONS, SOURCE_DEPENDENT, MethodError, RunConfig, api_options, prepare
from core.trainer import Stopped


def _progress_bar(total: int):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)

    def on_progress(phase: str, step: int, total_steps: int, stats: dict[str, float]) -> None:
        bar.set_description(phase)
        shown = {k: f"{v:.3g}" for k, v in stats.items() if k in ("d_loss", "g_loss", "wdist", "s3_trainable_fraction") or k.startswith("pi/")}
        bar.set_postfix(shown, refresh=False)
        bar.total = total_steps  # the run's own count: it includes a critic warm-up that "auto" adds
        bar.n = step
        bar.refresh()

    return bar, on_progress


def cmd_train(a: argparse.Namespace) -> int:
    sources = [zoo.load_source(n) for name in a.source for n in name.split(",")]
    source = sources[0]
    target = load_target(a.target, source.G.cfg.channels, source.G.cfg.img_size)
    conv = target.report.get("converted")
    print(f"target: {len(target)} images from {a.target}" + (f" (converted: {conv})" if conv else ""), file=sys.stderr)
    asked = RunConfig(**{f.name: getattr(a, f.name) for f in OPTIONS if f.metadata["cli"]})
    prepared = prepare(asked, [s.info for s in sources])  # checked, every "auto" made concrete for these sources
    resolved = [f"{k} {getattr(prepared.run, k)}" for k in SOURCE_DEPENDENT if getattr(asked, k) != getattr(prepared.run, k)]
    if resolved:
        print(f"auto for {', '.join(s.name for s in sources)}: {', '.join(resolved)}", file=sys.stderr)
    if a.threads:
        torch.set_num_threads(a.threads)
    bar, on_progress = _progress_bar(prepared.total_steps)
    t0 = time.time()
    try:
        result = train(prepared, sources, target.images, a.out, on_progress=on_progress, device=a.device)
    finally:
        bar.close()
    print(f"done in {time.time() - t0:.0f}s: {result.run_dir / 'model.pt'}", file=sys.stderr)
    if "keep_best" in result.summary:  # core/keep_best.py: which candidate is published, and every candidate's score
        kept = result.summary["keep_best"]
        curve = ", ".join(f"{s}: {v:.4f}" for s, v in kept["scores"].items())
        print(f"published step {kept['published_step']} of {kept['last_step']} (keep_best, {kept['criterion']}: {curve})", file=sys.stderr)
    if "selector_pi" in result.summary:
        print("selector pi: " + ", ".join(f"{k} {v:.3f}" for k, v in result.summary["selector_pi"].items()), file=sys.stderr)
    print(json.dumps(result.summary))
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    out = Path(a.output)
    if Path(a.run_dir).exists():  # a local run directory or model file
        model, _ = load_model(Path(a.run_dir) / "model.pt" if Path(a.run_dir).is_dir() else a.run_dir)
        images = model.sample(a.n, seed=a.seed)
        data = zip_of_pngs(images) if a.format == "zip" else grid_png(images)
    else:  # a job id on the server
        with _client(a) as c:
            data = c.sample(a.run_dir, n=a.n, seed=a.seed, format=a.format)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {a.n} samples to {out}", file=sys.stderr)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """A run's whole sampler as one file (core/export.py), or a Triton model repository around the ONNX file."""
    local = Path(a.run_dir).exists()
    if local:
        model, _ = load_model(Path(a.run_dir) / "model.pt" if Path(a.run_dir).is_dir() else a.run_dir)
    if a.triton:
        if not local:
            raise SystemExit("--triton needs a local run directory (download the ONNX with --format onnx otherwise)")
        folder = triton_repository(model, a.format, Path(a.triton))
        print(f"wrote a Triton model repository to {folder.parent} (model {folder.name!r}, ONNX Runtime backend)", file=sys.stderr)
        return 0
    out = Path(a.output or f"model.{a.format}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if local:
        export(model, a.format, out)
        print(json.dumps(describe(model)))
    else:  # a job id on the server
        with _client(a) as c:
            out.write_bytes(c.export(a.run_dir, a.format))
    print(f"wrote {out}", file=sys.stderr)
    return 0


# --- the service client: submit / jobs / status / cancel (and sample with a job id) -------------------------


def _client(a: argparse.Namespace):  # type: ignore[no-untyped-def]
    from client import Client

    return Client(a.url, a.api_key)


def _show(job: dict) -> str:  # type: ignore[type-arg]
    err = f"  error {job['error']['code']}: {job['error']['message']}" if job.get("error") else ""
    return (f"{job['id']}  {job['status']:<9} {job['method']:<12} {','.join(job['spec']['sources']):<22} "
            f"{job['step']:>6}/{job['total_steps']:<6} {job['created_at'][:19]}{err}")


def _watch(c, job: dict) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """Follow a job with a live bar: phase, step/total, losses, ETA (from tqdm's rate)."""
    from tqdm import tqdm

    bar = tqdm(total=job["total_steps"] or 1, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(j: dict) -> None:  # type: ignore[type-arg]
        bar.total = max(j["total_steps"], 1)
        bar.set_description(f"{j['status']}:{j.get('phase') or '-'}")
        stats = j.get("stats") or {}
        shown = {k: f"{v:.3g}" for k, v in stats.items() if k in ("d_loss", "g_loss", "wdist") or k.startswith("pi/")}
        bar.set_postfix(shown, refresh=False)
        bar.update(max(0, j["step"] - bar.n))

    try:
        return c.wait(job["id"], on_update=update, poll_s=1.0)  # type: ignore[no-any-return]
    finally:
        bar.close()


def cmd_submit(a: argparse.Namespace) -> int:
    options = json.loads(a.options) if a.options else {}
    with _client(a) as c:
        job = c.submit(a.target, sources=[n for s in a.source for n in s.split(",")], options=options,
                       **{f.name: getattr(a, f.name) for f in api_options("spec")})
        print(f"submitted job {job['id']} ({job['target']['n_images']} target images)", file=sys.stderr)
        if not a.wait:
            print(job["id"])
            return 0
        job = _watch(c, job)
        print(_show(job), file=sys.stderr)
        if job["status"] != "succeeded":
            return 1
        Path(a.output).write_bytes(c.sample(job["id"], n=a.n))
        print(f"wrote {a.n} samples to {a.output}", file=sys.stderr)
        print(job["id"])
    return 0


def cmd_jobs(a: argparse.Namespace) -> int:
    with _client(a) as c:
        page = c.jobs(limit=a.limit, status=a.status)
    for j in page["items"]:
        print(_show(j))
    print(f"{len(page['items'])} of {page['total']} jobs", file=sys.stderr)
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    with _client(a) as c:
        job = c.job(a.job_id)
        if a.follow and job["status"] not in ("succeeded", "failed", "canceled"):
            job = _watch(c, job)
    print(json.dumps(job, indent=2))
    return 0


def cmd_cancel(a: argparse.Namespace) -> int:
    with _client(a) as c:
        job = c.cancel(a.job_id)
    print(_show(job))
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
        path = zoo.build(a.name, steps=a.steps, seed=a.seed, on_progress=on_progress,
                         weights_dir=Path(a.weights_dir) if a.weights_dir else None)
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


def cmd_zoo_add(a: argparse.Namespace) -> int:
    try:
        config = json.loads(a.config)
    except json.JSONDecodeError as exc:
        raise MethodError(f"--config is not JSON: {exc}") from exc
    try:
        dest = zoo.add_file(a.file, a.id, a.family, config, a.critic, a.description)
    except (ValueError, CheckpointError) as exc:
        raise MethodError(str(exc)) from exc
    critic = "its critic" if a.critic else "no critic (jobs start a fresh one, with a warm-up)"
    print(f"added {a.id} -> {dest} with {critic}; use it with --source {a.id}", file=sys.stderr)
    return 0


def cmd_mnist_zip(a: argparse.Namespace) -> int:
    digits = [int(d) for d in a.digits.split(",")]
    weights = [float(w) for w in a.ratios.split(",")] if a.ratios else None
    path = write_mnist_zip(a.output, digits, a.n, seed=a.seed, split=a.split, weights=weights)
    print(f"wrote {a.n} MNIST images of digit(s) {digits} to {path}", file=sys.stderr)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from cli.serve import serve
    from store import logs
    from store.settings import get_settings

    settings = get_settings()
    if a.grpc_port is not None:
        settings = settings.model_copy(update={"grpc_port": a.grpc_port, "grpc_host": a.host})
    mode = ("embedded (SQLite, local storage; jobs run by `minegan worker`, started beside the API)" if settings.embedded
            else "service (Celery + S3; jobs run by `minegan worker` services)")
    auth = "API keys required" if settings.auth_required else "NO authentication (every caller is tenant 'default')"
    where = f"database {settings.database_url}" + (f", files in {Path(settings.storage_dir).resolve()}" if settings.embedded else "")
    grpc = f"; gRPC (Open Inference Protocol) on {settings.grpc_host}:{settings.grpc_port}" if settings.grpc_port else ""
    level = logging.INFO if a.verbose else logging.WARNING
    logs.setup(settings.log_format, level)  # JSON lines by default (store/logs.py)
    workers = a.workers if a.workers is not None else settings.api_workers
    if not 1 <= workers <= 64:
        raise MethodError(f"--workers: 1 to 64, not {workers}")
    procs = f"; {workers} API processes on the port" if workers > 1 else ""
    logging.getLogger("minegan.serve").warning("minegan serve: %s; %s; %s; http://%s:%d/docs%s%s", mode, auth, where, a.host, a.port,
                                               grpc, procs)
    return serve(settings, a.host, a.port, workers, level)


def cmd_worker(a: argparse.Namespace) -> int:
    from store import logs
    from store.settings import get_settings
    from worker.housekeeping import run

    settings = get_settings()
    logs.setup(settings.log_format, logging.INFO if a.verbose else logging.WARNING)
    return run(settings, a.name, a.parent)


def cmd_keys(a: argparse.Namespace) -> int:
    """API keys in the service database (MINEGAN_DATABASE_URL): create prints the key once; only its hash is kept."""
    from store import auth as keys_dao
    from store.db import upgrade
    from store.settings import get_settings

    url = get_settings().database_url
    upgrade(url)
    if a.keys_cmd == "create":
        try:
            key, info = keys_dao.create_key(url, a.tenant, a.name, a.max_jobs)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"created key {info.id} for tenant {info.tenant!r}; it is shown only now:", file=sys.stderr)
        print(key)
    elif a.keys_cmd == "list":
        for k in keys_dao.list_keys(url, a.tenant):
            state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
            print(f"{k.id}  {k.tenant:<20} {k.name:<20} {k.created_at:%Y-%m-%d %H:%M}  {state}")
    else:
        if not keys_dao.revoke(url, a.key_id):
            print(f"error: no active key {a.key_id}", file=sys.stderr)
            return 2
        print(f"revoked {a.key_id}", file=sys.stderr)
    return 0


def add_option_flags(p: argparse.ArgumentParser, options: list[Any], unset: bool = False) -> None:
    """A flag per option declared in core/options.py: --mining-steps for mining_steps, with its type, default,
    choices and help text; booleans get --name / --no-name. ``unset``: a flag not given is None (the server decides)."""
    for f in options:
        m, kind = f.metadata, OPTION_TYPES[f.name]
        flag = "--" + f.name.replace("_", "-")
        default = None if unset else f.default
        text = f"{m['help']} (server default: {f.default})" if unset else m["help"]
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            p.add_argument(flag, type=kind, default=default, choices=m["choices"], help=text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minegan", description="Few-shot GAN transfer by mining (MineGAN / MineGAN++).")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="transfer a source GAN to a target image set")
    t.add_argument("--source", required=True, action="append",
                   help="source model id (see `minegan zoo list`); repeat it (or comma-separate) to mine several GANs or fuse them")
    t.add_argument("--target", required=True, help="zip or folder of target images (PNG/JPEG)")
    add_option_flags(t, [f for f in OPTIONS if f.name == "method"])
    t.add_argument("--out", required=True, help="run directory (re-running resumes from its last checkpoint)")
    add_option_flags(t, [f for f in OPTIONS if f.metadata["cli"] and f.name != "method"])
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a finished run (a local run directory, or a job id on the server)")
    s.add_argument("run_dir", help="run directory or its model.pt, or a job id")
    s.add_argument("-n", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--output", default="grid.png")
    s.add_argument("--format", choices=("png", "zip"), default="png")
    s.set_defaults(fn=cmd_sample)
    ex = sub.add_parser("export", help="a finished run's whole sampler as one .pt2 or .onnx file (a local run directory, or a job id "
                        "on the server), or with --triton a Triton model repository")
    ex.add_argument("run_dir", help="run directory or its model.pt, or a job id")
    ex.add_argument("--format", choices=EXPORT_FORMATS, default="pt2")
    ex.add_argument("-o", "--output", help="the file to write (default model.<format>)")
    ex.add_argument("--triton", metavar="DIR", help="write a Triton model repository (config.pbtxt + the ONNX file) into DIR")
    ex.set_defaults(fn=cmd_export)

    server_cmds = []
    sb = sub.add_parser("submit", help="upload a target zip to the service and start a job")
    sb.add_argument("target", help="zip of target images")
    sb.add_argument("--source", action="append", required=True, help="source model id (repeat, or comma-separate, for several)")
    add_option_flags(sb, api_options("spec"), unset=True)
    sb.add_argument("--options", default="", help='method options as JSON, e.g. \'{"selection": "max"}\'')
    sb.add_argument("--wait", action="store_true", help="follow the job with a progress bar and write a sample grid")
    sb.add_argument("-n", type=int, default=16, help="with --wait: images in the grid")
    sb.add_argument("-o", "--output", default="grid.png", help="with --wait: where the grid goes")
    sb.set_defaults(fn=cmd_submit)
    jl = sub.add_parser("jobs", help="your jobs on the service, newest first")
    jl.add_argument("--limit", type=int, default=20)
    jl.add_argument("--status", default=None, choices=("queued", "running", "succeeded", "failed", "canceled"))
    jl.set_defaults(fn=cmd_jobs)
    st = sub.add_parser("status", help="one job as JSON (--follow: a progress bar until it ends)")
    st.add_argument("job_id")
    st.add_argument("--follow", action="store_true")
    st.set_defaults(fn=cmd_status)
    cn = sub.add_parser("cancel", help="cancel a queued or running job")
    cn.add_argument("job_id")
    cn.set_defaults(fn=cmd_cancel)
    server_cmds += [s, ex, sb, jl, st, cn]
    for x in server_cmds:
        x.add_argument("--url", default=None, help="service URL (default $MINEGAN_URL or http://127.0.0.1:8000)")
        x.add_argument("--api-key", default=None, help="API key (default $MINEGAN_API_KEY)")

    z = sub.add_parser("zoo", help="source models").add_subparsers(dest="zoo_cmd", required=True)
    z.add_parser("list", help="source models with weights").set_defaults(fn=cmd_zoo_list)
    b = z.add_parser("build", help="train a source model from its recipe (mnist-all, mnist-no-<d>, mnist-<a>-<b>, mnist-cond, "
                                   "fashion-all, mnist-classifier)")
    b.add_argument("name")
    b.add_argument("--steps", type=int, default=None)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--weights-dir", default=None, help="write NAME.pt there instead of over the shipped weights "
                   "(core/zoo_weights); `minegan zoo register DIR/NAME.pt NEW_ID` then makes it a source of its own")
    b.set_defaults(fn=cmd_zoo_build)
    r = z.add_parser("register", help="make a fusion run's fused.pt a source model ($MINEGAN_MODELS_DIR)")
    r.add_argument("path", help="a fusion run directory or its fused.pt")
    r.add_argument("name", help="the new source id")
    r.set_defaults(fn=cmd_zoo_register)
    ad = z.add_parser("add", help="make your own generator file a source ($MINEGAN_MODELS_DIR): a torch.export program (.pt2) "
                                  "or ONNX graph of any architecture, or a state dict (safetensors or torch file) of the dcgan64 / "
                                  "minegan layouts")
    ad.add_argument("file", help="generator file: .pt2, .onnx, .safetensors or a torch state dict")
    ad.add_argument("--id", required=True, help="the new source id")
    ad.add_argument("--family", required=True, choices=zoo.FAMILIES)
    ad.add_argument("--config", default="{}", help='architecture as JSON; pt2 and onnx: {"z_dim": 100, "img_size": 64, "channels": 3, '
                    '"z_dist": "normal", "output_range": [-1, 1]}; dcgan64: {"z_dim": 100, "width": 64, "channels": 3}')
    ad.add_argument("--critic", default=None, help="optional critic: a .pt2 program or ONNX graph images -> one score each "
                    "(any architecture), "
                    "or a state dict of this project's critic layout")
    ad.add_argument("--description", default="")
    ad.set_defaults(fn=cmd_zoo_add)

    v = sub.add_parser("serve", help="run the HTTP API (embedded worker unless MINEGAN_BROKER_URL is set)")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--grpc-port", type=int, default=None, help="also serve gRPC (Open Inference Protocol v2, health, reflection) "
                   "on this port, on --host (default: $MINEGAN_GRPC_PORT, 0 = off)")
    v.add_argument("--workers", type=int, default=None, help="API processes on the port, each its own SO_REUSEPORT listener (default: "
                   "$MINEGAN_API_WORKERS, 1); on an N-core machine that serves many concurrent sample requests, N")
    v.set_defaults(fn=cmd_serve)

    w = sub.add_parser("worker", help="run jobs (embedded: from the database; service: a Celery worker), the stale-job sweeper "
                                      "and webhook delivery; `minegan serve` starts one itself in embedded mode")
    w.add_argument("--name", default=None, help="service mode: the Celery worker's node name (celery worker -n)")
    w.add_argument("--parent", type=int, default=None, metavar="PID", help="stop once process PID, which started it, is gone "
                   "(minegan serve passes its own)")
    w.set_defaults(fn=cmd_worker)

    k = sub.add_parser("keys", help="API keys and tenants (service database)").add_subparsers(dest="keys_cmd", required=True)
    kc = k.add_parser("create", help="create a key for a tenant (the tenant is created if new); prints the key once")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--name", default="", help="a label, e.g. laptop")
    kc.add_argument("--max-jobs", type=int, default=None, help="this tenant's limit of queued + running jobs")
    kl = k.add_parser("list", help="keys (ids, tenants, state; never the keys)")
    kl.add_argument("--tenant", default=None)
    kr = k.add_parser("revoke", help="revoke a key by its id (the 8 characters after mg_)")
    kr.add_argument("key_id")
    for x in (kc, kl, kr):
        x.set_defaults(fn=cmd_keys)

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
    except Exception as exc:
        from client import ApiError

        if isinstance(exc, ApiError):
            print(f"error: {exc.message} ({exc.status} {exc.code})", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
