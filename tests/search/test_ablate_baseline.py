"""``search ablate --baseline best``: the best trial's configuration, with every key the
ablation pins (``--set``, ``[ablation.fixed]``) applied, whatever its section."""

from __future__ import annotations

import optuna
from conftest import TINY_DIGITS

from search.cli import main

ABLATION = """
[ablation]
repeats = 1
baseline = "best"

[ablation.fixed]
"train.epochs" = 2
"data.augment" = "light"

[ablation.factors]
"model.dropout" = [0.0, 0.5]
"""


def test_set_and_ablation_fixed_keys_in_any_section_reach_every_run(
    write_study, storage_url, fake_train
):
    write_study("abl", TINY_DIGITS + ABLATION)
    assert main(["run", "--study", "abl", "--trials", "2", "-q", "--storage", storage_url]) == 0
    best = optuna.load_study(study_name="abl", storage=storage_url).best_trial
    best_config = best.user_attrs["config"]
    fake_train.calls.clear()
    pins = ["--set", "data.image_size=6", "--set", "optim.lr=0.02", "--set", "train.patience=1"]
    assert main(["ablate", "--study", "abl", "-q", "--storage", storage_url, *pins]) == 0
    runs = [c.to_flat() for c in fake_train.calls]
    assert len(runs) == 3  # the baseline (the best trial's dropout), dropout 0.0 and 0.5
    asked = {
        "data.image_size": 6,  # --set, outside train.*: dropped before
        "optim.lr": 0.02,
        "train.patience": 1,
        "train.epochs": 2,  # [ablation.fixed]
        "data.augment": "light",
    }
    for run in runs:
        assert {k: run[k] for k in asked} == asked
        # everything else is the best trial's (the factor and the repeat's seed aside)
        rest = {k for k in run if k not in asked and k not in ("model.dropout", "train.seed")}
        assert {k: run[k] for k in rest} == {k: best_config[k] for k in rest}


def test_data_moves_the_best_baselines_folder(write_study, storage_url, fake_train, tmp_path):
    from search.experiments.ablate import plan_ablation
    from search.study.studyfile import load_study

    write_study("abl", TINY_DIGITS + ABLATION)
    assert main(["run", "--study", "abl", "--trials", "1", "-q", "--storage", storage_url]) == 0
    moved = tmp_path / "moved"
    moved.mkdir()
    plan = plan_ablation(load_study("abl"), storage=storage_url, data_root=str(moved))
    assert plan.baseline["data.root"] == str(moved.resolve())
    assert {a.config["data.root"] for a in plan.arms} == {str(moved.resolve())}
