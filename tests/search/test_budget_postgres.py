"""The throughput cache on a real PostgreSQL: measured once, shared by every worker."""

from __future__ import annotations

import re

import pytest
from conftest import TINY_DIGITS
from faultkit import FINISHED, finish, load, spawn
from pgserver import pg_fixture, pg_url_fixture  # noqa: F401

import trainer
from search.cli import main

pytestmark = pytest.mark.postgres
# every cost parameter (backbone, width, image size, batch, optimizer) is pinned: one key
COSTED = TINY_DIGITS.replace("[budget]\n", "[budget]\nmax_trial_minutes = 60\n")
ARGS = ["run", "--study", "tiny", "--heartbeat", "0.5", "--grace", "10"]


def measured_lines(out: str) -> list[str]:
    return re.findall(r"^(?:\[w\d\] )?measured \S+: \d+ training images/s$", out, re.M)


def test_throughput_is_measured_once_and_shared_by_every_worker(write_study, pg_url, monkeypatch):
    write_study("tiny", COSTED)
    # Two workers start together; a pause in every epoch keeps a trial running while the
    # other worker starts, and the lock lets only one of them measure.
    proc = spawn(
        [*ARGS, "--trials", "2", "--workers", "2", "--threads", "1"],
        storage=pg_url,
        faults="epoch_sleep=1",
    )
    code, out = finish(proc, 240)
    assert code == 0, out
    assert len(measured_lines(out)) == 1, out
    attrs = load(pg_url, "tiny").user_attrs
    (key,) = [k for k in attrs if k.startswith("throughput:")]
    speed = attrs[key]["images_per_second"]

    # A worker joining later (this process) reads the stored figure and measures nothing.
    calls: list[str] = []
    monkeypatch.setattr(trainer, "measure_throughput", lambda cfg, **kw: calls.append(cfg))
    assert main([*ARGS, "--trials", "3", "-q", "--storage", pg_url]) == 0
    assert calls == []
    trials = load(pg_url, "tiny").get_trials(states=FINISHED)
    assert len(trials) == 3
    assert {t.user_attrs["images_per_second"] for t in trials} == {round(speed, 2)}
