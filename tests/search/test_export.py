"""``search export`` from storage alone: the study's own tables, checked against numbers
computed here from the stored trials."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.cli import main

# complete trials' values; a pruned and a failed trial must not count
VALUES = [0.5, 0.9, 0.7, 0.8, 0.6, 0.65]


def _expected_best(values: list[float], k: int) -> float:
    """E[max of k draws with replacement] = sum_i v_(i) ((i/n)^k - ((i-1)/n)^k)."""
    v, n = sorted(values), len(values)
    return sum(x * ((i / n) ** k - ((i - 1) / n) ** k) for i, x in enumerate(v, 1))


@pytest.fixture
def exported(storage_url, tmp_path) -> Path:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name="made", storage=storage_url, direction="maximize")
    for i, value in enumerate(VALUES):
        study.add_trial(
            optuna.trial.create_trial(
                params={"optim.lr": 10.0 ** -(i + 1)},
                distributions={"optim.lr": optuna.distributions.FloatDistribution(1e-7, 1.0)},
                value=value,
                user_attrs={"epochs_run": 2, "best_epoch": 1},
            )
        )
    dist = {"optim.lr": optuna.distributions.FloatDistribution(1e-7, 1.0)}
    study.add_trial(optuna.trial.create_trial(params={"optim.lr": 0.5}, distributions=dist,
                                              state=TrialState.PRUNED, intermediate_values={1: 0.99}))  # fmt: skip
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    out = tmp_path / "out"
    args = ["export", "--study", "made", "--storage", storage_url, "--out", str(out)]
    assert main([*args, "--format", "json,md"]) == 0
    return out


def test_export_writes_the_expected_best_after_k_trials_table(exported):
    (path,) = exported.glob("expected-best*.json")
    table = json.loads(path.read_text())
    assert table["title"] == "Expected best validation accuracy after k trials"
    records = table["records"]
    assert [r["k"] for r in records] == [1, 2, 5]  # the ks up to the 6 complete trials
    for record in records:
        assert record["Expected best (%)"] == pytest.approx(
            100 * _expected_best(VALUES, record["k"])
        )
    # one trial is the mean of the complete trials; more trials can only raise it
    assert records[0]["Expected best (%)"] == pytest.approx(100 * sum(VALUES) / len(VALUES))
    means = [r["Expected best (%)"] for r in records]
    assert means == sorted(means) and means[-1] < 100 * max(VALUES)
    assert not math.isnan(records[-1]["Std (%)"]) and records[0]["Std (%)"] > 0
    assert "6 finished trials" in " ".join(table["notes"])
    assert path.with_suffix(".md").is_file()


def test_export_writes_the_trials_table_with_every_trial(exported):
    (path,) = exported.glob("made-trials.json")
    records = json.loads(path.read_text())["records"]
    assert [r["state"] for r in records] == ["complete"] * 6 + ["pruned", "fail"]
    assert [r["value"] for r in records[:6]] == VALUES
