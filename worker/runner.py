"""Run one job: re-read the row, fetch the upload, call ``core``, write progress and artifacts.

Used by the Celery task (``worker/tasks.py``) and by the embedded worker (in its job child process) alike. Idempotent:
artifacts go to deterministic keys (``jobs/{id}/ckpt-{step}.pt``, ``jobs/{id}/model.pt``, ...), and a
redelivered job downloads its latest checkpoint and resumes from it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import OperationalError

from core import zoo
from core.data import TargetDataError, load_target
from core.images import grid_png
from core.methods import MethodError, RunConfig, train
from core.trainer import Stopped
from store import events
from store import jobs as jobs_dao
from store import sources as registry
from store.blobs import BlobNotFound, BlobStore
from store.settings import Settings

log = logging.getLogger(__name__)

# Errors a later attempt can get past: the database, the object store or the network was away for a while.
# BlobNotFound too: right after an S3 server restart an existing key can answer 404 for a moment; a key that is
# really gone fails the job after the task's retries, with the message saying which key.
TRANSIENT: tuple[type[BaseException], ...] = (OperationalError, BotoCoreError, ClientError, ConnectionError,
                                              TimeoutError, BlobNotFound)


class PermanentJobError(Exception):
    """The job cannot succeed as specified: mark it failed, do not retry."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def artifact_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/{name}"


def pick_device(setting: str) -> str:
    if setting != "auto":
        return setting
    return "cuda" if torch.cuda.is_available() else "cpu"


HISTORY_KEYS = ("d_loss", "g_loss", "wdist")


