"""Hardening on the real stack (PostgreSQL, Redis, a Celery worker process, SeaweedFS):
hostile uploads, tenant isolation, SIGKILL of the worker mid-job, a Redis restart mid-job, cancellation,
and a bounded load test of /sample."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import sqlalchemy

from tests import hostile
from tests.helpers import Receiver
from tests.integration.conftest import ROOT, Stack

LIMITS = hostile.Limits(max_upload_bytes=2 << 20, max_request_bytes=4 << 20, max_target_images=150, max_zip_entries=300)
SPEC = {"sources": ["mnist-no-9"], "method": "minegan", "mining_steps": 3, "finetune_steps": 3, "batch_size": 16,
        "seed": 0, "options": {"n_critic": 1}}


def _nines(tmp) -> bytes:  # type: ignore[no-untyped-def]
    from core.data import write_mnist_zip

    return write_mnist_zip(tmp / "nines.zip", [9], 32, seed=0).read_bytes()


def _submit(c: httpx.Client, data: bytes, spec: dict) -> str:
    r = c.post("/jobs", files={"images": ("t.zip", data, "application/zip")}, data={"spec": json.dumps(spec)})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _wait(c: httpx.Client, job_id: str, until=("succeeded", "failed", "canceled"), timeout: float = 240,  # type: ignore[no-untyped-def]
          cond=None) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = c.get(f"/jobs/{job_id}").json()
        if body["status"] in until and (cond is None or cond(body)):
            return body  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"job stuck: {body}")


def _running_job(c: httpx.Client, tmp, min_step: int, mining_steps: int = 40, finetune_steps: int = 40,  # type: ignore[no-untyped-def]
                 **extra: object) -> str:
    """Submit a job and return its id once it runs past ``min_step`` (a job to interrupt)."""
    job_id = _submit(c, _nines(tmp), {**SPEC, "mining_steps": mining_steps, "finetune_steps": finetune_steps, **extra})
    _wait(c, job_id, until=("running",), cond=lambda j: j["step"] >= min_step)
    return job_id


def _row(stack: Stack, job_id: str) -> dict:
    with sqlalchemy.create_engine(stack.database_url).connect() as conn:
        return dict(conn.execute(sqlalchemy.text("select * from jobs where id = :i"), {"i": job_id}).mappings().one())


def _keys(stack: Stack, job_id: str) -> list[str]:
    out = stack.s3().list_objects_v2(Bucket=stack.bucket, Prefix=f"jobs/{job_id}/").get("Contents", [])
    return sorted(o["Key"].split("/", 2)[2] for o in out if o["Key"].count("/") == 2)  # top level: no previews/, plots/


def _uploads(stack: Stack) -> int:
    return len(stack.s3().list_objects_v2(Bucket=stack.bucket, Prefix="uploads/").get("Contents", []))


def test_hostile_uploads_get_their_errors_on_the_real_stack(stack: Stack) -> None:
    before = _uploads(stack)
    accepted = 0
    with stack.client() as c:
        for case in hostile.corpus():
            r = hostile.send(c, case, SPEC, LIMITS)
            hostile.check(case, r)
            if r.status_code == 202:
                accepted += 1
                c.post(f"/jobs/{r.json()['id']}/cancel")
        assert c.get("/healthz").status_code == 200 and stack.api.poll() is None  # still serving
    assert _uploads(stack) == before + accepted  # nothing stored for a refused upload
    assert list((stack.tmp / "api-tmp").iterdir()) == []  # no temporary file left behind by the API process


def test_other_tenants_get_404_everywhere(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with stack.client("alice") as a, stack.client("bob") as b:
        job_id = _submit(a, _nines(tmp_path), SPEC)
        assert _wait(a, job_id)["status"] == "succeeded"
        arts = a.get(f"/jobs/{job_id}/artifacts").json()
        url = next(x["url"] for x in arts if x["name"] == "samples.png")
        q = parse_qs(urlparse(url).query)  # short-lived presigned link (SigV4: X-Amz-Expires; SigV2: Expires=epoch)
        left = int(q["X-Amz-Expires"][0]) if "X-Amz-Expires" in q else int(q["Expires"][0]) - time.time()
        assert 0 < left <= 61, url
        for method, path in [("GET", f"/jobs/{job_id}"), ("POST", f"/jobs/{job_id}/cancel"), ("GET", f"/jobs/{job_id}/sample"),
                             ("GET", f"/sample?job={job_id}"), ("GET", f"/jobs/{job_id}/artifacts")]:
            r = b.request(method, path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found", (path, r.text)
        r = b.post("/models", json={"id": "stolen", "job_id": job_id})
        assert r.status_code == 404
        assert job_id not in {j["id"] for j in b.get("/jobs?limit=100").json()["items"]}
        assert httpx.get(f"{stack.url}/jobs/{job_id}").status_code == 401  # and nobody without a key


def test_sigkilled_worker_process_resumes_and_finishes_once(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rx = Receiver()  # answers 500 to the first try of every event
    with stack.client() as c:
        secret = c.get("/webhooks/secret").json()["secret"]
        job_id = _running_job(c, tmp_path, 12, webhook=f"http://127.0.0.1:{rx.port}/hook", webhook_events=["status", "completed"])
        children = stack.worker_children()
        assert children, "no pool process found"
        for pid in children:
            os.kill(pid, signal.SIGKILL)  # the pool process running the job dies mid-step
        done = _wait(c, job_id)
        assert done["status"] == "succeeded", (done, (stack.tmp / "worker.log").read_text()[-3000:])
        deadline = time.time() + 30
        while not any(b'"completed"' in body for _, body in rx.accepted()):
            assert time.time() < deadline, rx.tries
            time.sleep(0.2)
        time.sleep(1.5)  # no second delivery may follow
    assert rx.completed_once(secret, job_id)["data"]["status"] == "succeeded"  # once, signed, though the worker died mid-job
    rx.server.shutdown()
    row = _row(stack, job_id)
    assert row["attempts"] == 2 and stack.worker.poll() is None
    log = (stack.tmp / "worker.log").read_text()
    assert f"job {job_id} resumes from jobs/{job_id}/ckpt-" in log  # it resumed, not restarted
    obj = stack.s3().get_object(Bucket=stack.bucket, Key=f"jobs/{job_id}/history.json")
    steps = [h["step"] for h in json.loads(obj["Body"].read())]
    assert steps[0] == 1 and steps[-1] == 80  # the loss history survived the crash
    assert _keys(stack, job_id) == ["ckpt-80.pt", "history.json", "metrics.json", "model.pt", "samples.png"]  # one set of artifacts


def test_whole_worker_killed_is_recovered_by_the_sweeper(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with stack.client() as c:
        job_id = _running_job(c, tmp_path, 12)
        os.killpg(stack.worker.pid, signal.SIGKILL)  # main process and pool: the broker keeps the message unacked
        stack.worker.wait()
        stack.start_worker("worker-2.log")
        # kombu would restore the unacked message only after visibility_timeout (hours): the new worker's sweeper sees
        # the stale heartbeat (4 s here) and enqueues the job again; it resumes from its checkpoint
        done = _wait(c, job_id, timeout=240)
        assert done["status"] == "succeeded", (done, (stack.tmp / "worker-2.log").read_text()[-3000:])
    assert f"job {job_id} resumes from" in (stack.tmp / "worker-2.log").read_text()
    assert _row(stack, job_id)["attempts"] == 2
    assert _keys(stack, job_id) == ["ckpt-80.pt", "history.json", "metrics.json", "model.pt", "samples.png"]


def test_redis_restart_mid_job(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with stack.client() as c:
        job_id = _running_job(c, tmp_path, 5)
        stack.restart_redis()  # queue and unacked messages are gone (no persistence)
        done = _wait(c, job_id, timeout=240)
        assert done["status"] == "succeeded", (done, (stack.tmp / "worker.log").read_text()[-3000:])
        # the worker reconnected: a new job runs
        again = _submit(c, _nines(tmp_path), SPEC)
        assert _wait(c, again, timeout=240)["status"] == "succeeded"
        assert c.get("/readyz").json()["checks"]["broker"] == "ok"


def test_cancel_stops_a_running_job_within_seconds(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with stack.client() as c:
        job_id = _running_job(c, tmp_path, 2, mining_steps=5000, finetune_steps=0)
        t0 = time.time()
        assert c.post(f"/jobs/{job_id}/cancel").status_code == 200
        done = _wait(c, job_id, timeout=30)
        assert done["status"] == "canceled" and time.time() - t0 < 10 and done["step"] < 5000


def test_sample_load_is_bounded_and_error_free(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with stack.client() as c:
        job_id = _submit(c, _nines(tmp_path), SPEC)
        assert _wait(c, job_id)["status"] == "succeeded"
        c.get(f"/jobs/{job_id}/sample?n=16")  # load the model once

    def one(i: int) -> tuple[int, float]:
        with stack.client() as cl:
            t0 = time.perf_counter()
            r = cl.get(f"/jobs/{job_id}/sample?n=16&seed={i}")
            return r.status_code, 1000 * (time.perf_counter() - t0)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(160)))
    errors = sum(1 for s, _ in results if s != 200)
    lat = sorted(ms for _, ms in results)
    p50, p99 = statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]
    (stack.tmp / "load.json").write_text(json.dumps({"requests": len(lat), "errors": errors, "p50_ms": p50, "p99_ms": p99}))
    assert errors == 0 and p99 < 5000


def test_compose_and_cli_key_commands(stack: Stack) -> None:
    out = subprocess.run([str(os.path.join(os.path.dirname(os.sys.executable), "minegan")), "keys", "list", "--tenant", "bob"],
                         env=stack.env, capture_output=True, text=True, check=True).stdout
    assert "bob" in out and "integration" in out and stack.keys["bob"] not in out


def test_s3_restart_mid_job(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The S3 server goes away for a few seconds mid-job: the job still finishes (boto3 retries, then the task
    retries with backoff, 2+4+8+16+32 s in all, and resumes from its checkpoint). The retries do not use up the
    job's attempts (those count dead workers): they once did, and the job failed as worker_lost."""
    pidfile = ROOT / ".services" / "weed.pid"
    pid = int(pidfile.read_text())
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    with stack.client() as c:
        job_id = _running_job(c, tmp_path, 5)
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        time.sleep(3)
        new = subprocess.Popen([x.decode() for x in cmd], cwd=ROOT, stdout=open(ROOT / ".services" / "weed.log", "ab"),
                               stderr=subprocess.STDOUT, start_new_session=True)
        pidfile.write_text(str(new.pid))
        done = _wait(c, job_id, timeout=300)
        assert done["status"] == "succeeded", done
        assert "model.pt" in _keys(stack, job_id)


