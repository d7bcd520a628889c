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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import OperationalError

from core import checkpoints, zoo
from core.data import TargetDataError, TargetSet, load_target
from core.images import grid_png
from core.methods import RunResult, train
from core.model_file import pick_device
from core.options import MethodError, PreparedRun, RunConfig, SourceInfo, config_from_spec, resolve
from core.trainer import Stopped
from store import events, logs
from store import jobs as jobs_dao
from store import sources as registry
from store.blobs import BlobNotFound, BlobStore
from store.models import Job
from store.settings import Settings
from worker import metrics

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
    steps: metrics.StepMeter = field(default_factory=metrics.StepMeter)  # this worker's step counters

    def on_progress(self, phase: str, step: int, total: int, stats: dict[str, float]) -> None:
        self.steps(phase, step)
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
    latest = checkpoints.newest(blobs.list(artifact_key(job_id, "ckpt-")))
    if latest is None:
        return fused if blobs.exists(fused) else None
    (run_dir / Path(latest).name).write_bytes(blobs.get(latest))
    return latest


def run_config_from_spec(spec: dict[str, Any], settings: Settings) -> RunConfig:
    return config_from_spec(spec, checkpoint_every=settings.checkpoint_every)


def job_run(job: Job, settings: Settings, sources: list[SourceInfo]) -> PreparedRun | RunConfig:
    """What the job trains: the run the API prepared and stored at submission (core.options.prepare), with this worker's
    checkpoint interval; a job stored without one (submitted before the API stored runs) gives its spec's config, which
    ``train`` prepares. An option that the storing version did not know comes back at its default, so the stored run's
    "auto" values are resolved for ``sources`` (a concrete value stays as it is; nothing is checked again)."""
    asked = run_config_from_spec(job.spec, settings)
    if job.run is None:
        return asked
    # critic_patch was 0 (whole images) before it had an auto: a run stored without it keeps that
    stored = replace(RunConfig.from_json({"critic_patch": 0, **job.run}), checkpoint_every=settings.checkpoint_every)
    return PreparedRun(asked, resolve(stored, sources))


# Errors that a retry cannot fix: the job is marked failed with the exception's code.
PERMANENT: tuple[type[Exception], ...] = (zoo.UnknownModelError, TargetDataError, MethodError, PermanentJobError)


def execute_job(job_id: str, settings: Settings, blobs: BlobStore, interrupt: threading.Event | None = None) -> str:
    """Run the job to an end state; returns the final status.

    When ``interrupt`` is set (the embedded server shutting down), the job stops at its next step and goes
    back to ``queued`` without using up an attempt; it resumes from its last checkpoint when a worker next
    starts. Returns "interrupted" then."""
    with logs.bound(job_id=job_id):
        job = _claim(job_id, settings)
        if isinstance(job, str):
            return job
        with logs.bound(tenant=job.tenant, request_id=jobs_dao.submitted_by(settings.database_url, job_id)):
            method = str(job.spec.get("method", "")) if isinstance(job.spec, dict) else ""
            t0 = time.monotonic()
            metrics.BUSY.set(1)
            status = "crashed"  # an exception: the task retries it or fails it
            try:
                status = _execute(job, settings, blobs, interrupt)
            finally:
                metrics.BUSY.set(0)
                metrics.JOBS.labels(method, status).inc()
                metrics.JOB_SECONDS.labels(method).observe(time.monotonic() - t0)
            log.info("job %s %s", job_id, status)
            return status


def _execute(job: Job, settings: Settings, blobs: BlobStore, interrupt: threading.Event | None) -> str:
    job_id = job.id
    run_dir = Path(settings.work_dir) / job_id
    run_dir.mkdir(parents=True, exist_ok=True)
    reporter = _Reporter(settings, job_id, interrupt=interrupt)
    beat = _Heartbeat(settings, job_id)
    beat.start()
    try:
        sources, target = _fetch_inputs(job, settings, blobs, run_dir)
        result = _train(job, sources, target, settings, blobs, run_dir, reporter)
        metrics = _publish(job_id, result, target.images, reporter.history, blobs, run_dir)
        _record_success(job, settings, result, metrics)
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
    except PERMANENT as exc:
        jobs_dao.finish(settings.database_url, job_id, "failed", error=(exc.code, str(exc)))  # type: ignore[attr-defined]
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


def _claim(job_id: str, settings: Settings) -> Job | str:
    """The job row, now owned by this attempt; or the status to return when there is nothing to run."""
    try:
        job = jobs_dao.claim(settings.database_url, job_id, worker=f"{socket.gethostname()}:{os.getpid()}",
                             stale_after_s=settings.stale_after_s, max_attempts=settings.max_attempts)
    except jobs_dao.JobBusy as exc:  # a duplicate delivery while the first attempt runs; the sweeper covers its death
        log.info("%s; this delivery is dropped", exc)
        return "busy"
    if job is None:  # already finished or canceled: nothing to do (a duplicate delivery)
        return jobs_dao.get_status(settings.database_url, job_id) or "missing"
    return job