def preview_interval(setting: int, total_steps: int) -> int:
    """``setting`` if positive, else about ten previews per job."""
    return setting if setting > 0 else max(1, -(-total_steps // 10))


@dataclass
class _Reporter:
    """Throttled progress writes to the job row, and cancellation checks."""

    settings: Settings
    job_id: str
    last_write: float = 0.0
    last_check: float = 0.0
    canceled: bool = False
    interrupt: threading.Event | None = None  # set when the process shuts down: stop now, resume later
    history: list[dict[str, Any]] = field(default_factory=list)  # what the plots draw

    def on_progress(self, phase: str, step: int, total: int, stats: dict[str, float]) -> None:
        rec = {k: round(float(v), 5) for k, v in stats.items() if k in HISTORY_KEYS or k.startswith("pi/")}
        if rec:
            self.history.append({"step": step, "phase": phase, **rec})
            if len(self.history) > 4000:  # long jobs: keep every other point
                self.history = self.history[::2]
        now = time.monotonic()
        if now - self.last_write >= self.settings.progress_interval_s or step >= total:
            self.last_write = now
            jobs_dao.report_progress(self.settings.database_url, self.job_id, phase, step, total,
                                     {k: round(float(v), 5) for k, v in stats.items()})

    def should_stop(self) -> bool:
        if self.interrupt is not None and self.interrupt.is_set():
            return True
        now = time.monotonic()
        if now - self.last_check >= min(1.0, self.settings.progress_interval_s or 1.0):
            self.last_check = now
            self.canceled = jobs_dao.cancel_requested(self.settings.database_url, self.job_id)
        return self.canceled


class _Heartbeat:
    """Touches the job row every ``heartbeat_interval_s`` from a side thread, so a long step (or a slow
    upload) does not look like a dead worker to the sweeper; stops with the job."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        self.settings, self.job_id = settings, job_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_interval_s):
            try:
                jobs_dao.heartbeat(self.settings.database_url, self.job_id)
            except Exception:  # noqa: BLE001 - a missed beat is not fatal; the next one may get through
                log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def _restore_checkpoint(blobs: BlobStore, job_id: str, run_dir: Path) -> str | None:
    """Download the newest checkpoint (and a finished fusion's ``fused.pt``) of an interrupted attempt."""
    fused = artifact_key(job_id, "fused.pt")
    if blobs.exists(fused):
        (run_dir / "fused.pt").write_bytes(blobs.get(fused))
    keys = [k for k in blobs.list(artifact_key(job_id, "ckpt-")) if k.endswith(".pt")]
    if not keys:
        return fused if blobs.exists(fused) else None
    latest = max(keys, key=lambda k: int(Path(k).stem.split("-")[1]))
    (run_dir / Path(latest).name).write_bytes(blobs.get(latest))
    return latest


def run_config_from_spec(spec: dict[str, Any], settings: Settings) -> RunConfig:
    opts = dict(spec.get("options") or {})
    return RunConfig(method=spec["method"], mining_steps=spec["mining_steps"], finetune_steps=spec["finetune_steps"],
                     batch_size=spec["batch_size"], seed=spec["seed"], checkpoint_every=settings.checkpoint_every, **opts)


def execute_job(job_id: str, settings: Settings, blobs: BlobStore, interrupt: threading.Event | None = None) -> str:
    """Run the job to an end state; returns the final status.

    When ``interrupt`` is set (the embedded server shutting down), the job stops at its next step and goes
    back to ``queued`` without using up an attempt; it resumes from its last checkpoint when a worker next
    starts. Returns "interrupted" then."""
    try:
        job = jobs_dao.claim(settings.database_url, job_id, worker=f"{socket.gethostname()}:{os.getpid()}",
                             stale_after_s=settings.stale_after_s, max_attempts=settings.max_attempts)
    except jobs_dao.JobBusy as exc:  # a duplicate delivery while the first attempt runs; the sweeper covers its death
        log.info("%s; this delivery is dropped", exc)
        return "busy"
    if job is None:  # already finished or canceled: nothing to do (a duplicate delivery)
        return jobs_dao.get_status(settings.database_url, job_id) or "missing"
    run_dir = Path(settings.work_dir) / job_id
    run_dir.mkdir(parents=True, exist_ok=True)
    reporter = _Reporter(settings, job_id, interrupt=interrupt)
    beat = _Heartbeat(settings, job_id)
    beat.start()
    try:
        spec = job.spec
        sources = [registry.load(blobs, name, run_dir, job.tenant) for name in spec["sources"]]
        source = sources[0]
        upload = run_dir / "target.zip"
        upload.write_bytes(blobs.get(job.upload_key))
        target = load_target(upload, source.G.cfg.channels, source.G.cfg.img_size, max_images=settings.max_target_images,
                             limits=settings.zip_limits(), max_pixels=settings.max_image_pixels)
        jobs_dao.set_target_report(settings.database_url, job_id, target.report)
        cfg = run_config_from_spec(spec, settings)
        resumed = _restore_checkpoint(blobs, job_id, run_dir)
        if resumed:
            log.info("job %s resumes from %s", job_id, resumed)
            if blobs.exists(artifact_key(job_id, "history.json")):
                reporter.history = json.loads(blobs.get(artifact_key(job_id, "history.json")))

        def upload_checkpoint(path: Path) -> None:
            blobs.put(artifact_key(job_id, "history.json"), json.dumps(reporter.history).encode(), "application/json")
            blobs.put(artifact_key(job_id, path.name), path.read_bytes())
            if path.name.startswith("ckpt-"):  # keep only the newest checkpoint (fused.pt stays: it is an artifact)
                for key in blobs.list(artifact_key(job_id, "ckpt-")):
                    if Path(key).name != path.name:
                        blobs.delete(key)

        def upload_preview(step: int, sample: Callable[[int, int], torch.Tensor]) -> None:
            # a fixed seed, so successive previews show the same latent codes moving
            blobs.put(artifact_key(job_id, f"previews/step-{step:06d}.png"), grid_png(sample(16, 0), nrow=4), "image/png")

        result = train(cfg, sources, target.images, run_dir, on_progress=reporter.on_progress,
                       should_stop=reporter.should_stop, device=pick_device(settings.device),
                       after_checkpoint=upload_checkpoint, on_preview=upload_preview,
                       preview_every=preview_interval(settings.preview_every, cfg.total_steps))
        samples = result.model.sample(64, seed=0)
        blobs.put(artifact_key(job_id, "samples.png"), grid_png(samples, nrow=8), "image/png")
        metrics = _job_metrics(samples, target.images, result.summary)
        blobs.put(artifact_key(job_id, "metrics.json"), json.dumps(metrics, indent=2).encode(), "application/json")
        blobs.put(artifact_key(job_id, "history.json"), json.dumps(reporter.history).encode(), "application/json")
        _upload_plots(blobs, job_id, reporter.history, metrics)
        blobs.put(artifact_key(job_id, "model.pt"), (run_dir / "model.pt").read_bytes())
        jobs_dao.finish(settings.database_url, job_id, "succeeded", model_key=artifact_key(job_id, "model.pt"),
                        metrics=metrics, train_seconds=result.summary.get("train_seconds"))
        events.job_succeeded(settings, job.tenant)  # API processes drop their cached "latest job" of this tenant
        shutil.rmtree(run_dir, ignore_errors=True)
        return "succeeded"
    except Stopped:
        if not reporter.canceled and interrupt is not None and interrupt.is_set():
            jobs_dao.release(settings.database_url, job_id)
            log.warning("job %s interrupted by shutdown; it resumes from its last checkpoint at the next start", job_id)
            return "interrupted"
        jobs_dao.finish(settings.database_url, job_id, "canceled")
        shutil.rmtree(run_dir, ignore_errors=True)
        return "canceled"
    except (zoo.UnknownModelError, TargetDataError, MethodError, PermanentJobError) as exc:
        code = getattr(exc, "code", None) or {zoo.UnknownModelError: "unknown_source", TargetDataError: "bad_target",
                                              MethodError: "bad_spec"}.get(type(exc), "failed")
        jobs_dao.finish(settings.database_url, job_id, "failed", error=(code, str(exc)))
        shutil.rmtree(run_dir, ignore_errors=True)
        return "failed"
    except TRANSIENT:
        # The task retries it with backoff. Hand the job back first: a retry after an outage is not a dead
        # worker, so it must not use up one of the max_attempts (otherwise a storage outage of a few seconds
        # fails the job as worker_lost on its third retry). Best effort: if the database is what is down,
        # the next claim takes over from this (no longer alive) attempt anyway.
        try:
            jobs_dao.release(settings.database_url, job_id)
        except Exception:  # noqa: BLE001
            log.warning("job %s: could not hand the job back before retrying", job_id, exc_info=True)
        raise
    finally:
        beat.stop()


def _upload_plots(blobs: BlobStore, job_id: str, history: list[dict[str, Any]], metrics: dict[str, Any]) -> None:
    """Loss curves, selector pi over time (several sources) and the metrics, as PNG artifacts."""
    from core import plots

    for name, png in (("losses", plots.loss_plot(history)), ("pi", plots.pi_plot(history)), ("metrics", plots.metrics_plot(metrics))):
        if png is not None:
            blobs.put(artifact_key(job_id, f"plots/{name}.png"), png, "image/png")


def _job_metrics(samples: torch.Tensor, target: torch.Tensor, summary: dict[str, Any]) -> dict[str, Any]:
    """Cheap metrics every job gets; MNIST-shaped jobs also get the classifier-feature FD to the target set."""
    from core.metrics import evaluate

    out: dict[str, Any] = {"train_seconds": summary.get("train_seconds"), "steps_per_s": summary.get("steps_per_s")}
    fr = [s["s3_trainable_fraction"] for s in summary.get("stages", []) if "s3_trainable_fraction" in s]
    if fr:
        out["s3_trainable_fraction"] = fr[-1]
    if summary.get("selector_pi"):
        out["selector_pi"] = summary["selector_pi"]
    if tuple(samples.shape[1:]) == (1, 28, 28) and target.shape[0] >= 2:
        try:
            out |= evaluate(samples, target, ["fd_classifier"])
        except FileNotFoundError:
            pass
    return out
