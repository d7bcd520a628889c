"""Job row -> public JSON."""

from __future__ import annotations

from api.schemas import ErrorInfo, JobPublic
from store.models import Job


def job_public(job: Job) -> JobPublic:
    links = {"self": f"/jobs/{job.id}", "cancel": f"/jobs/{job.id}/cancel", "artifacts": f"/jobs/{job.id}/artifacts",
             "sample": f"/jobs/{job.id}/sample?n=16", "previews": f"/jobs/{job.id}/previews"}
    return JobPublic(
        id=job.id, status=job.status, phase=job.phase, progress=round(job.progress, 4), step=job.step,  # type: ignore[arg-type]
        total_steps=job.total_steps, method=job.method, spec=job.spec, run=job.run, stats=job.stats, metrics=job.metrics,
        target=job.target_report, error=ErrorInfo(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        selector=_selector(job), created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at, links=links,
    )


def _selector(job: Job) -> dict[str, float] | None:
    """pi of the selector: final (metrics) once finished, else the latest progress report (stats "pi/<member>")."""
    if job.metrics and job.metrics.get("selector_pi"):
        return dict(job.metrics["selector_pi"])
    pi = {k[3:]: float(v) for k, v in (job.stats or {}).items() if k.startswith("pi/")}
    return pi or None
