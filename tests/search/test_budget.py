"""Cost-aware search: duration parsing, the per-study throughput cache, over_budget pruning,
and ``--budget`` ending a run (the running trial stopped at its next step)."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import optuna
import pytest
from conftest import TINY_DIGITS
from optuna.trial import TrialState

import trainer
from search.cli import main
from search.experiments.cost import CostModel, cache_key, estimate_seconds
from search.study.budget import (
    RunLimits,
    fmt_duration,
    parse_duration,
    parse_minutes,
    resolve_run_limits,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def load(url: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def with_budget(text: str, extra: str) -> str:
    return TINY_DIGITS.replace("[budget]\n", f"[budget]\n{extra}\n")


class CountingMeasure:
    """Stands in for trainer.measure_throughput: a fixed speed, and how often it was asked."""

    def __init__(self, images_per_second: float) -> None:
        self.ips = images_per_second
        self.calls: list[str] = []

    def __call__(self, cfg, *, num_classes, in_chans=3, **kw) -> trainer.Throughput:
        self.calls.append(cfg.model.backbone)
        return trainer.Throughput(self.ips, "cpu:test", cfg.data.batch_size, 3)


@pytest.fixture
def fake_speed(monkeypatch):
    """fake_speed(images/s) -> the CountingMeasure that every CostModel now uses."""

    def install(ips: float) -> CountingMeasure:
        measure = CountingMeasure(ips)
        monkeypatch.setattr(trainer, "measure_throughput", measure)
        return measure

    return install


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("2h", 7200),
        ("45s", 45),
        ("90", 90),
        (" 1.5h ", 5400),
        (120, 120),
        (2.5, 2.5),
        ("0.5s", 0.5),  # under a second is still a duration
    ],
)
def test_durations_with_suffixes_or_bare_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["30x", "", "m", "-5m", "0", "0s", "1e3", True, None, "30 min"])
def test_bad_durations_name_the_key_and_an_example(bad):
    with pytest.raises(ValueError, match=r"^--budget must be .*30m"):
        parse_duration(bad)


def test_flags_override_the_study_file_budget():
    section = {"wall": "10m", "max_trial_minutes": 2}
    got = resolve_run_limits(section, where="s.toml")
    assert got == RunLimits(wall_seconds=600.0, max_trial_seconds=120.0)
    got = resolve_run_limits(section, where="s.toml", wall="1h", max_trial_minutes=0.5)
    assert got == RunLimits(wall_seconds=3600.0, max_trial_seconds=30.0)
    assert not resolve_run_limits({}, where="s.toml").costed


@pytest.mark.parametrize(
    ("section", "flags", "named"),
    [
        ({"wall": "soon"}, {}, "s.toml [budget] wall must be a duration"),
        ({"max_trial_minutes": -1}, {}, "s.toml [budget] max_trial_minutes must be"),
        ({"wall": "10m"}, {"wall": "soon"}, "--budget must be a duration"),
        ({}, {"max_trial_minutes": 0}, "--max-trial-minutes must be"),
    ],
)
def test_a_bad_budget_names_the_file_or_the_flag_it_came_from(section, flags, named):
    with pytest.raises(ValueError, match="^" + re.escape(named)):
        resolve_run_limits(section, where="s.toml", **flags)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-3, "0s"), (0, "0s"), (0.4, "0s"), (59.4, "59s"), (60, "1m00s"), (61, "1m01s"),
     (119, "1m59s"), (3599, "59m59s"), (3600, "1h00m"), (3661, "1h01m"), (7199, "1h59m"),
     (3720, "1h02m"), (5400, "1h30m"), (90061, "25h01m")],
)  # fmt: skip
def test_durations_are_written_in_seconds_then_minutes_then_hours(seconds, text):
    assert fmt_duration(seconds) == text


@pytest.mark.parametrize(
    ("extra", "args", "expected"),
    [
        ('wall = "soon"', [], "[budget] wall must be a duration such as 30m"),
        ("wall = 0", [], "[budget] wall must be more than 0 seconds"),
        ("max_trial_minutes = -1", [], "[budget] max_trial_minutes must be more than 0"),
        ("", ["--budget", "forever"], "--budget must be a duration such as 30m"),
        ("", ["--max-trial-minutes", "0"], "--max-trial-minutes must be more than 0"),
        ("", [], "--trials N is needed unless a wall-clock budget is given"),
    ],
)
def test_bad_budget_is_one_error_line_and_writes_nothing(
    write_study, tmp_path, capsys, extra, args, expected
):
    write_study("tiny", with_budget(TINY_DIGITS, extra))
    trials = ["--trials", "1"] if args or extra else []
    rc = main(["run", "--study", "tiny", "-q", *trials, *args])  # default storage in the cwd
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert list(Path.cwd().iterdir()) == []  # no storage, no artifacts


# --------------------------------------------------------------------------- the cache


def test_throughput_is_measured_once_per_key_and_stored_in_the_study():
    study = optuna.create_study(direction="maximize")
    measure = CountingMeasure(1000.0)
    cost = CostModel(study, measure=measure)
    base = {"model.backbone": "small_cnn", "model.width": 8, "data.image_size": 8}
    cfg = trainer.TrainConfig.from_flat({**base, "data.batch_size": 64, "train.epochs": 4})
    data = trainer.load_data(cfg.data)
    first = cost.estimate(cfg, data)
    again = CostModel(study, measure=measure).estimate(cfg, data)  # another worker, same study
    assert first.measured and not again.measured
    assert measure.calls == ["small_cnn"]
    assert first.seconds == again.seconds == pytest.approx(estimate_seconds(cfg, data, 1000.0))
    key = cache_key(cfg, first.key.rsplit("|", 1)[1])
    assert study.user_attrs[key]["images_per_second"] == 1000.0
    # another batch size or width is another cost: measured once more
    other = trainer.TrainConfig.from_flat({**base, "data.batch_size": 32})
    assert cost.estimate(other, data).measured
    assert cost.estimate(other.replace({"model.width": 16}), data).measured
    assert len(measure.calls) == 3


def test_estimate_counts_every_epoch_of_training_and_evaluation():
    cfg = trainer.TrainConfig.from_flat(
        {"data.image_size": 8, "data.batch_size": 100, "train.epochs": 3}
    )
    data = trainer.load_data(cfg.data)
    n_train, n_val = len(data.x_train), len(data.x_val)
    expected = 3 * ((n_train // 100) * 100 / 50.0 + n_val / (50.0 * 3))
    assert estimate_seconds(cfg, data, 50.0) == pytest.approx(expected)


def test_estimates_are_calibrated_by_the_seconds_earlier_trials_took():
    study = optuna.create_study(direction="maximize")
    cost = CostModel(study, measure=CountingMeasure(1000.0))
    cfg = trainer.TrainConfig.from_flat({"data.image_size": 8, "train.epochs": 4})
    data = trainer.load_data(cfg.data)
    before = cost.estimate(cfg, data)
    assert before.calibration == 1.0 and before.seconds == before.raw_seconds
    # three trained trials: per epoch they took 2x, 3x and 10x their raw estimate; two of
    # them ran every epoch of 4, one was pruned after 2
    for factor, run in ((2.0, 4), (3.0, 2), (10.0, 4)):
        trial = study.ask()
        trial.set_user_attr("config", {"train.epochs": 4})
        trial.set_user_attr("raw_estimated_seconds", 8.0)
        trial.set_user_attr("epochs_run", run)
        trial.set_user_attr("train_seconds", factor * 2.0 * run)
        study.tell(trial, 0.5)
    after = cost.estimate(cfg, data)
    assert after.calibration == pytest.approx(3.0)  # the median
    assert after.seconds == pytest.approx(3.0 * after.raw_seconds)
    assert after.epoch_share == pytest.approx(1.0)  # median of 1, 0.5, 1


def test_a_second_trial_and_a_rerun_reuse_the_measured_throughput(
    write_study, storage_url, fake_speed, fake_train, monkeypatch
):
    from search.store import Storage

    write_study("tiny", with_budget(TINY_DIGITS, "max_trial_minutes = 60"))
    measure = fake_speed(5000.0)
    held: list[str] = []  # the storage-wide locks held now
    exclusive = Storage.exclusive

    @contextlib.contextmanager
    def spied(self, key, **kw):
        with exclusive(self, key, **kw):
            held.append(key)
            try:
                yield
            finally:
                held.remove(key)

    def measured(cfg, **kw):
        assert [k for k in held if k.startswith("throughput:")], "measured without the lock"
        return measure(cfg, **kw)

    monkeypatch.setattr(Storage, "exclusive", spied)
    monkeypatch.setattr(trainer, "measure_throughput", measured)
    assert main(["run", "--study", "tiny", "--trials", "2", "-q", "--storage", storage_url]) == 0
    assert measure.calls == ["small_cnn"]  # one key, under the lock that other workers wait on
    assert main(["run", "--study", "tiny", "--trials", "3", "-q", "--storage", storage_url]) == 0
    assert measure.calls == ["small_cnn"]  # the rerun read it from the study
    study = load(storage_url)
    keys = [k for k in study.user_attrs if k.startswith("throughput:")]
    assert len(keys) == 1 and study.user_attrs[keys[0]]["images_per_second"] == 5000.0
    assert len(study.get_trials(states=FINISHED)) == 3
    for t in study.trials:
        assert t.user_attrs["estimated_seconds"] > 0
        assert t.user_attrs["images_per_second"] == 5000.0


# --------------------------------------------------------------------------- over_budget


def test_over_budget_configurations_are_pruned_untrained_with_their_estimate(
    write_study, storage_url, fake_speed
):
    write_study("tiny", TINY_DIGITS)
    fake_speed(10.0)  # ~10 images/s: a 3-epoch digits trial is estimated at minutes
    rc = main(
        ["run", "--study", "tiny", "--trials", "2", "-q", "--storage", storage_url,
         "--max-trial-minutes", "1"]
    )  # fmt: skip
    assert rc == 0
    trials = load(storage_url).trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    for t in trials:
        assert t.user_attrs["status"] == "over_budget"
        assert t.user_attrs["reason"].startswith("over_budget: estimated ")
        assert "over the 1 min limit" in t.user_attrs["reason"]
        assert t.user_attrs["estimated_seconds"] > 60
        assert t.intermediate_values == {}  # never trained
        assert "epochs_run" not in t.user_attrs


def test_configurations_within_max_trial_minutes_train(write_study, storage_url, fake_speed):
    write_study("tiny", with_budget(TINY_DIGITS, "max_trial_minutes = 1"))
    fake_speed(1e6)
    assert main(["run", "--study", "tiny", "--trials", "1", "-q", "--storage", storage_url]) == 0
    (t,) = load(storage_url).trials
    assert t.state == TrialState.COMPLETE and t.user_attrs["estimated_seconds"] < 60


# --------------------------------------------------------------------------- --budget

SLOW = TINY_DIGITS.replace("epochs = 3", "epochs = 200").replace("patience = 2", "patience = 0")


def test_budget_stops_the_running_trial_and_a_rerun_goes_on(
    write_study, storage_url, fake_speed, monkeypatch, capsys
):
    # The estimate says a trial takes a moment (fake speed); a 0.3 s pause in every epoch
    # (fault injection) makes its 200 epochs take minutes, so the deadline stops it mid-trial.
    write_study("tiny", SLOW)
    fake_speed(1e6)
    monkeypatch.setenv("HPSEARCH_FAULTS", "epoch_sleep=0.3")
    budget = 4.0  # enough for the set-up before the first trial, even on a loaded machine
    args = ["run", "--study", "tiny", "-q", "--storage", storage_url]
    t0 = time.monotonic()
    assert main([*args, "--trials", "50", "--budget", f"{budget:g}s"]) == 0
    elapsed = time.monotonic() - t0
    assert elapsed <= budget * 1.1 + 30  # the bound, generous on a loaded machine
    err = capsys.readouterr().err
    assert "budget: 4s spent with 1 of 50 trials finished" in err

    (t,) = load(storage_url).trials
    assert t.state == TrialState.PRUNED and t.user_attrs["status"] == "budget"
    assert "wall-clock budget ran out in epoch" in t.user_attrs["reason"]
    # however many epochs finished before the deadline (the machine's load decides) are
    # its intermediate values; the trainer's tests stop at a fixed step and keep epoch 1
    epochs = t.user_attrs["epochs_run"]
    assert epochs < 200 and f"{epochs} finished epoch" in t.user_attrs["reason"]
    assert sorted(t.intermediate_values) == list(range(1, epochs + 1))
    assert "checkpoint" not in t.user_attrs

    # a rerun with a new budget (and no --trials: the budget alone ends it) goes on
    assert main([*args, "--budget", "4"]) == 0
    trials = load(storage_url).trials
    assert len(trials) == 2 and trials[0].state == TrialState.PRUNED
    assert trials[1].state == TrialState.PRUNED and trials[1].user_attrs["status"] == "budget"


def test_trials_end_the_run_when_they_come_before_the_budget(write_study, storage_url, fake_speed):
    write_study("tiny", TINY_DIGITS)
    fake_speed(1e6)
    rc = main(["run", "--study", "tiny", "--trials", "2", "--budget", "1h", "-q",
               "--storage", storage_url])  # fmt: skip
    assert rc == 0
    assert len(load(storage_url).get_trials(states=FINISHED)) == 2


def test_the_wall_clock_counts_from_the_given_start_or_else_from_now(
    write_study, storage_url, fake_speed, fake_train
):
    import io

    from search.experiments.run import plan_run, run_study
    from search.report.progress import Progress
    from search.study.studyfile import load_study

    write_study("tiny", TINY_DIGITS)  # no [budget] refit: the wall clock is the search's
    fake_speed(1e6)
    plan = plan_run(load_study("tiny"), storage=storage_url)
    limits = RunLimits(wall_seconds=60)
    # the command started 40 s ago (its set-up counts): the trial ends with 20 s left
    half = io.StringIO()
    run_study(plan, n_trials=1, limits=limits, started=time.monotonic() - 40,
              progress=Progress(half))  # fmt: skip
    left = re.search(r"\] 1/1 trial 0 .* \| (\d+)s left of 1m00s", half.getvalue())
    assert left and int(left[1]) <= 20, half.getvalue()
    # two minutes ago: the minute is spent before a trial starts
    spent = io.StringIO()
    run_study(plan, n_trials=2, limits=limits, started=time.monotonic() - 120,
              progress=Progress(spent))  # fmt: skip
    assert len(load(storage_url).trials) == 1 and len(fake_train.calls) == 1
    assert "budget: 1m00s spent with 1 of 2 trials finished; rerun with a new --budget" in (
        spent.getvalue()
    )
    assert "refit" not in spent.getvalue()
    alone = io.StringIO()  # the budget alone ends the run: the count has no "of"
    run_study(plan, n_trials=None, limits=limits, started=time.monotonic() - 120,
              progress=Progress(alone))  # fmt: skip
    assert "study 'tiny': 1 trials finished; wall-clock budget 1m00s; storage " in (
        alone.getvalue()
    )
    run_study(plan, n_trials=2, limits=limits, progress=Progress(io.StringIO()))  # from now
    assert len(load(storage_url).get_trials(states=FINISHED)) == 2


def test_no_trial_starts_that_cannot_finish_in_the_time_left(
    write_study, storage_url, fake_speed, capsys
):
    write_study("tiny", TINY_DIGITS)
    fake_speed(1.0)  # 1 image/s: every configuration is estimated at hours
    rc = main(["run", "--study", "tiny", "--budget", "10m", "-q", "--storage", storage_url])
    assert rc == 0
    trials = load(storage_url).trials
    assert len(trials) == 3  # three draws in a row did not fit, so the run ended
    for t in trials:
        assert t.state == TrialState.FAIL and t.user_attrs["status"] == "no_time"
        assert t.user_attrs["reason"].startswith("no_time: not run, estimated ")
        assert t.intermediate_values == {} and "epochs_run" not in t.user_attrs
    assert "cannot finish in the" in capsys.readouterr().err


def test_a_run_draws_on_past_misfits_while_a_cheaper_configuration_fits(
    write_study, storage_url, monkeypatch, fake_train
):
    # Batch 128 is estimated at a moment; every other batch size at hours. Four in five draws
    # cannot fit the 10 minutes, so misfits come in runs; the cheap configuration seen first
    # still fits, so the run draws on until the trials are done instead of ending after three.
    study = TINY_DIGITS.replace('"data.batch_size" = 128\n', "").replace(
        "[fixed]", '[params]\n"data.batch_size" = [16, 24, 32, 48, 128]\n\n[fixed]'
    )
    write_study("tiny", study + '\n[[enqueue]]\n"data.batch_size" = 128\n')

    def measure(cfg, *, num_classes, in_chans=3, **kw) -> trainer.Throughput:
        ips = 1e6 if cfg.data.batch_size == 128 else 1.0
        return trainer.Throughput(ips, "cpu:test", cfg.data.batch_size, 3)

    monkeypatch.setattr(trainer, "measure_throughput", measure)
    rc = main(["run", "--study", "tiny", "--trials", "4", "--budget", "10m", "-q",
               "--storage", storage_url])  # fmt: skip
    assert rc == 0
    trials = load(storage_url).trials
    done = [t for t in trials if t.state != TrialState.FAIL]
    assert len(done) == 4 and all(t.params["data.batch_size"] == 128 for t in done)
    statuses = "".join("m" if t.user_attrs.get("status") == "no_time" else "." for t in trials)
    assert "mmm" in statuses  # what used to end the run


def test_a_run_ends_after_25_misfits_in_a_row_even_while_a_cheaper_configuration_fits(
    write_study, storage_url, monkeypatch, fake_train, capsys
):
    # The enqueued batch 64 is estimated at a moment and trains; every other batch size of
    # the range is estimated at hours, and the draws after it never hit 64 again. The cheap
    # configuration still fits, so the run draws on past three misfits, but not past 25.
    study = TINY_DIGITS.replace('"data.batch_size" = 128\n', "").replace(
        "[fixed]", '[params]\n"data.batch_size" = { low = 16, high = 127 }\n\n[fixed]'
    )
    write_study("tiny", study + '\n[[enqueue]]\n"data.batch_size" = 64\n')

    def measure(cfg, *, num_classes, in_chans=3, **kw) -> trainer.Throughput:
        ips = 1e6 if cfg.data.batch_size == 64 else 1.0
        return trainer.Throughput(ips, "cpu:test", cfg.data.batch_size, 3)

    monkeypatch.setattr(trainer, "measure_throughput", measure)
    rc = main(["run", "--study", "tiny", "--trials", "5", "--budget", "10m", "-q",
               "--storage", storage_url])  # fmt: skip
    assert rc == 0
    first, *misfits = load(storage_url).trials
    assert first.state == TrialState.COMPLETE and first.params["data.batch_size"] == 64
    assert len(misfits) == 25
    assert all(t.user_attrs["status"] == "no_time" for t in misfits)
    assert len(fake_train.calls) == 1
    assert "budget: 25 configurations in a row cannot finish" in capsys.readouterr().err


def test_the_cheapest_configuration_is_judged_at_the_calibration_trials_have_shown_since():
    # The first draw is estimated by the probe alone; trials then train 10x slower than the
    # probe said. "A cheaper configuration still fits" must use what it would take now, or a
    # stale estimate keeps a run with seconds left drawing 25 misfits instead of 3.
    from search.experiments.objective import Objective

    study = optuna.create_study(direction="maximize")
    cost = CostModel(study, measure=CountingMeasure(1000.0))
    objective = Objective(space="none", base={}, fixed={}, checkpoint_dir=None, cost=cost,
                          deadline=time.monotonic() + 3600)  # fmt: skip
    cfg = trainer.TrainConfig.from_flat(
        {"data.name": "digits", "data.image_size": 8, "data.batch_size": 64, "train.epochs": 3}
    )
    first = objective._check_cost(study.ask(), cfg, {}, cost)
    assert objective.cheapest_expected == pytest.approx(first)
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=0.5,
        user_attrs={"raw_estimated_seconds": 1.0, "epochs_run": 3, "train_seconds": 10.0,
                    "config": {"train.epochs": 3}},
    ))  # fmt: skip
    assert objective.cheapest_expected == pytest.approx(10 * first)


@pytest.mark.parametrize("bad", ["5", None, True, [5]])
def test_trial_minutes_must_be_a_number(bad):
    with pytest.raises(ValueError) as info:
        parse_minutes(bad)
    assert str(info.value) == (
        f"--max-trial-minutes must be a number of minutes such as 5 or 2.5, but got {bad!r}"
    )


def test_trial_minutes_are_seconds_and_the_key_is_named():
    assert parse_minutes(2.5) == 150.0 and parse_minutes(1) == 60.0
    with pytest.raises(ValueError, match=r"^\[budget\] max_trial_minutes must be more than 0"):
        parse_minutes(0, key="[budget] max_trial_minutes")


def test_the_throughput_cache_key_names_everything_that_decides_a_step_cost():
    def key(**flat):
        return cache_key(trainer.TrainConfig.from_flat(flat), "cpu:2t")

    base = {"data.image_size": 32, "data.batch_size": 64}
    assert key(**base, **{"model.backbone": "small_cnn", "model.width": 16}) == (
        "throughput:small_cnn-w16|32px|batch64|plain|cpu:2t"
    )
    assert key(**base, **{"model.backbone": "resnet18", "optim.name": "sam_adam"}) == (
        "throughput:resnet18|32px|batch64|sam|cpu:2t"
    )  # timm backbones ignore model.width; SAM's two passes are another cost
    # the probe trains in the trial's memory format and precision, so they are part of it;
    # train.compile is not (the probe never compiles)
    off = {"model.backbone": "resnet18", "train.channels_last": False, "train.amp": False}
    assert key(**base, **off) == "throughput:resnet18|32px|batch64|plain|nchw|noamp|cpu:2t"
    assert key(**base, **{"model.backbone": "resnet18", "train.compile": True}) == (
        key(**base, **{"model.backbone": "resnet18"})
    )


def test_a_probe_that_ran_out_of_memory_is_remembered_as_not_fitting():
    from search.experiments.cost import DoesNotFit
    from trainer.throughput import device_label

    study = optuna.create_study(direction="maximize")
    cfg = trainer.TrainConfig.from_flat({"data.image_size": 8, "data.batch_size": 64})
    data = trainer.load_data(cfg.data)
    measure = CountingMeasure(1000.0)
    cost = CostModel(study, measure=measure)
    key = cost.images_per_second(cfg, data)[1]
    study.set_user_attr(key, {"oom": "out of memory at batch 64"})  # an earlier trial's probe
    with pytest.raises(DoesNotFit) as info:
        cost.images_per_second(cfg, data)
    assert str(info.value) == (
        "oom: the speed probe ran out of memory at batch 64 (an earlier trial's probe)"
    )
    assert len(measure.calls) == 1  # not probed again
    # the key ends with this device's label: another device is another cost
    assert key.endswith("|" + device_label(trainer.select_device(cfg.train.device)))


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_the_prior_epoch_share_is_a_fraction(share):
    with pytest.raises(ValueError, match=r"prior_share must be in \(0, 1\]"):
        CostModel(optuna.create_study(), prior_share=share)
    assert CostModel(optuna.create_study(), prior_share=1.0).prior_share == 1.0


def test_the_probe_is_asked_for_the_data_shape_and_its_out_of_memory_is_stored():
    from search.experiments.cost import DoesNotFit

    asked: list[tuple[int, int]] = []

    def measure(cfg, *, num_classes, in_chans, **kw):
        asked.append((num_classes, in_chans))
        raise trainer.ProbeOutOfMemory("out of memory at micro-batch 2")

    study = optuna.create_study(direction="maximize")
    cfg = trainer.TrainConfig.from_flat({"data.image_size": 8, "data.batch_size": 64})
    data = trainer.load_data(cfg.data)
    with pytest.raises(DoesNotFit, match=r"^oom: the speed probe ran out of memory at micro"):
        CostModel(study, measure=measure).images_per_second(cfg, data)
    assert asked == [(data.num_classes, data.in_chans)] == [(10, 1)]  # the digits
    (entry,) = [v for k, v in study.user_attrs.items() if k.startswith("throughput:")]
    assert entry["oom"] == "out of memory at micro-batch 2" and entry["seconds"] >= 0


def test_the_calibration_reads_finished_search_trials_only_and_refits_for_speed_alone():

    def trial(state=TrialState.COMPLETE, *, raw=10.0, epochs=10, run=10, secs=20.0, **attrs):
        user = {"raw_estimated_seconds": raw, "config": {"train.epochs": epochs},
                "epochs_run": run, "train_seconds": secs, **attrs}  # fmt: skip
        value = None if state == TrialState.FAIL else 0.5
        return optuna.trial.create_trial(state=state, value=value, user_attrs=user)

    study = optuna.create_study(direction="maximize")
    for t in [
        trial(),  # 2x the estimate, all its epochs
        trial(raw=None),  # no estimate: skipped, and the trials after it still count
        trial(TrialState.PRUNED, run=5, secs=10.0),  # 2x, half its epochs
        trial(TrialState.FAIL, secs=100.0),  # crashed or lost: its timing is not a trial's
        trial(run=7, secs=70.0, resumed_from_epoch=3),  # a resumed run's time is partial
        trial(raw=30.0, epochs=30, run=30, secs=90.0, refit_of=0),  # 3x; a refit's length
        trial(TrialState.PRUNED, run=2, secs=6.0),  # 3x, a fifth of its epochs
    ]:
        study.add_trial(t)
    ratio, share = CostModel(study).calibration()
    assert ratio == pytest.approx(2.5)  # the median of 2, 2, 3, 3
    assert share == pytest.approx(0.5)  # the median of 1, 0.5, 0.2: the refit's is by design


def test_estimate_counts_repeated_epochs_whole_accumulated_steps_and_sams_evaluation_share():
    from search.experiments.cost import _EVAL_SHARE

    cfg = trainer.TrainConfig.from_flat(
        {"data.image_size": 8, "data.batch_size": 30, "train.epochs": 2,
         "data.epoch_repeats": 2, "train.accum_steps": 2, "optim.name": "sam_sgd"}
    )  # fmt: skip
    data = trainer.load_data(cfg.data)
    n_train, n_val = 2 * len(data.x_train), len(data.x_val)  # every image twice an epoch
    trained = (n_train // 60) * 60  # whole steps of 30 x 2 accumulated images
    assert trained != n_train  # a ragged last step to drop
    expected = 2 * (trained / 50.0 + n_val / (50.0 * _EVAL_SHARE[True]))
    assert _EVAL_SHARE[True] != _EVAL_SHARE[False]  # SAM's evaluation share is its own
    assert estimate_seconds(cfg, data, 50.0) == pytest.approx(expected)