def _fetch_inputs(job: Job, settings: Settings, blobs: BlobStore, run_dir: Path) -> tuple[list[zoo.SourceModel], TargetSet]:
    """The job's source models and its target images (checked again, as the upload was), into ``run_dir``."""
    sources = [registry.load(blobs, name, run_dir, job.tenant) for name in job.spec["sources"]]
    g = sources[0].G.cfg
    upload = run_dir / "target.zip"
    upload.write_bytes(blobs.get(job.upload_key))
    target = load_target(upload, g.channels, g.img_size, max_images=settings.max_target_images,
                         limits=settings.zip_limits(), max_pixels=settings.max_image_pixels)
    jobs_dao.set_target_report(settings.database_url, job.id, target.report)
    return sources, target


def _train(job: Job, sources: list[zoo.SourceModel], target: TargetSet, settings: Settings, blobs: BlobStore, run_dir: Path,
           reporter: _Reporter) -> RunResult:
    """``core.methods.train``, resumed from the last uploaded checkpoint; checkpoints and previews go to storage."""
    cfg = job_run(job, settings, [s.info for s in sources])
    resumed = _restore_checkpoint(blobs, job.id, run_dir)
    if resumed:
        log.info("job %s resumes from %s", job.id, resumed)
        if blobs.exists(artifact_key(job.id, "history.json")):
            reporter.history = json.loads(blobs.get(artifact_key(job.id, "history.json")))

    def upload_checkpoint(path: Path) -> None:
        blobs.put(artifact_key(job.id, "history.json"), json.dumps(reporter.history).encode(), "application/json")
        blobs.put(artifact_key(job.id, path.name), path.read_bytes())
        if checkpoints.checkpoint_step(path.name) is not None:  # keep only the newest checkpoint (fused.pt stays: it is an artifact)
            for key in blobs.list(artifact_key(job.id, "ckpt-")):
                if Path(key).name != path.name:
                    blobs.delete(key)

    def upload_preview(step: int, sample: Callable[[int, int], torch.Tensor]) -> None:
        # a fixed seed, so successive previews show the same latent codes moving
        key = artifact_key(job.id, f"previews/step-{step:06d}.png")
        blobs.put(key, grid_png(sample(16, 0), nrow=4), "image/png")
        jobs_dao.add_event(settings.database_url, job.id, "preview", {"step": step, "key": key})

    return train(cfg, sources, target.images, run_dir, on_progress=reporter.on_progress, should_stop=reporter.should_stop,
                 device=pick_device(settings.device), after_checkpoint=upload_checkpoint, on_preview=upload_preview,
                 preview_every=preview_interval(settings.preview_every, cfg.total_steps))


def _publish(job_id: str, result: RunResult, target: torch.Tensor, history: list[dict[str, Any]], blobs: BlobStore,
             run_dir: Path) -> dict[str, Any]:
    """Samples, metrics, the loss history, plots and the model file, to storage; returns the metrics."""
    samples = result.model.sample(64, seed=0)
    blobs.put(artifact_key(job_id, "samples.png"), grid_png(samples, nrow=8), "image/png")
    metrics = _job_metrics(samples, target, result.summary)
    blobs.put(artifact_key(job_id, "metrics.json"), json.dumps(metrics, indent=2).encode(), "application/json")
    blobs.put(artifact_key(job_id, "history.json"), json.dumps(history).encode(), "application/json")
    _upload_plots(blobs, job_id, history, metrics)
    blobs.put(artifact_key(job_id, "model.pt"), (run_dir / "model.pt").read_bytes())
    return metrics


def _record_success(job: Job, settings: Settings, result: RunResult, metrics: dict[str, Any]) -> None:
    jobs_dao.finish(settings.database_url, job.id, "succeeded", model_key=artifact_key(job.id, "model.pt"),
                    metrics=metrics, train_seconds=result.summary.get("train_seconds"))
    events.job_succeeded(settings, job.tenant)  # API processes drop their cached "latest job" of this tenant


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
    if summary.get("keep_best"):  # which candidate was published and every candidate's score (core/keep_best.py)
        out["keep_best"] = summary["keep_best"]
    if summary.get("colour_map"):  # the fitted colour map and band limit (core/colour.py, Eq. MK and BAND)
        out["colour_map"] = summary["colour_map"]
    if tuple(samples.shape[1:]) == (1, 28, 28) and target.shape[0] >= 2:
        try:
            out |= evaluate(samples, target, ["fd_classifier"])
        except FileNotFoundError:
            pass
    return out
