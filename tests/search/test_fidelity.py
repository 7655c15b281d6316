"""Budgets that finish the job: multi-fidelity over epochs (successive halving, its expected
cost), the winner trained longer as a refit trial that ``best``/``predict``/``confirm`` use,
and a budgeted study that stores no pile of FAIL trials."""

from __future__ import annotations

import datetime
import json
import os
import re
import time
import tomllib
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import TINY_DIGITS, one_error_line
from optuna.trial import TrialState

import search.experiments.init as si
import trainer
from search.cli import main
from search.experiments.ablate import _best_config
from search.experiments.confirm import _top_configs
from search.experiments.cost import CostModel
from search.experiments.evaluate import pick_trial
from search.experiments.objective import OptunaReporter
from search.experiments.run import REFIT_MAX_EPOCHS_FACTOR, refit_length, refit_share
from search.report.summary import best_record
from search.store import FINISHED, Storage
from search.store.workers import WORKER_ATTR
from search.study.refit import REFIT_ATTR, best_search_trial, best_trial
from search.study.samplers import bracket_rungs, expected_epoch_share
from search.study.studyfile import load_study

SH = {"name": "successive_halving", "min_resource": 2, "reduction_factor": 3}
# Fake training speeds at 64 px (images/s), as in test_init: a probe at size S gets (64/S)^2
SPEED_AT_64 = {
    "seed_cnn": 100.0, "small_cnn": 50.0, "resnet18": 3.0, "resnet34": 1.0,
    "efficientnet_b2": 1.5, "resnet50": 0.5,
}  # fmt: skip


