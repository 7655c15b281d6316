"""The shipped demos end to end, as the README runs them, at a quick size (fewer trials and
epochs through ``--trials`` and ``--set``): ``digits``, then ``digits_source`` and
``digits_transfer`` (transfer from digits 0-4 to 5-9 through ``study:digits_source``)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from search.cli import main

QUICK = ["--set", "train.epochs=1", "-q"]


def test_the_digits_demo_runs_end_to_end(storage_url, capsys, tmp_path):
    args = ["--study", "digits", "--storage", storage_url]
    assert main(["run", *args, "--trials", "2", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "study      digits  (" in out and "optuna-dashboard sqlite:///" in out
    study = optuna.load_study(study_name="digits", storage=storage_url)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2
    first = study.trials[0]  # the enqueued baseline runs first
    assert first.params["optim.lr"] == 0.003 and first.params["model.width"] == 16
    assert first.state == TrialState.COMPLETE and first.value > 0.5  # 10 classes
    assert first.user_attrs["config"]["data.image_size"] == 16

    assert main(["best", *args, "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["value"] == study.best_value
    assert Path(study.best_trial.user_attrs["checkpoint"]).is_file()

    out_dir = tmp_path / "export"
    assert main(["export", *args, "--out", str(out_dir), "--format", "md"]) == 0
    assert (out_dir / "digits-trials.md").is_file()


def test_digits_source_then_digits_transfer_run_end_to_end(storage_url, monkeypatch):
    import trainer
    import trainer.loop

    built: list[dict] = []  # each trained model's weights as built, before training
    real_build = trainer.loop.build_model

    def build_model(*args, **kwargs):
        model = real_build(*args, **kwargs)
        built.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(trainer.loop, "build_model", build_model)
    store = ["--storage", storage_url]
    assert main(["run", "--study", "digits_source", "--trials", "2", *store, *QUICK]) == 0
    source = optuna.load_study(study_name="digits_source", storage=storage_url)
    built.clear()
    assert main(["run", "--study", "digits_transfer", "--trials", "2", *store, *QUICK]) == 0
    target = optuna.load_study(study_name="digits_transfer", storage=storage_url)
    assert [t.state for t in target.trials] == [TrialState.COMPLETE] * 2
    path = source.best_trial.user_attrs["checkpoint"]
    weights, _ = trainer.read_checkpoint(path)
    backbone = {k: v for k, v in weights.items() if k.startswith("backbone.")}
    assert backbone and len(built) == 2
    for t, start in zip(target.trials, built, strict=True):
        cfg = t.user_attrs["config"]
        # the source study's best weights, on the five other digits with a new 5-way head
        assert cfg["model.pretrained"] == path and cfg["data.classes"] == [5, 6, 7, 8, 9]
        assert all(torch.equal(start[k], v) for k, v in backbone.items())
