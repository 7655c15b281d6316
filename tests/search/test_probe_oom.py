"""A configuration that runs out of device memory in the speed probe, even at the smallest
micro-batch, ends its trial PRUNED with status ``oom`` (not FAIL, which samplers ignore and
three of which in a row end the run), and the study remembers it: the same cost key is never
probed again."""

from __future__ import annotations

import optuna
import pytest
from conftest import TINY_DIGITS
from optuna.trial import TrialState

import trainer
from search.cli import main
from search.experiments.cost import CostModel, DoesNotFit

TOO_BIG = "out of memory at micro-batch 2 x 64 accumulation steps, the smallest allowed is 2"


class NeverFits:
    """Stands in for trainer.measure_throughput: every probe runs out of memory."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, cfg, *, num_classes, in_chans=3, **kw) -> trainer.Throughput:
        self.calls += 1
        raise trainer.ProbeOutOfMemory(f"{TOO_BIG} (CUDA out of memory. Tried to allocate 9 GiB)")


def test_a_probe_out_of_memory_is_remembered_for_every_worker():
    study = optuna.create_study(direction="maximize")
    measure = NeverFits()
    cfg = trainer.TrainConfig.from_flat({"data.image_size": 8, "data.batch_size": 128})
    data = trainer.load_data(cfg.data)
    with pytest.raises(DoesNotFit, match=f"^oom: the speed probe ran {TOO_BIG}"):
        CostModel(study, measure=measure).estimate(cfg, data)
    with pytest.raises(DoesNotFit, match=r"^oom: .*\(an earlier trial's probe\)$"):
        CostModel(study, measure=measure).estimate(cfg, data)  # another worker, same study
    assert measure.calls == 1
    (entry,) = [v for k, v in study.user_attrs.items() if k.startswith("throughput:")]
    assert entry["oom"].startswith(TOO_BIG) and "images_per_second" not in entry


def test_trials_that_do_not_fit_are_pruned_as_oom_and_the_run_goes_on(
    write_study, storage_url, monkeypatch
):
    """The real probe, with the GPU's out-of-memory error made on the CPU (every micro-batch
    above one image fails): four trials, the probe runs once, each trial is PRUNED as oom."""
    write_study("tiny", TINY_DIGITS.replace("[budget]\n", "[budget]\nmax_trial_minutes = 60\n"))
    probes = []
    real_measure = trainer.measure_throughput

    def counting(*args, **kwargs):
        probes.append(args[0].data.batch_size)
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(trainer, "measure_throughput", counting)
    monkeypatch.setenv("HPSEARCH_FAULTS", "oom_above=1")
    rc = main(["run", "--study", "tiny", "--trials", "4", "-q", "--storage", storage_url])
    assert rc == 0  # FAIL x 3 would have ended the run with an error
    trials = optuna.load_study(study_name="tiny", storage=storage_url).trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 4
    assert probes == [128]  # probed once: the other trials read the study's cache
    for t in trials:
        assert t.user_attrs["status"] == "oom"
        assert t.user_attrs["reason"].startswith("oom: the speed probe ran out of memory")
        assert t.intermediate_values == {}  # never trained
