"""Integration fixtures: the real stack. PostgreSQL, Redis and the S3 server are started by
``scripts/services.sh`` (``make test`` does it); here we start the API (``minegan serve``) and a real
Celery worker process against them, each as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy

from tests.helpers import wait_ready

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _need_services() -> None:
    if not os.environ.get("MINEGAN_IT_DATABASE_URL"):
        if os.environ.get("CI"):
            pytest.fail("integration services are not running in CI (scripts/services.sh start)")
        pytest.skip("integration services not running; `make test` starts them")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    database_url: str
    bucket: str
    worker: subprocess.Popen
    api: subprocess.Popen
    tmp: Path
    grpc: str = ""  # host:port of the API's gRPC server
    worker_log: str = "worker.log"  # the log file of the current worker (start_worker)
    keys: dict[str, str] = field(default_factory=dict)  # tenant -> API key

    def client(self, tenant: str = "alice") -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {self.keys[tenant]}"})

    def worker_children(self) -> list[int]:
        """PIDs of the Celery worker's pool processes (prefork children of the Celery main process, which is the child
        of ``minegan worker``)."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
        celery = {pid for pid, parent in parents.items() if parent == self.worker.pid}
        return [pid for pid, parent in parents.items() if parent in celery]

    def restart_redis(self, down_s: float = 2.0) -> None:
        """Stop the broker (nothing persisted: queued and unacked messages are lost) and start it again."""
        import redis

        port = int(self.env["MINEGAN_BROKER_URL"].rsplit(":", 1)[1].split("/")[0])
        try:
            redis.Redis(port=port).shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # shutdown closes the connection under us
        time.sleep(down_s)
        subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                        "--daemonize", "yes", "--pidfile", str(ROOT / ".services" / "redis.pid"),
                        "--logfile", str(ROOT / ".services" / "redis.log"), "--dir", str(ROOT / ".services")], check=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if redis.Redis(port=port).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError("redis did not come back")

    def s3(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.env["MINEGAN_S3_ENDPOINT_URL"], region_name="us-east-1",
                            aws_access_key_id=self.env["MINEGAN_S3_ACCESS_KEY"],
                            aws_secret_access_key=self.env["MINEGAN_S3_SECRET_KEY"])

    def start_worker(self, log_name: str = "worker.log") -> subprocess.Popen:
        self.worker_log = log_name
        log = open(self.tmp / log_name, "ab")
        self.worker = subprocess.Popen(  # the Celery worker (prefork, -c 1, prefetch 1), the sweeper and webhook delivery
            [str(BIN / "minegan"), "-v", "worker", "--name", f"it-{uuid.uuid4().hex[:6]}@%h"],
            cwd=ROOT, env={**self.env, "TMPDIR": str(self.tmp)}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.worker


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _need_services()
    tmp = tmp_path_factory.mktemp("stack")
    base_url = os.environ["MINEGAN_IT_DATABASE_URL"]
    dbname = f"minegan_it_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {dbname}"))
    database_url = base_url.rsplit("/", 1)[0] + f"/{dbname}"
    bucket = f"minegan-it-{uuid.uuid4().hex[:8]}"
    port, grpc_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "MINEGAN_DATABASE_URL": database_url,
        "MINEGAN_BROKER_URL": os.environ["MINEGAN_IT_BROKER_URL"],
        "MINEGAN_STORAGE": "s3",
        "MINEGAN_S3_ENDPOINT_URL": os.environ["MINEGAN_IT_S3_ENDPOINT"],
        "MINEGAN_S3_ACCESS_KEY": os.environ["MINEGAN_IT_S3_ACCESS_KEY"],
        "MINEGAN_S3_SECRET_KEY": os.environ["MINEGAN_IT_S3_SECRET_KEY"],
        "MINEGAN_S3_BUCKET": bucket,
        "MINEGAN_WORK_DIR": str(tmp / "work"),
        "MINEGAN_CHECKPOINT_EVERY": "2",
        "MINEGAN_PROGRESS_INTERVAL_S": "0.2",
        "OMP_NUM_THREADS": "1",
        # small limits keep the hostile-upload corpus small (tests/hostile.py reads them from here)
        "MINEGAN_MAX_UPLOAD_BYTES": str(2 << 20), "MINEGAN_MAX_REQUEST_BYTES": str(4 << 20),
        "MINEGAN_MAX_TARGET_IMAGES": "150", "MINEGAN_MAX_ZIP_ENTRIES": "300",
        # fast crash detection: heartbeat every 0.5 s, stale after 4 s, sweep every second
        "MINEGAN_HEARTBEAT_INTERVAL_S": "0.5", "MINEGAN_STALE_AFTER_S": "4", "MINEGAN_SWEEP_INTERVAL_S": "1",
        "MINEGAN_PRESIGN_EXPIRY_S": "60", "MINEGAN_MAX_CONCURRENT_JOBS": "20", "MINEGAN_AUTH_CACHE_S": "1",
        "MINEGAN_MAX_WAITING_CHECKS": "20",  # the quota test sends 20 submissions at once
        # one tenant here submits dozens of jobs a minute and the load test samples as fast as it can: no per-tenant
        # rates (tests/api/test_rate_limits.py and test_rate_limits_redis.py test them)
        "MINEGAN_RATE_LIMIT": "", "MINEGAN_UPLOAD_RATE_LIMIT": "",
        "MINEGAN_WEBHOOK_ALLOW": "127.0.0.1",  # the tests' webhook receiver listens on loopback
        "MINEGAN_GRPC_PORT": str(grpc_port),
        "MINEGAN_WORKER_METRICS_PORT": str(_free_port()),  # the Celery worker's own /metrics (worker/metrics.py)
        "TMPDIR": str(tmp / "api-tmp"),
    }
    (tmp / "api-tmp").mkdir()
    api_log = open(tmp / "api.log", "ab")
    # two API processes on the port, as docker-compose.yml runs the API (cli/serve.py)
    workers = os.environ.get("MINEGAN_IT_API_WORKERS", "2")
    api = subprocess.Popen([str(BIN / "minegan"), "serve", "--port", str(port), "--workers", workers], cwd=ROOT, env=env, stdout=api_log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    st = Stack(url=f"http://127.0.0.1:{port}", env=env, database_url=database_url, bucket=bucket, worker=None,  # type: ignore[arg-type]
               api=api, tmp=tmp, grpc=f"127.0.0.1:{grpc_port}")
    wait_ready(st.url, api, tmp / "api.log")
    from store import auth as keys_dao

    for tenant in ("alice", "bob"):
        st.keys[tenant] = keys_dao.create_key(database_url, tenant, "integration")[0]
    st.start_worker()
    yield st
    _stop(st.worker)
    _stop(api)
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"))