def make_folder(root: Path, per_class: int) -> Path:
    """Two classes of 100 px JPEG crops of scikit-learn's two sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    for c, name in enumerate(("china", "flower")):
        for i in range(per_class):
            side = int(rng.integers(80, 240))
            y, x = (int(rng.integers(0, n - side)) for n in photos[c].shape[:2])
            path = root / name / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            crop = Image.fromarray(photos[c][y : y + side, x : x + side]).resize((100, 100))
            crop.save(path, quality=90)
    return root


def load(url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def fixed_speed(monkeypatch, ips: float) -> None:
    def measure(cfg, *, num_classes, in_chans=3, **kw) -> trainer.Throughput:
        return trainer.Throughput(ips, "cpu:test", cfg.data.batch_size, 3)

    monkeypatch.setattr(trainer, "measure_throughput", measure)


# ------------------------------------------------------------------ the bracket's cost


def test_successive_halving_expects_each_stretch_by_the_share_that_passed_the_rung_before():
    # rungs 2 and 6 of 18 epochs: all train 2, a third 4 more, a ninth the last 12
    assert bracket_rungs(SH, max_epochs=18) == [2, 6]
    assert expected_epoch_share(SH, max_epochs=18) * 18 == pytest.approx(2 + 4 / 3 + 12 / 9)
    # a rung at train.epochs is no rung: a trial that ran every epoch is complete
    assert bracket_rungs(SH, max_epochs=6) == [2]
    assert expected_epoch_share(SH, max_epochs=6) * 6 == pytest.approx(2 + 4 / 3)
    assert expected_epoch_share(SH, max_epochs=2) == 1.0


def test_hyperband_mixes_its_brackets_in_optunas_proportions():
    hb = {"name": "hyperband", "min_resource": 2, "reduction_factor": 3}
    # 3 brackets (first rungs 2, 6, 18) take 9, 5 and 3 of every 17 trials
    expected = (9 * (2 + 4 / 3 + 12 / 9) + 5 * (6 + 12 / 3) + 3 * 18) / 17
    assert expected_epoch_share(hb, max_epochs=18) * 18 == pytest.approx(expected)


@pytest.mark.parametrize("table", [{"name": "median"}, {"name": "none"}, {"name": "percentile"}])
def test_pruners_without_brackets_expect_every_epoch(table):
    assert expected_epoch_share(table, max_epochs=10) == 1.0
    assert bracket_rungs(table, max_epochs=10) == []


def test_the_cost_model_plans_with_the_bracket_share_then_blends_in_what_trials_ran():
    study = optuna.create_study(direction="maximize")
    measure = lambda cfg, **kw: trainer.Throughput(1000.0, "cpu:test", 64, 3)  # noqa: E731
    share = expected_epoch_share(SH, max_epochs=18)
    cost = CostModel(study, measure=measure, prior_share=share)
    cfg = trainer.TrainConfig.from_flat({"data.image_size": 8, "train.epochs": 18})
    data = trainer.load_data(cfg.data)
    before = cost.estimate(cfg, data)
    assert before.epoch_share == pytest.approx(share)
    assert before.expected_seconds == pytest.approx(before.seconds * share)
    for run in (2, 2, 18):  # two stopped at the first rung, one ran to the top
        trial = study.ask()
        trial.set_user_attr("config", {"train.epochs": 18})
        trial.set_user_attr("raw_estimated_seconds", 18.0)
        trial.set_user_attr("epochs_run", run)
        trial.set_user_attr("train_seconds", float(run))
        study.tell(trial, 0.5)
    after = cost.estimate(cfg, data)
    # the mean (the top-rung trial's cost counts), the prior weighing as three trials
    assert after.epoch_share == pytest.approx((3 * share + 2 / 18 + 2 / 18 + 1) / 6)
    with pytest.raises(ValueError, match="prior_share must be in"):
        CostModel(study, prior_share=0.0)


def _sh_study(extra_budget: str = "", epochs: int = 18) -> str:
    return (
        TINY_DIGITS.replace("epochs = 3", f"epochs = {epochs}")
        .replace("patience = 2", "patience = 0")
        .replace(
            'name = "none"', 'name = "successive_halving"\nmin_resource = 2\nreduction_factor = 3'
        )
        .replace("[budget]\n", f"[budget]\n{extra_budget}\n")
    )


def test_the_per_trial_limit_applies_to_the_expected_cost_under_a_bracket_pruner(
    write_study, storage_url, monkeypatch, fake_train
):
    # ~ 18 epochs x 1437 digits / 500 images/s = 52 s a full trial, ~13 s expected: over a
    # 0.5 min limit in full, within it as successive halving runs it
    fixed_speed(monkeypatch, 500.0)
    args = ["--trials", "1", "-q", "--storage", storage_url, "--max-trial-minutes", "0.5"]
    write_study("tiny", _sh_study())
    assert main(["run", "--study", "tiny", *args]) == 0
    (t,) = load(storage_url).trials
    assert t.state == TrialState.COMPLETE and t.user_attrs["estimated_seconds"] > 30
    write_study("flat", TINY_DIGITS.replace("epochs = 3", "epochs = 18"))
    assert main(["run", "--study", "flat", *args]) == 0
    (t,) = load(storage_url, "flat").trials
    assert t.state == TrialState.PRUNED and t.user_attrs["status"] == "over_budget"


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


@pytest.mark.parametrize("prune", [True, False])
def test_a_trial_is_never_pruned_after_its_last_epoch_and_a_refit_never(prune):
    study = optuna.create_study(pruner=AlwaysPrune())
    reporter = OptunaReporter(study.ask(), None, 3, prune=prune)
    asked = []
    for epoch in (1, 2, 3):
        reporter.report(epoch, {"val_acc": 0.5})
        asked.append(reporter.should_stop())
    assert asked == ([True, True, False] if prune else [False, False, False])


def test_under_successive_halving_trials_stop_at_rungs_and_the_top_ones_complete(
    write_study, storage_url, monkeypatch, fake_train
):
    fixed_speed(monkeypatch, 1e6)
    write_study("tiny", _sh_study(epochs=6).replace('"data.batch_size" = 128\n', ""))
    rc = main(["run", "--study", "tiny", "--trials", "8", "-q", "--storage", storage_url])
    assert rc == 0
    trials = load(storage_url).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and all(max(t.intermediate_values) == 2 for t in pruned)  # the rung
    assert complete and all(max(t.intermediate_values) == 6 for t in complete)


# ------------------------------------------------------------------------- the refit


def test_a_budget_without_a_refit_share_keeps_no_time_for_a_refit():
    assert refit_share({"wall": "10m"}) == 0.0  # study files written before the refit
    assert refit_share({"wall": "10m", "refit": 0.25}) == 0.25
    assert refit_share({"refit": 0}) == 0.0


def test_refit_length_fills_the_time_left_up_to_three_times_the_epochs():
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    for key, value in {
        "config": {"train.epochs": 10, "train.patience": 3},
        "epochs_run": 10,
        "train_seconds": 20.0,  # 2 s an epoch
        "setup_seconds": 1.0,
    }.items():
        trial.set_user_attr(key, value)
    study.tell(trial, 0.5)
    source = study.trials[0]
    assert refit_length(source, seconds_left=1000.0) == (30, 8, 61.0)  # at most 3x, patience/4
    epochs, patience, seconds = refit_length(source, seconds_left=30.0)  # 0.85 x 30 s fits 12
    assert (epochs, patience) == (12, 3) and seconds <= 30.0
    assert refit_length(source, seconds_left=20.0) is None  # no more epochs than it ran
    assert REFIT_MAX_EPOCHS_FACTOR == 3


def _finished(**attrs) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(value=0.5, user_attrs=attrs)


def test_refit_length_keeps_early_stopping_off_and_needs_the_sources_epochs_and_time():
    # 2 s an epoch, no setup: 1000 s hold the 3x cap of 30 epochs
    full = {"config": {"train.epochs": 10}, "epochs_run": 10, "train_seconds": 20.0}
    assert refit_length(_finished(**full), seconds_left=1000.0) == (30, 0, 60.0)  # patience 0
    for missing in ("epochs_run", "train_seconds"):
        partial = {k: v for k, v in full.items() if k != missing}
        assert refit_length(_finished(**partial), seconds_left=1000.0) is None
    no_epochs = {**full, "config": {"train.patience": 3}}
    assert refit_length(_finished(**no_epochs), seconds_left=1000.0) is None
    assert refit_length(_finished(**{**full, "epochs_run": 0}), seconds_left=1000.0) is None


def test_a_budgeted_run_refits_the_best_search_trial_and_best_predict_confirm_use_it(
    write_study, storage_url, monkeypatch, fake_train, capsys
):
    fixed_speed(monkeypatch, 1e6)
    fake_train.epoch_seconds = 0.01234  # an estimate with more than two decimals to round
    write_study(
        "tiny", _sh_study("refit = 0.25", epochs=6).replace('"data.batch_size" = 128\n', "")
    )
    rc = main(["run", "--study", "tiny", "--trials", "5", "--budget", "10m", "-q",
               "--storage", storage_url])  # fmt: skip
    assert rc == 0
    study = load(storage_url)
    refits = [t for t in study.trials if REFIT_ATTR in t.user_attrs]
    # the refit keeps its weights among the three trials that may
    kept = [t.number for t in study.trials if Path(t.user_attrs.get("checkpoint", "-")).exists()]
    assert len(kept) == 3 and refits[0].number in kept
    assert len(refits) == 1
    (refit,) = refits
    source = best_search_trial(study)
    assert refit.user_attrs[REFIT_ATTR] == source.number and refit.state == TrialState.COMPLETE
    assert refit.params == source.params
    config = refit.user_attrs["config"]
    assert config["train.epochs"] == 3 * 6  # the time left holds 3x the top rung
    assert {k: v for k, v in config.items() if k not in ("train.epochs", "train.patience")} == {
        k: v for k, v in source.user_attrs["config"].items()
        if k not in ("train.epochs", "train.patience")
    }  # fmt: skip
    assert fake_train.calls[-1].train.epochs == 18
    assert max(refit.intermediate_values) == 18  # never pruned on the way
    # priced at the source's own seconds per epoch, its speed carried over for the cost model
    a = source.user_attrs
    per_epoch = a["train_seconds"] / a["epochs_run"]
    expected = round(float(a.get("setup_seconds") or 0.0) + 18 * per_epoch, 2)
    assert refit.user_attrs["estimated_seconds"] == expected
    assert refit.user_attrs["images_per_second"] == a["images_per_second"] > 0
    # the probe's estimate of the source, scaled to the refit's epochs: calibrates later ones
    raw = a["raw_estimated_seconds"]
    assert refit.user_attrs["raw_estimated_seconds"] == round(raw * 18 / 6, 2) > 0
    assert refit.system_attrs[WORKER_ATTR]["pid"] == os.getpid()  # claimed by this worker

    # best, predict/evaluate and confirm take the refit, whatever its value against trial k
    assert best_trial(study).number == refit.number
    assert pick_trial(study, None).number == refit.number
    candidates, _ = _top_configs(study, 3)
    assert candidates[0].trial == refit.number
    assert refit.number not in [c.trial for c in candidates[1:]]
    assert best_record(study)["refit_of"] == {"trial": source.number, "value": source.value}
    capsys.readouterr()
    assert main(["best", "--study", "tiny", "--storage", storage_url]) == 0
    out = capsys.readouterr().out
    assert f"best       trial {refit.number}:" in out
    assert f"refit of   trial {source.number} (val_acc {source.value:.4f})" in out
    assert main(["best", "--study", "tiny", "--storage", storage_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trial"] == refit.number
    # the refit's weights are kept, whatever its rank by value
    assert refit.user_attrs["checkpoint"]
    # and `search list` and an ablation's "best" baseline take it too, not Optuna's ranking
    capsys.readouterr()
    assert main(["list", "--storage", storage_url]) == 0
    out = capsys.readouterr().out
    assert f"best {refit.value:.4f} (trial {refit.number}, refit of {source.number})" in out
    assert _best_config("tiny", Storage.open(storage_url)).train.epochs == 18


def test_a_refit_below_its_search_trial_is_still_the_studys_best():
    study = optuna.create_study(direction="maximize")
    for value in (0.6, 0.8):
        study.tell(study.ask(), value)
    refit = study.ask()
    refit.set_user_attr(REFIT_ATTR, 1)
    study.tell(refit, 0.7)
    assert study.best_trial.number == 1  # Optuna's own rank: by value
    assert best_trial(study).number == 2  # ours: the refit of the best search trial
    study.tell(study.ask(), 0.9)  # a better search trial without a refit yet
    assert best_trial(study).number == 3


def test_the_dashboard_gets_the_weights_of_the_best_search_trials_refit_whatever_its_value():
    from search.report.notes import _beats_best

    study = optuna.create_study(direction="maximize")
    for value in (0.6, 0.8):
        study.tell(study.ask(), value)
    refit = study.ask()
    refit.set_user_attr(REFIT_ATTR, 1)  # below trial 1's 0.8, still the study's model
    assert _beats_best(refit, None)
    stale = study.ask()
    stale.set_user_attr(REFIT_ATTR, 0)  # a refit of a trial that is no longer the best
    assert not _beats_best(stale, None)


def test_a_second_worker_does_not_refit_the_same_trial_again(
    write_study, storage_url, monkeypatch, fake_train
):
    fixed_speed(monkeypatch, 1e6)
    write_study("tiny", _sh_study("refit = 0.25", epochs=6))
    args = ["run", "--study", "tiny", "-q", "--storage", storage_url, "--budget", "10m"]
    assert main([*args, "--trials", "2"]) == 0
    assert main([*args, "--trials", "2"]) == 0  # full: no trial, and trial k has its refit
    refits = [t for t in load(storage_url).trials if REFIT_ATTR in t.user_attrs]
    assert len(refits) == 1


def test_the_refit_is_one_trial_beyond_n_and_a_rerun_still_runs_n_search_trials(
    write_study, storage_url, monkeypatch, fake_train
):
    fixed_speed(monkeypatch, 1e6)
    write_study("tiny", _sh_study("refit = 0.25", epochs=6))
    args = ["run", "--study", "tiny", "-q", "--storage", storage_url]
    assert main([*args, "--trials", "2", "--budget", "10m"]) == 0
    trials = load(storage_url).trials
    assert [REFIT_ATTR in t.user_attrs for t in trials] == [False, False, True]
    assert main([*args, "--trials", "4"]) == 0  # the refit fills none of the 4 slots
    search = [t for t in load(storage_url).trials if REFIT_ATTR not in t.user_attrs]
    assert len(search) == 4 and all(t.state in FINISHED for t in search)


def test_no_refit_without_a_wall_clock_or_with_refit_0(write_study, storage_url, fake_train):
    write_study("tiny", _sh_study("refit = 0.25", epochs=6))
    assert main(["run", "--study", "tiny", "--trials", "2", "-q", "--storage", storage_url]) == 0
    write_study("off", _sh_study("refit = 0", epochs=6))
    args = ["--trials", "2", "--budget", "10m", "-q", "--storage", storage_url]
    assert main(["run", "--study", "off", *args]) == 0
    for name in ("tiny", "off"):
        assert all(REFIT_ATTR not in t.user_attrs for t in load(storage_url, name).trials)


@pytest.mark.parametrize("bad", ["1", "1.5", "-0.1", "nan"])
def test_a_bad_refit_share_is_one_error_line(write_study, capsys, bad):
    write_study("tiny", _sh_study(f"refit = {bad}"))
    assert main(["run", "--study", "tiny", "--trials", "1", "-q"]) == 2
    one_error_line(capsys, "[budget]: refit must be a share of the wall clock", "e.g. 0.25")


# ------------------------------------------------------------------ no FAIL clutter


def test_with_a_refit_the_first_draw_that_cannot_fit_ends_the_search(
    write_study, storage_url, monkeypatch, fake_train, capsys
):
    # batch 128 trains in a moment; every other batch size is estimated at hours. The first
    # misfit ends the search (its time goes to the refit): one draw stored as not run.
    study = _sh_study("refit = 0.25", epochs=6).replace('"data.batch_size" = 128\n', "")
    study = study.replace("[fixed]", '[params]\n"data.batch_size" = [16, 24, 128]\n\n[fixed]')
    write_study("tiny", study + '\n[[enqueue]]\n"data.batch_size" = 128\n')

    def measure(cfg, *, num_classes, in_chans=3, **kw) -> trainer.Throughput:
        ips = 1e6 if cfg.data.batch_size == 128 else 1.0
        return trainer.Throughput(ips, "cpu:test", cfg.data.batch_size, 3)

    monkeypatch.setattr(trainer, "measure_throughput", measure)
    rc = main(["run", "--study", "tiny", "--budget", "10m", "-q", "--storage", storage_url])
    assert rc == 0
    trials = load(storage_url).trials
    fails = [t for t in trials if t.state == TrialState.FAIL]
    finished = [t for t in trials if t.state != TrialState.FAIL]
    assert len(fails) == 1 and fails[0].user_attrs["status"] == "no_time"
    assert len(finished) > len(fails)
    assert any(REFIT_ATTR in t.user_attrs for t in finished)
    assert "goes to training the best trial longer" in capsys.readouterr().err
    # the summary counts the refused draw apart, not as a failure
    assert best_record(load(storage_url))["trials"].get("not run") == 1
    assert "fail" not in best_record(load(storage_url))["trials"]


# ---------------------------------------------------------------------- search init


def _kept(**per_epoch_minutes: float) -> list[si.BackboneCost]:
    """Estimates of 10-epoch trials at these minutes per epoch, plus the fixed overhead."""
    return [
        si.BackboneCost(b, 64, 1.0 / m, 10 * m + si.TRIAL_OVERHEAD_S / 60)
        for b, m in per_epoch_minutes.items()
    ]


def test_the_budget_decides_the_rungs():
    # per epoch: seed_cnn 0.05 min (the faster of two sets the rungs), small_cnn 0.25 min
    kept = _kept(seed_cnn=0.05, small_cnn=0.25)
    tops = {}
    for minutes in (2, 3, 10, 60):
        low, top, why = si._choose_schedule(kept, epochs=10, wall_seconds=60.0 * minutes)
        tops[minutes] = (low, top)
        assert f"and top {top} epochs: a bracket" in why and "of seed_cnn takes" in why
    # 60 min: 3 brackets of 27 trials up to 54 epochs (162 epochs, 8.1 min) fit 45 min, and
    # twice 54 epochs (5.4 min) fit the refit's 15; 10 min: 54 epochs would not (8.1 min a
    # bracket > 7.5 / 3), 18 would; 3 min: 9 trials up to 9 epochs take ~1 min > 2.25 / 3;
    # 2 min: twice 6 epochs (0.6 min) would not fit the refit's 0.5 min: the shortest
    assert tops == {2: (1, 3), 3: (2, 6), 10: (2, 18), 60: (2, 54)}


def test_the_rungs_are_sized_for_the_median_backbone_and_of_two_for_the_faster():
    # 10 min: 54 epochs fit a backbone at 0.01 min an epoch, 18 one at 0.05
    def top(**per_epoch: float) -> tuple[int, str]:
        _, top, why = si._choose_schedule(_kept(**per_epoch), epochs=10, wall_seconds=600.0)
        return top, re.search(r"epochs\) of (\S+) takes", why).group(1)

    assert top(seed_cnn=0.05) == (18, "seed_cnn")
    # of two, the faster: the first trial runs it, and the slower one's trials are held to
    # the per-trial limit by their expected cost
    assert top(seed_cnn=0.01, small_cnn=0.05) == (54, "seed_cnn")
    assert top(small_cnn=0.05, seed_cnn=0.25) == (18, "small_cnn")
    assert top(seed_cnn=0.01, small_cnn=0.05, resnet18=0.25) == (18, "small_cnn")
    assert top(a=0.01, b=0.05, c=0.25, d=1.0) == (18, "b")


def test_search_init_writes_the_schedule_the_sizes_and_the_refit_with_their_reasons(
    tmp_path, monkeypatch, capsys
):
    def measure(cfg, *, num_classes, in_chans=3, steps=3, warmup=1, max_seconds=20.0):
        ips = SPEED_AT_64[cfg.model.backbone] * (64 / cfg.data.image_size) ** 2
        return trainer.Throughput(ips, "cpu:test", cfg.data.batch_size, steps)

    monkeypatch.setattr(si, "measure_throughput", measure)
    root = make_folder(tmp_path / "photos", 15)
    assert main(["init", str(root), "--budget", "10m"]) == 0
    out = capsys.readouterr().out
    text = Path("studies/photos.toml").read_text()
    raw = tomllib.loads(text)
    assert raw["pruner"] == {"name": "successive_halving", "min_resource": 2, "reduction_factor": 3}
    # small_cnn, the median kept backbone, ~0.5 s an epoch: 3 brackets of 27 trials up to 54
    # epochs (162 epochs each, 1.4 min) fit the search's 7.5 min, twice 54 the refit's 2.5
    assert raw["budget"]["epochs"] == 54 and raw["budget"]["patience"] == 9
    assert raw["budget"]["refit"] == si.REFIT_SHARE == 0.25
    # 64 px for resnet18; 48 px below; 96 px (the images' size) fits seed_cnn's trial
    assert raw["data"]["image_size"] == 64
    assert raw["params"]["data.image_size"] == [48, 64, 96]
    assert raw["enqueue"][0]["data.image_size"] == 48  # low resolution first
    # the file and the output say why
    assert "# Multi-fidelity over epochs" in text and "The budget sets the rungs:" in text
    assert "rungs at 2, 6, 18 and top 54 epochs: a bracket (27 trials started" in text
    assert "# Image sizes 48, 64, 96 px: 48 px costs 56% of 64 px;" in text
    assert "# The last 25% of the wall clock trains the best trial's configuration" in text
    assert (
        "rungs    2, 6" in out
        and "searched 48, 64, 96 px" in out
        and "refit    the last 25%" in out
    )
    spec = load_study("photos")  # the study file parser accepts all of it
    assert spec.budget["refit"] == 0.25 and spec.pruner["name"] == "successive_halving"


def test_searched_sizes_reach_up_to_where_the_cheapest_kept_backbone_fits():
    # seed_cnn: 0.1 min of images per trial at 32 px; x2.25 at 48 px, x4 at 64, x9 at 96
    kept = [si.BackboneCost("seed_cnn", 32, 100.0, si.TRIAL_OVERHEAD_S / 60 + 0.1)]
    sizes, why = si._choose_sizes(kept, size=32, cap=96, floor=32, limit=1.0)
    assert sizes == [32, 48, 64]  # at most three, though 96 px would fit too
    assert "seed_cnn fits a trial at 64 px" in why
    assert si._choose_sizes(kept, size=32, cap=96, floor=32, limit=0.4)[0] == [32, 48]
    assert si._choose_sizes(kept, size=48, cap=96, floor=32, limit=0.2)[0] == [32, 48]
    assert si._choose_sizes(kept, size=32, cap=32, floor=32, limit=1.0)[0] == []


def test_a_refit_gets_the_epochs_the_time_left_holds_at_its_sources_pace(
    write_study, storage_url, monkeypatch, fake_train
):
    # every epoch reports 32 s of training: the refit's half of a 10 min budget holds 7
    # epochs at the safety margin, more than the 6 its source ran, so a refit is due; with 5
    # trials done at once about 600 s are left, 15 epochs, fewer than the 3x cap of 18
    fixed_speed(monkeypatch, 1e6)
    fake_train.epoch_seconds = 32.0
    write_study("tiny", _sh_study("refit = 0.5", epochs=6).replace('"data.batch_size" = 128\n', ""))
    rc = main(["run", "--study", "tiny", "--trials", "5", "--budget", "10m", "-q",
               "--storage", storage_url])  # fmt: skip
    assert rc == 0
    (refit,) = [t for t in load(storage_url).trials if REFIT_ATTR in t.user_attrs]
    source = load(storage_url).trials[refit.user_attrs[REFIT_ATTR]]
    assert source.user_attrs["train_seconds"] / source.user_attrs["epochs_run"] == 32.0
    setup = float(source.user_attrs.get("setup_seconds") or 0.0)
    most = int((600 * 0.85 - setup) // 32)  # the whole budget: an upper bound
    assert 12 <= refit.user_attrs["config"]["train.epochs"] <= most < 18


def test_when_no_refit_fits_the_search_goes_on_once_said_and_no_refit_is_tried(
    write_study, storage_url, monkeypatch, fake_train, capsys
):
    # the in-process counterpart of the next test: the trials, not the clock, end the run
    from search.experiments.objective import Objective

    fixed_speed(monkeypatch, 1e6)
    monkeypatch.setattr("search.experiments.run.refit_length", lambda source, **kw: None)
    deadlines: list[float] = []  # what each trial's cost was held to
    check = Objective._check_cost

    def checked(self, *args):
        deadlines.append(self.deadline - time.monotonic())
        return check(self, *args)

    monkeypatch.setattr(Objective, "_check_cost", checked)
    write_study("tiny", _sh_study("refit = 0.5", epochs=3))
    rc = main(["run", "--study", "tiny", "--budget", "10m", "--trials", "3",
               "--storage", storage_url])  # fmt: skip
    assert rc == 0
    # the first to the search's half of the budget, the rest to its end
    assert 280 < deadlines[0] <= 300 and all(580 < d <= 600 for d in deadlines[1:])
    err = capsys.readouterr().err
    assert err.count("the search goes on to the end of it") == 1  # said when it was decided
    assert "refit:" not in err  # no refit tried at the end
    trials = load(storage_url).trials
    assert len(trials) == 3 and all(REFIT_ATTR not in t.user_attrs for t in trials)


def test_a_search_whose_share_of_the_clock_is_spent_hands_the_rest_to_the_refit(
    write_study, storage_url, monkeypatch, fake_train, capsys
):
    import io

    from search.experiments.objective import Objective
    from search.experiments.run import plan_run, run_study
    from search.report.progress import Progress
    from search.study.budget import RunLimits

    fixed_speed(monkeypatch, 1e6)
    write_study("tiny", _sh_study("refit = 0.5", epochs=3))
    assert main(["run", "--study", "tiny", "--trials", "1", "-q", "--storage", storage_url]) == 0
    held_to: list[float] = []  # the refit's deadline, in seconds from when it started
    refit = Objective.refit

    def spied(self, trial, cfg, *, deadline):
        held_to.append(deadline - time.monotonic())
        return refit(self, trial, cfg, deadline=deadline)

    monkeypatch.setattr(Objective, "refit", spied)
    # the command started 40 s into a 60 s budget: the search's half is spent, 20 s are left
    lines = io.StringIO()
    run_study(plan_run(load_study("tiny"), storage=storage_url), n_trials=5,
              limits=RunLimits(wall_seconds=60), started=time.monotonic() - 40,
              progress=Progress(lines))  # fmt: skip
    assert "the rest of the budget trains the best one longer" in lines.getvalue()
    source, refitted = load(storage_url).trials
    assert refitted.user_attrs[REFIT_ATTR] == source.number
    assert refitted.state == TrialState.COMPLETE
    assert len(held_to) == 1 and 15 < held_to[0] <= 20  # the wall clock's end
    # its end line, as a search trial's: what it reached, and the best so far
    assert re.search(
        r"\] \S+ trial 1 complete val_acc .* \| best \S+ \(trial 1, refit of trial 0\)",
        lines.getvalue(),
    )


def test_when_no_refit_fits_the_search_goes_on_to_the_end_of_the_budget(
    write_study, storage_url, monkeypatch, fake_train, capsys
):
    # every trial takes ~1 s (0.2 s an epoch); the refit's half of a 10 s budget holds no
    # longer run of the winner (as refit_length says here), so the search gets all 10 s
    fixed_speed(monkeypatch, 1e6)
    fake_train.tick = lambda: time.sleep(0.2)
    monkeypatch.setattr("search.experiments.run.refit_length", lambda source, **kw: None)
    write_study("tiny", _sh_study("refit = 0.5", epochs=5))
    t0, start = time.monotonic(), datetime.datetime.now()
    rc = main(["run", "--study", "tiny", "--budget", "10s", "-q", "--storage", storage_url])
    assert rc == 0
    err = capsys.readouterr().err
    assert "no refit longer than the best trial's run fits" in err
    assert "the search goes on to the end" in err and "budget: 10s spent" in err
    assert time.monotonic() - t0 >= 10.0  # it did not stop at the search's half
    study = load(storage_url)
    assert all(REFIT_ATTR not in t.user_attrs for t in study.trials)
    late = [t for t in study.trials if (t.datetime_start - start).total_seconds() > 5.2]
    assert late  # trials started in the refit's half, after the search's own end


def test_a_refit_the_clock_stops_keeps_its_best_epoch(
    write_study, storage_url, monkeypatch, fake_train
):
    # the refit is given 400 epochs of 0.05 s: the end of the 20 s budget stops it midway
    fixed_speed(monkeypatch, 1e6)
    monkeypatch.setattr("search.experiments.run.refit_length", lambda source, **kw: (400, 0, 1.0))
    write_study("tiny", _sh_study("refit = 0.5", epochs=3))
    args = ["run", "--study", "tiny", "--budget", "20s", "--trials", "2", "-q"]
    fake_train.tick = lambda: time.sleep(0.05)
    assert main([*args, "--storage", storage_url]) == 0
    (refit,) = [t for t in load(storage_url).trials if REFIT_ATTR in t.user_attrs]
    assert refit.state == TrialState.COMPLETE
    assert refit.user_attrs["status"] == "budget"  # stopped by the clock, kept all the same
    run = refit.user_attrs["epochs_run"]
    assert 0 < run < 400 and refit.value == max(refit.intermediate_values.values())
    assert best_trial(load(storage_url)).number == refit.number


def test_a_refit_fits_only_in_the_time_from_the_searchs_end_to_the_wall_clocks(monkeypatch):
    import types

    import search.experiments.run as run_mod

    now = [1000.0]
    monkeypatch.setattr(run_mod, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    fits = run_mod._refit_fits
    empty = optuna.create_study(direction="maximize")
    # no complete search trial yet: the search goes on while it has time, then no refit
    assert fits(empty, 2000.0, search_end=1000.5) and not fits(empty, 2000.0, search_end=1000.0)
    study = optuna.create_study(direction="maximize")
    study.add_trial(_finished(config={"train.epochs": 4}, epochs_run=4, train_seconds=40.0))
    # 10 s an epoch: a longer run of it is 5 epochs, 50 s at the refit's safety margin
    need = 50.0 / run_mod.REFIT_TIME_SAFETY
    assert fits(study, 1000.0 + need + 0.5, search_end=1000.0)
    assert not fits(study, 1000.0 + need - 0.5, search_end=1000.0)
    # counted from the search's end when that is still ahead, else from now
    assert not fits(study, 1000.0 + need + 0.5, search_end=1001.0)
    now[0] = 1001.0
    assert not fits(study, 1000.0 + need + 0.5, search_end=900.0)
