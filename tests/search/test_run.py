"""``search run`` semantics through plan_run + run_study on a tiny digits study."""

from __future__ import annotations

import io
import math
import re

import optuna
import pytest
from conftest import TINY_DIGITS
from optuna.trial import TrialState

from search.experiments.run import plan_run, run_study
from search.report.progress import Progress
from search.study.studyfile import load_study
from trainer import TrainConfig

PRUNER_NONE = '[pruner]\nname = "none"\n'

# Trial 0 learns fast; trial 1 (same seed, hence the same initial weights) barely moves, so it
# is below the median of the one finished trial at epoch 1 and the median pruner stops it.
PRUNING = TINY_DIGITS.replace(
    PRUNER_NONE, '[pruner]\nname = "median"\nn_startup_trials = 1\nn_warmup_steps = 0\n'
) + (
    """
[[enqueue]]
"optim.lr" = 0.01
"optim.weight_decay" = 1e-6
"model.dropout" = 0.0
"loss.name" = "ce"
"sched.name" = "none"

[[enqueue]]
"optim.lr" = 0.0001
"optim.weight_decay" = 1e-6
"model.dropout" = 0.0
"loss.name" = "ce"
"sched.name" = "none"
"""
)


def quiet() -> Progress:
    return Progress(io.StringIO(), quiet=True)


def run(name: str, url: str, n: int, **plan_kwargs) -> optuna.Study:
    plan = plan_run(load_study(name), storage=url, **plan_kwargs)
    return run_study(plan, n_trials=n, progress=quiet())


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_fills_the_study_to_n_and_resumes(write_study, storage_url):
    from search.store import workers

    path = write_study("tiny", TINY_DIGITS)
    lines = io.StringIO()
    plan = plan_run(load_study("tiny"), storage=storage_url)
    study = run_study(plan, n_trials=2, progress=Progress(lines))  # as the API is called
    assert len(study.trials) == 2 and len(finished(study)) == 2
    out = lines.getvalue()
    assert "study 'tiny': 0 of 2 trials finished" in out  # announced by default
    assert "\ntrial 0: " in out and "\ntrial 1: " in out  # each trial's start, as it trains
    storage = optuna.storages.RDBStorage(storage_url)
    for trial in study.trials:  # its learning curve on the dashboard
        names = [m.filename for m in optuna.artifacts.get_all_artifact_meta(trial, storage=storage)]
        assert f"learning-curve-trial-{trial.number}.html" in names
        assert "estimated_seconds" not in trial.user_attrs  # no budget: no cost probe
    assert not [key for key in workers._CLAIMED_HERE if key[0] == storage_url]  # all released

    study = run("tiny", storage_url, 2)  # a rerun with the same N adds nothing
    assert len(study.trials) == 2

    study = run("tiny", storage_url, 3)  # a larger N adds only the difference
    assert len(study.trials) == 3 and len(finished(study)) == 3
    assert [t.number for t in study.trials] == [0, 1, 2]

    reloaded = optuna.load_study(study_name="tiny", storage=storage_url)
    assert len(reloaded.trials) == 3
    assert reloaded.user_attrs["space"] == "digits"
    assert reloaded.user_attrs["study_file"] == str(path)  # where it is defined, to the dashboard
    assert reloaded.metric_names == ["val_acc"]


def test_user_attrs_hold_curves_status_reason_and_config(write_study, storage_url):
    write_study("tiny", TINY_DIGITS)
    (trial,) = run("tiny", storage_url, 1).trials
    assert trial.state == TrialState.COMPLETE
    attrs = trial.user_attrs
    assert attrs["status"] in ("complete", "early_stopped")
    assert isinstance(attrs["reason"], str) and attrs["reason"]
    epochs = attrs["epochs_run"]
    assert 1 <= epochs <= 3
    curves = attrs["curves"]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "seconds"} <= set(curves)
    assert all(len(v) == epochs for v in curves.values())
    assert trial.intermediate_values == {i + 1: v for i, v in enumerate(curves["val_acc"])}
    assert trial.value == max(curves["val_acc"]) == attrs["best_val_acc"]
    assert attrs["best_epoch"] == curves["val_acc"].index(trial.value) + 1

    cfg = attrs["config"]
    assert TrainConfig.from_flat(cfg).to_flat() == cfg  # a complete, valid config
    assert cfg["data.image_size"] == 8 and cfg["train.epochs"] == 3  # the study's settings
    assert cfg["model.width"] == 8 and cfg["optim.name"] == "adam"  # its [fixed]
    for key, value in trial.params.items():
        assert cfg[key] == value
    assert "model.width" not in trial.params and "optim.name" not in trial.params