def test_quota_revocation_and_unsafe_model_upload(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from store import auth as keys_dao

    key, info = keys_dao.create_key(stack.database_url, "carol", "it", max_concurrent_jobs=1)
    with httpx.Client(base_url=stack.url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as c:
        long = _submit(c, _nines(tmp_path), {**SPEC, "mining_steps": 5000, "finetune_steps": 0})
        r = c.post("/jobs", files={"images": ("t.zip", _nines(tmp_path), "application/zip")}, data={"spec": json.dumps(SPEC)})
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs"
        assert c.post(f"/jobs/{long}/cancel").status_code == 200
        _wait(c, long, timeout=60)

        class Evil:
            def __reduce__(self):  # type: ignore[no-untyped-def]
                return (os.system, (f"touch {tmp_path}/pwned",))

        import io

        import torch

        buf = io.BytesIO()
        torch.save({"netG_state_dict": {"main.0.weight": Evil()}}, buf)
        r = c.post("/models", files={"generator": ("g.pt", buf.getvalue(), "application/octet-stream")},
                   data={"config": json.dumps({"id": "evil", "family": "dcgan64", "config": {}})})
        assert r.status_code == 422 and r.json()["error"]["code"] == "bad_checkpoint", r.text
        assert not (tmp_path / "pwned").exists() and "evil" not in {m["id"] for m in c.get("/models").json()}

        assert keys_dao.revoke(stack.database_url, info.id)
        time.sleep(1.1)  # MINEGAN_AUTH_CACHE_S=1 on this stack
        r = c.get("/jobs")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_the_quota_holds_under_concurrent_submissions_on_postgresql(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from store import auth as keys_dao
    from tests.test_quota import concurrent_submissions

    key = keys_dao.create_key(stack.database_url, "dora", "quota", 2)[0]  # a tenant no other test uses
    headers = {"Authorization": f"Bearer {key}"}
    assert concurrent_submissions(stack.url, headers, spec=SPEC, data=_nines(tmp_path)) == {202: 2, 429: 18}
    jobs = httpx.get(f"{stack.url}/jobs?limit=100", headers=headers).json()
    assert jobs["total"] == 2
    for j in jobs["items"]:
        httpx.post(f"{stack.url}/jobs/{j['id']}/cancel", headers=headers)


def test_two_workers_share_the_queue_and_take_over_a_dead_ones_job(stack: Stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Scale-out is more Celery workers on the same broker, database and store: with two (distinct names, -c 1 each)
    six jobs each run exactly once and both workers run some; a job whose worker is killed finishes on the other."""
    first, first_log = stack.worker, stack.worker_log  # whichever worker the earlier tests left running
    second = stack.start_worker("worker-b.log")  # stack.worker is now the second one
    workers = {first_log: first, "worker-b.log": second}
    deadline = time.time() + 60
    while "ready." not in (stack.tmp / "worker-b.log").read_text():  # both consume before the jobs arrive
        assert time.time() < deadline and second.poll() is None, (stack.tmp / "worker-b.log").read_text()[-2000:]
        time.sleep(0.2)
    try:
        with stack.client() as c:
            data = _nines(tmp_path)
            ids = [_submit(c, data, {**SPEC, "seed": i, "mining_steps": 12, "finetune_steps": 12}) for i in range(6)]
            assert all(_wait(c, j)["status"] == "succeeded" for j in ids)
            ran = _ran_where(stack, ids, workers)
            assert all(ran.values()), ran  # both workers took jobs
            a, b = ran.values()
            assert a.isdisjoint(b) and a | b == set(ids)
            assert all(_row(stack, j)["attempts"] == 1 for j in ids)  # each ran exactly once

            victim = _running_job(c, tmp_path, 6)
            pid = int(_row(stack, victim)["worker"].rsplit(":", 1)[1])
            owner = next(name for name, w in workers.items() if pid in _descendants(w.pid))
            os.killpg(workers[owner].pid, signal.SIGKILL)  # that worker dies mid-job
            workers[owner].wait()
            done = _wait(c, victim, timeout=240)
            assert done["status"] == "succeeded", done
            other = next(name for name in workers if name != owner)
            assert _ran_where(stack, [victim], workers)[other] == {victim}  # the surviving worker finished it
            assert _row(stack, victim)["attempts"] == 2
    finally:
        for w in workers.values():
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
                w.wait(30)
        stack.start_worker("worker-c.log")  # the next tests get one worker, as before


def _ran_where(stack: Stack, ids: list[str], workers: dict[str, subprocess.Popen], timeout: float = 15) -> dict[str, set[str]]:  # type: ignore[type-arg]
    """Which worker's log says it finished each job. A worker logs the end of a job just after recording it in the
    database, so a log line may trail the status the API already shows: wait for every job's line."""
    deadline = time.time() + timeout
    while True:
        ran = {name: {j for j in ids if f'"job {j} succeeded"' in (stack.tmp / name).read_text()} for name in workers}
        if set().union(*ran.values()) == set(ids) or time.time() > deadline:
            return ran
        time.sleep(0.2)


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (``minegan worker`` -> the Celery main process -> its pool)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found
