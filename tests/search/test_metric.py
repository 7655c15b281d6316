"""A study file's ``metric``: what the objective reports and returns, which way the study
optimises, what the pruner sees; metrics and directions that make no sense are refused."""

from __future__ import annotations

import optuna
import pytest
from conftest import TINY_DIGITS, one_error_line
from optuna.study import StudyDirection

from search.cli import main
from search.study.studyfile import load_study


def search_run(url: str, *args: str) -> int:
    return main(["run", "--study", "tiny", "-q", "--storage", url, *args])


@pytest.mark.parametrize(
    ("metric", "direction"),
    [("val_acc", "maximize"), ("val_loss", "minimize"), ("val_f1", "maximize")],
)
def test_the_direction_follows_the_metric(write_study, metric, direction):
    write_study("tiny", f'metric = "{metric}"\n' + TINY_DIGITS)
    spec = load_study("tiny")
    assert (spec.metric, spec.direction) == (metric, direction)
    # the kept epoch of every trial is chosen by the same metric
    assert spec.base_config().get("train.monitor", "val_acc") == metric


def test_a_val_loss_study_minimises_the_kept_epochs_loss(write_study, storage_url):
    write_study("tiny", 'metric = "val_loss"\n' + TINY_DIGITS)
    assert search_run(storage_url, "--trials", "2") == 0
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert study.direction == StudyDirection.MINIMIZE
    assert study.metric_names == ["val_loss"]
    for t in study.trials:
        losses = t.user_attrs["curves"]["val_loss"]
        # the pruner saw the loss after every epoch, and the value is the lowest one: the
        # epoch whose weights are kept (train.monitor = val_loss)
        assert [t.intermediate_values[e] for e in range(1, len(losses) + 1)] == losses
        assert t.value == min(losses) == losses[t.user_attrs["best_epoch"] - 1]
        assert t.user_attrs["config"]["train.monitor"] == "val_loss"


class _WithF1:
    """A reporter in front of the search's: every epoch's metrics get a val_f1 (half the
    val_acc, in place, so the run's history has it too), as the fake trainer has none."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def report(self, epoch, metrics) -> None:
        metrics["val_f1"] = metrics["val_acc"] / 2
        self.inner.report(epoch, metrics)

    def should_stop(self) -> bool:
        return self.inner.should_stop()


def test_a_val_f1_study_reports_and_returns_macro_f1(write_study, storage_url, monkeypatch):
    from faketrain import FakeTrain

    import trainer

    fake = FakeTrain()

    def train(cfg, *, reporter, **kwargs):
        return fake(cfg, reporter=_WithF1(reporter), **kwargs)

    monkeypatch.setattr(trainer, "train", train)
    write_study("tiny", 'metric = "val_f1"\n' + TINY_DIGITS)
    assert search_run(storage_url, "--trials", "2") == 0
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert study.direction == StudyDirection.MAXIMIZE
    for t in study.trials:
        f1 = t.user_attrs["curves"]["val_f1"]
        assert t.value == f1[t.user_attrs["best_epoch"] - 1]
        assert list(t.intermediate_values.values()) == f1
        assert f1 != t.user_attrs["curves"]["val_acc"]


BAD = {
    "unknown metric": ('metric = "accuracy"\n', ["unknown metric", "'accuracy'", "val_f1"]),
    "direction against the metric": (
        'metric = "val_loss"\ndirection = "maximize"\n',
        ["direction = 'maximize' contradicts metric = 'val_loss'", "leave out direction"],
    ),
    "minimised accuracy": (
        'direction = "minimize"\n',
        ["contradicts metric = 'val_acc' (higher is better)"],
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_metric_or_direction_that_cannot_work_is_refused(
    case, write_study, storage_url, tmp_path, capsys
):
    head, expected = BAD[case]
    write_study("tiny", head + TINY_DIGITS)
    assert search_run(storage_url, "--trials", "1") == 2
    one_error_line(capsys, *expected)
    assert not (tmp_path / "studies.db").exists()