def test_median_pruner_prunes_a_weak_trial(write_study, storage_url):
    write_study("prune", PRUNING)
    study = run("prune", storage_url, 2)
    strong, weak = study.trials
    assert strong.state == TrialState.COMPLETE
    assert strong.params["optim.lr"] == 0.01 and weak.params["optim.lr"] == 0.0001
    assert weak.state == TrialState.PRUNED
    assert weak.user_attrs["status"] == "pruned"
    assert weak.user_attrs["reason"].startswith("pruned after epoch")
    epochs = weak.user_attrs["epochs_run"]
    assert epochs < 3
    val_acc = weak.user_attrs["curves"]["val_acc"]
    assert len(val_acc) == epochs
    assert weak.intermediate_values == {i + 1: v for i, v in enumerate(val_acc)}
    assert weak.intermediate_values[1] < strong.intermediate_values[1]
    assert weak.value == val_acc[-1]  # Optuna keeps a pruned trial's last report


@pytest.mark.filterwarnings("ignore:Fixed parameter optim.lr:UserWarning")
def test_nonfinite_trial_is_pruned_and_the_study_goes_on(write_study, storage_url):
    write_study("tiny", TINY_DIGITS)
    study = run("tiny", storage_url, 3, enqueue=[{"optim.lr": 1e30}])
    first, *rest = study.trials
    assert first.params["optim.lr"] == 1e30
    assert first.state == TrialState.PRUNED
    assert first.value is None
    assert first.user_attrs["status"] == "nonfinite_loss"
    assert "epoch 1" in first.user_attrs["reason"]
    assert len(rest) == 2 and len(finished(study)) == 3
    for t in study.trials:
        assert t.state != TrialState.COMPLETE or math.isfinite(t.value)
    assert any(t.state == TrialState.COMPLETE for t in rest)


def test_failing_trials_stop_the_run(write_study, storage_url, monkeypatch):
    import trainer

    def broken(cfg, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(trainer, "train", broken)
    write_study("tiny", TINY_DIGITS)
    with pytest.raises(RuntimeError, match="3 trials in a row failed; last: RuntimeError: disk"):
        run("tiny", storage_url, 5)
    study = optuna.load_study(study_name="tiny", storage=storage_url)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    assert "disk on fire" in study.trials[0].user_attrs["traceback"]
    assert study.trials[0].user_attrs["status"] == "error"


def test_a_trial_that_trains_starts_the_count_of_failures_in_a_row_anew(
    write_study, storage_url, monkeypatch, fake_train
):
    import trainer

    calls: list[int] = []

    def flaky(cfg, **kwargs):  # fail, fail, train, fail, fail, train
        calls.append(len(calls))
        if len(calls) % 3:
            raise RuntimeError("disk on fire")
        return fake_train(cfg, **kwargs)

    monkeypatch.setattr(trainer, "train", flaky)
    write_study("tiny", TINY_DIGITS)
    lines = io.StringIO()
    plan = plan_run(load_study("tiny"), storage=storage_url)
    study = run_study(plan, n_trials=2, progress=Progress(lines))  # two in a row never stop it
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] + [
        TrialState.FAIL
    ] * 2 + [TrialState.COMPLETE]
    # each trial's end, described, with the best so far
    assert re.search(
        r"\] 1/2 trial 2 complete val_acc .* \| best \S+ \(trial 2\)", lines.getvalue()
    )


def test_plan_refuses_bad_input_before_writing(write_study, tmp_path):
    write_study("tiny", TINY_DIGITS)
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    for fixed, match in [
        ({"loss.name": "fcal"}, "Did you mean 'focal'"),
        ({"optim.name": "adm"}, "Did you mean 'adam'"),
        ({"model.backbone": "resnt18"}, "Did you mean 'resnet18'"),
        ({"optim.lr": -1.0}, "optim.lr must be > 0, but got -1.0"),
    ]:
        with pytest.raises(ValueError, match=match):
            plan_run(load_study("tiny"), storage=url, fixed=fixed)
    with pytest.raises(ValueError, match="Did you mean 'focal'"):
        plan_run(load_study("tiny"), storage=url, enqueue=[{"loss.name": "fcal"}])
    assert not (tmp_path / "fresh.db").exists()
    plan = plan_run(load_study("tiny"), storage=url)
    with pytest.raises(ValueError, match="--trials must be >= 1, but got 0"):
        run_study(plan, n_trials=0, progress=quiet())
    with pytest.raises(ValueError, match=r"^--trials N is needed unless a wall-clock budget"):
        run_study(plan, n_trials=None, progress=quiet())
    with pytest.raises(ValueError, match="--timeout must be > 0 seconds, but got 0"):
        run_study(plan, n_trials=1, timeout=0, progress=quiet())
    assert not (tmp_path / "fresh.db").exists()
    accepted = run_study(plan, n_trials=1, timeout=0.5, progress=quiet())  # under a second
    assert accepted.study_name == "tiny"
