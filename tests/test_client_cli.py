"""The service client end to end: ``minegan serve`` (embedded, API keys required) in a subprocess, driven by
``minegan submit --wait`` / ``jobs`` / ``status`` / ``cancel`` / ``sample`` and the ``client.Client`` class."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from cli.main import main
from client import ApiError, Client
from tests.helpers import embedded_server, target_zip_bytes

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with embedded_server(tmp_path_factory.mktemp("srv"), MINEGAN_AUTH="required") as (url, env):
        key = subprocess.run([str(BIN / "minegan"), "keys", "create", "--tenant", "cli"], env=env, capture_output=True, text=True,
                             check=True).stdout.strip()
        yield url, key


def test_submit_wait_writes_a_grid_and_the_other_commands(server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    url, key = server
    target = tmp_path / "t.zip"
    target.write_bytes(target_zip_bytes())
    conn = ["--url", url, "--api-key", key]
    grid = tmp_path / "grid.png"
    assert main(["submit", str(target), "--source", "tiny-src", "--method", "minegan", "--mining-steps", "20", "--finetune-steps", "10",
                 "--batch-size", "8", "--options", '{"n_critic": 1}', "--wait", "-n", "9", "-o", str(grid), *conn]) == 0
    out, err = capsys.readouterr()
    job_id = out.strip().splitlines()[-1]
    assert "submitted job" in err and "30/30" in err and "succeeded" in err  # the progress bar reached the end
    assert Image.open(grid).size == (3 * 30 + 2, 3 * 30 + 2)

    assert main(["jobs", *conn]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["status", job_id, *conn]) == 0
    assert '"status": "succeeded"' in capsys.readouterr().out
    assert main(["sample", job_id, "-n", "4", "-o", str(tmp_path / "s.png"), *conn]) == 0
    assert Image.open(tmp_path / "s.png").size == (2 * 30 + 2, 2 * 30 + 2)

    with Client(url, key) as c:  # the class the CLI uses
        long = c.submit(target, ["tiny-src"], "minegan", mining_steps=5000, finetune_steps=0, batch_size=8, options={"n_critic": 1})
        assert main(["cancel", long["id"], *conn]) == 0
        assert c.wait(long["id"], poll_s=0.2, timeout_s=60)["status"] == "canceled"
        assert c.sample(job_id, n=2) == c.sample(job_id, n=2)
        with pytest.raises(ApiError) as e:
            c.job("no-such-job")
        assert e.value.status == 404 and e.value.code == "job_not_found"
    capsys.readouterr()
    assert main(["jobs", "--url", url, "--api-key", "mg_00000000_wrongwrongwrongwrongwrong"]) == 2
    assert "401 unauthorized" in capsys.readouterr().err


def test_the_client_sends_only_what_its_caller_gave() -> None:
    """Server defaults reach client users: an unset field is not sent, so a changed default applies."""
    import json

    import httpx

    specs: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.content.decode("latin-1")
        specs.append(json.loads(body.split('name="spec"')[1].split("\r\n\r\n", 1)[1].split("\r\n--", 1)[0]))
        return httpx.Response(202, json={"id": "x"})

    with Client("http://test", transport=httpx.MockTransport(handler)) as c:
        c.submit(b"zip", ["src"])
        c.submit(b"zip", ["src"], mining_steps=7, options={"n_critic": 1})
    assert specs == [{"sources": ["src"]}, {"sources": ["src"], "mining_steps": 7, "options": {"n_critic": 1}}]
