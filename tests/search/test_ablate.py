"""search ablate / export: paired repeats in a companion study, resume, tables from storage."""

from __future__ import annotations

import csv
import json

import optuna
import pytest
from conftest import TINY_DIGITS
from optuna.trial import TrialState

import search.experiments.ablate as ablate_mod
from search.cli import main
from search.experiments.ablate import plan_ablation, run_ablation
from search.report.export import ablation_tables, export_study
from search.report.progress import Progress
from search.report.runs import companion_name
from search.report.stats import mean_ci
from search.store.storage import open_storage
from search.study.studyfile import load_study

ABLATION = """
[ablation]
repeats = 2
baseline = "defaults"

[ablation.fixed]
"optim.lr" = 0.001
"model.dropout" = 0.0
"train.epochs" = 2

[ablation.factors]
"optim.lr" = [0.001, 0.01]
"model.dropout" = [0.0, 0.5]
"""


@pytest.fixture
def study(write_study):
    write_study("abl", TINY_DIGITS + ABLATION)
    return load_study("abl")


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=companion_name("abl"), storage=url).get_trials()


def test_arms_share_runs_and_repeats_are_paired(study, storage_url):
    plan = plan_ablation(study, storage=storage_url)
    run_ablation(plan, progress=Progress(quiet=True))
    trials = _trials(storage_url)
    # baseline, lr=0.01, dropout=0.5 (lr=0.001 and dropout=0.0 are the baseline itself)
    assert len(trials) == 3 * 2
    assert all(t.state == TrialState.COMPLETE for t in trials)
    from optuna_dashboard import get_note

    storage = open_storage(storage_url)
    companion = optuna.load_study(study_name=companion_name("abl"), storage=storage)
    # optuna.Trial wants the storage's trial id: looked up by number through the public API
    first_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(companion.study_name), companion.trials[0].number
    )
    first = optuna.Trial(companion, first_id)
    note = get_note(first)  # each run carries its dashboard note (config table)
    assert "ran all 2 epochs" in note or "no val_acc gain" in note
    assert "| `optim.lr` |" in note
    for t in trials:
        assert t.user_attrs["config"]["train.seed"] == t.user_attrs["repeat"]
        assert len(t.intermediate_values) == t.user_attrs["epochs_run"]
    labels = {(t.user_attrs["label"], t.user_attrs["repeat"]) for t in trials}
    assert labels == {
        (lab, r) for lab in ("baseline", "optim.lr=0.01", "model.dropout=0.5") for r in (0, 1)
    }


