"""MINEGAN_GIL_SWITCH_MS: the API process's GIL switch interval while the app runs, and Python's again after it."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import app_client


@pytest.mark.parametrize(("ms", "inside"), [(None, 0.0005), (2.0, 0.002), (0.0, None)])
def test_the_app_sets_the_switch_interval_while_it_runs_and_restores_it(tmp_path, monkeypatch, ms, inside) -> None:  # type: ignore[no-untyped-def]
    before = sys.getswitchinterval()
    assert before == pytest.approx(0.005)  # Python's default: this test sees the app change it, not a leftover
    settings = {} if ms is None else {"gil_switch_ms": ms}
    with app_client(tmp_path, monkeypatch, **settings) as c:
        assert c.get("/readyz").status_code == 200
        assert sys.getswitchinterval() == pytest.approx(before if inside is None else inside)
    assert sys.getswitchinterval() == pytest.approx(before)


def test_the_setting_reads_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from store.settings import Settings

    monkeypatch.setenv("MINEGAN_GIL_SWITCH_MS", "1.5")
    assert Settings().gil_switch_ms == 1.5
    monkeypatch.setenv("MINEGAN_GIL_SWITCH_MS", "-1")
    with pytest.raises(ValueError, match="gil_switch_ms"):
        Settings()
