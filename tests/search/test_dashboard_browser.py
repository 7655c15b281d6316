"""optuna-dashboard in headless Chromium: the study page and a trial page show our notes,
intermediate values and artifacts. Needs Debian's chromium (installed by scripts/setup.sh test)."""

from __future__ import annotations

import html
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from search.experiments.run import plan_run, run_study
from search.study.studyfile import load_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Every host name but 127.0.0.1 fails to resolve: the page sees no network beyond the
# dashboard (a CDN script would not load)
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


def _page_text(url: str, profile: Path) -> tuple[str, str]:
    """The rendered DOM (after the app's API calls) as raw HTML and as visible text, with the
    network off."""
    out = subprocess.run(
        [
            CHROMIUM,
            OFFLINE,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    body = re.sub(r"<(style|script)\b.*?</\1>", " ", out, flags=re.S)
    text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))
    return out, text


@pytest.fixture
def dashboard(write_study, storage_url, tmp_path):
    from conftest import TINY_DIGITS

    write_study("dash", TINY_DIGITS)
    plan = plan_run(load_study("dash"), storage=storage_url)
    study = run_study(plan, n_trials=2)
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "search.cli",
            "dashboard",
            "--study",
            "dash",
            "--storage",
            storage_url,
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/api/studies", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"dashboard did not start: {proc.stderr.read()}")
            time.sleep(0.3)
    yield base, study, tmp_path
    proc.terminate()
    proc.wait(timeout=10)


def test_study_and_trial_pages_show_notes_values_and_artifacts(dashboard):
    base, study, tmp = dashboard
    _, text = _page_text(f"{base}/dashboard/studies/1", tmp / "profile1")
    assert "dash (id=1)" in text
    assert "Intermediate values" in text
    assert "val_acc" in text  # the metric name, set on the study

    raw, text = _page_text(f"{base}/dashboard/studies/1/trials?numbers=0", tmp / "profile2")
    trial = study.trials[0]
    # our note: status line, timings and the full config table
    assert f"ran all {trial.user_attrs['epochs_run']} epochs" in text or "pruned" in text
    assert "training" in text and "set-up" in text
    assert "optim.lr" in text and "model.backbone" in text
    # intermediate values per epoch, as Optuna stored them
    assert "Intermediate Values" in text
    for step, value in trial.intermediate_values.items():
        assert f"{step} {value}" in text
    # artifacts: learning curve, confusion matrix and (best trial) checkpoint
    assert "learning-curve-trial-0.html" in raw
    assert "confusion-matrix-trial-0.csv" in raw
    assert "trial-0.safetensors" in raw


def _rendered_by_plotly(raw: str) -> bool:
    """plotly.js ran: it draws a figure into SVG elements of class main-svg."""
    return 'class="main-svg"' in raw


def test_learning_curves_and_evaluate_figures_draw_with_the_network_off(dashboard, capsys):
    import optuna

    from search.cli import main
    from search.report.notes import PLOTLY_ATTR

    base, study, tmp = dashboard
    trial = study.trials[0]
    metas = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
    curve = next(m for m in metas if m.filename.startswith("learning-curve"))
    url = f"{base}/artifacts/{study._study_id}/{trial._trial_id}/{curve.artifact_id}"
    raw, _ = _page_text(url, tmp / "profile3")
    assert _rendered_by_plotly(raw), raw[:2000]
    assert "cdn.plot.ly" not in raw
    # plotly.js is stored once for the study, not once per trial
    study_metas = optuna.artifacts.get_all_artifact_meta(study)
    assert [m.filename for m in study_metas] == ["plotly.min.js"]
    assert study_metas[0].artifact_id == study.user_attrs[PLOTLY_ATTR]

    out = tmp / "figures" / "cm.html"
    out.parent.mkdir()
    url = f"sqlite:///{tmp / 'studies.db'}"  # the storage_url the fixture ran on
    rc = main(["evaluate", "--study", "dash", "--storage", url, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert (out.parent / "plotly.min.js").is_file()
    raw, _ = _page_text(out.as_uri(), tmp / "profile4")
    assert _rendered_by_plotly(raw), raw[:2000]


def test_dashboard_refuses_a_busy_port(write_study, storage_url, capsys):
    from conftest import TINY_DIGITS

    from search.cli import main

    write_study("dash", TINY_DIGITS)
    run_study(plan_run(load_study("dash"), storage=storage_url), n_trials=1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["dashboard", "--study", "dash", "--storage", storage_url, "--port", str(port)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: cannot serve on 127.0.0.1:") and "--port" in err[-1]