def test_interrupted_ablation_resumes_without_redoing_runs(study, storage_url, monkeypatch):
    real_train = ablate_mod.trainer.train
    calls = []

    def flaky(cfg, **kw):
        calls.append(cfg)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_train(cfg, **kw)

    monkeypatch.setattr(ablate_mod.trainer, "train", flaky)
    plan = plan_ablation(study, storage=storage_url)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(plan, progress=Progress(quiet=True))
    states = [t.state for t in _trials(storage_url)]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1
    failed = [t for t in _trials(storage_url) if t.state == TrialState.FAIL][0]
    assert "interrupted" in failed.user_attrs["reason"]

    calls.clear()
    monkeypatch.setattr(
        ablate_mod.trainer, "train", lambda cfg, **kw: (calls.append(cfg), real_train(cfg, **kw))[1]
    )
    run_ablation(plan_ablation(study, storage=storage_url), progress=Progress(quiet=True))
    assert len(calls) == 3  # only the missing runs
    complete = [t for t in _trials(storage_url) if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    assert len({(t.user_attrs["arm"], t.user_attrs["repeat"]) for t in complete}) == 6


def test_tables_are_recomputed_from_storage(study, storage_url):
    run_ablation(plan_ablation(study, storage=storage_url), progress=Progress(quiet=True))
    # a fresh handle on the storage: nothing from the process that ran the trials
    companion = optuna.load_study(study_name=companion_name("abl"), storage=storage_url)
    tables = {t.title: t for t in ablation_tables(companion)}
    lr = tables["Ablation: optim.lr"]
    assert lr.headers == ["optim.lr", "0.001", "0.01"]
    finals = [
        t.user_attrs["final_val_acc"]
        for t in companion.trials
        if t.user_attrs["label"] == "optim.lr=0.01"
    ]
    expected = mean_ci(finals).format(scale=100.0, decimals=2)
    row = next(r for r in lr.rows if r[0].startswith("Final validation"))
    assert row[2] == expected
    delta = next(r for r in lr.rows if r[0].startswith("Δ"))
    assert delta[1] == "—" and "p" in delta[2]


def test_export_writes_every_format_and_figures(study, storage_url, tmp_path):
    from search.experiments.run import plan_run, run_study

    run_study(plan_run(study, storage=storage_url), n_trials=3, progress=Progress(quiet=True))
    run_ablation(plan_ablation(study, storage=storage_url), progress=Progress(quiet=True))
    out = tmp_path / "export"
    written = export_study(
        "abl", storage=storage_url, out_dir=str(out), formats=["md", "csv", "tex", "html", "json"]
    )
    names = {p.name for p in written}
    for stem in ("ablation-optim.lr", "ablation-model.dropout", "abl-trials"):
        for ext in ("md", "csv", "tex", "html", "json"):
            assert f"{stem}.{ext}" in names, (stem, ext, sorted(names))
    data = json.loads((out / "ablation-optim.lr.json").read_text())
    assert data["title"] == "Ablation: optim.lr"
    with open(out / "abl-trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {r["state"] for r in rows} <= {"complete", "pruned"}
    assert (out / "figures" / "optimization-history.html").is_file()
    assert (out / "figures" / "ablation-curves-optim.lr.html").is_file()
    assert (out / "figures" / "plotly.min.js").is_file()


def test_cli_ablate_prints_tables_and_rejects_bad_factors(study, storage_url, capsys):
    code = main(
        [
            "ablate",
            "--study",
            "abl",
            "--storage",
            storage_url,
            "-q",
            "--factor",
            "model.dropout=0.0,0.3",
            "--repeats",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "Ablation: model.dropout" in out and "Max validation accuracy" in out

    before = len(_trials(storage_url))
    code = main(["ablate", "--study", "abl", "--storage", storage_url, "--factor", "optim.lrr=1,2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "optim.lr" in err[-1]
    code = main(
        ["ablate", "--study", "abl", "--storage", storage_url, "--factor", "optim.lr=-1,0.1"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "optim.lr must be > 0" in err[-1]
    assert len(_trials(storage_url)) == before


def test_fruit3_reproduces_seed_004_tables_with_no_factor_flags(tmp_path, storage_url, capsys):
    """`search ablate --study fruit3` takes its factors from the study file's [ablation]."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["cherry", "strawberry", "tomato"]):
        d = tmp_path / "fruit3" / name
        d.mkdir(parents=True)
        for i in range(10):
            img = np.full((20, 20, 3), 60 * c + 40, dtype=np.int16) + rng.integers(
                -15, 16, (20, 20, 3)
            )
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.jpg")
    code = main(
        [
            "ablate",
            "--study",
            "fruit3",
            "--storage",
            storage_url,
            "-q",
            "--repeats",
            "1",
            "--data",
            str(tmp_path / "fruit3"),
            "--set",
            "data.image_size=16",
            "--set",
            "train.epochs=2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    for title, header in (
        ("Ablation: data.batch_size", "| data.batch_size"),
        ("Ablation: optim.lr", "| optim.lr"),
        ("Ablation: model.dropout", "| model.dropout"),
    ):
        assert title in out and header in out
    assert "| Training time (s)" in out and "| Max training accuracy" in out
    trials = optuna.load_study(study_name="fruit3.ablation", storage=storage_url).trials
    assert len(trials) == 7  # baseline + 2 batch sizes + 3 learning rates + 1 dropout
