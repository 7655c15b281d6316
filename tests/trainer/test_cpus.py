"""``available_cpus``: the cores this process may run on, not the whole host's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from trainer.device import available_cpus


def test_the_affinity_mask_counts_not_the_hosts_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert available_cpus() == 2


def test_without_an_affinity_call_every_core_counts(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert available_cpus() == 8
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one
    assert available_cpus() == 1


@pytest.mark.skipif(shutil.which("taskset") is None, reason="no taskset here")
def test_a_process_pinned_to_one_core_sees_one():
    code = "from trainer.device import available_cpus; print(available_cpus())"
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert out.stdout.strip() == "1"
