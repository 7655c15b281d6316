"""The shipped seed studies do what their headers say the seeds did (issue 23, "Seed
fidelity"): the recipe's settings, the assumptions and deviations the headers name, and the
tables of seeds 000 and 001 that `search confirm` and `search ablate` now give, trained end to
end at the quick profiles' size."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from PIL import Image

import spaces
import trainer
import trainer.augment
from search.cli import main
from search.experiments.cost import estimate_seconds
from search.report.runs import companion_name, confirm_name
from search.study.studyfile import load_study

FP32_SEEDS = ("food11", "kfood_scratch", "kfood_transfer", "hw100_resnext", "fruit3")
FP32_SEEDS += ("fruit3_transfer",)


def header(name: str) -> str:
    """The study file's opening comment, as one line of prose."""
    lines = load_study(name).path.read_text().splitlines()
    comment = []
    for line in lines:
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("# ").strip())
    return " ".join(comment)


def enqueued_configs(name: str, profile: str | None = None) -> list[trainer.TrainConfig]:
    """Each [[enqueue]] entry as the objective trains it: drawn from the space, with the keys
    the space does not draw set on the trial."""
    spec = load_study(name, profile=profile)
    space = spaces.resolve_space(spec.search_space)
    fixed = {k: v for k, v in spec.fixed.items() if not str(v).startswith("study:")}
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    out = []
    for params in spec.enqueue:
        study.enqueue_trial(params)
        trial = study.ask()
        cfg, drawn = spaces.build_config(space, trial, base=spec.base_config(), fixed=fixed)
        out.append(cfg.replace({k: v for k, v in params.items() if k not in drawn}))
        study.tell(trial, 0.0)
    return out


# -- what the headers say, and the settings that make it so ---------------------------------


@pytest.mark.parametrize("profile", [None, "quick"])
def test_food11_draws_the_seeds_rotation_twice(profile):
    data = trainer.TrainConfig.from_flat(load_study("food11", profile=profile).base_config()).data
    assert (data.rotation, data.rotations) == (10.0, 2)
    assert data.augment_settings()["rotations"] == 2  # what the trainer's augmentation gets


@pytest.mark.parametrize("profile", [None, "quick"])
def test_kfood_m1_runs_without_rotation_and_normalisation_and_m2_with_them(profile):
    m1, m2, resnet101 = enqueued_configs("kfood_scratch", profile)
    assert (m1.data.rotation, m1.data.normalize) == (0.0, "none")
    for cfg in (m2, resnet101):
        assert (cfg.data.rotation, cfg.data.normalize) == (10.0, "dataset")
    assert (m1.optim.name, m2.optim.name) == ("sgd", "adam")
    assert "no rotation, no normalisation" in header("kfood_scratch")


def test_hw100_resnext_states_its_reading_of_the_fully_connected_layer_and_ablates_both():
    text = header("hw100_resnext")
    assert "fine-tuning the fully connected layer" in text
    assert 'fine-tunes every layer (model.strategy = "full")' in text
    for profile in (None, "quick"):
        spec = load_study("hw100_resnext", profile=profile)
        assert spec.fixed["model.strategy"] == "full"
        assert spec.ablation["factors"]["model.strategy"] == ["full", "linear_probe"]


@pytest.mark.parametrize("name", ["fruit3", "fruit3_transfer"])
def test_fruit3_epochs_are_the_seeds_eight_passes_and_quick_ones_one(name):
    assert load_study(name).data["epoch_repeats"] == 8
    assert load_study(name, profile="quick").data["epoch_repeats"] == 1
    assert "data.epoch_repeats = 8" in header(name)


def test_the_cost_model_counts_every_pass_of_an_epoch():
    class Data:  # what the estimate reads of the data: the split sizes
        x_train = torch.zeros(100, 1)
        x_val = torch.zeros(30, 1)

    cfg = trainer.TrainConfig.from_flat({"data.batch_size": 10, "train.epochs": 3})
    one = estimate_seconds(cfg, Data(), 50.0)
    eight = estimate_seconds(cfg.replace({"data.epoch_repeats": 8}), Data(), 50.0)
    evaluation = 3 * 30 / (50.0 * 3)  # a forward pass is a third of a step
    assert one == pytest.approx(3 * 100 / 50.0 + evaluation)
    assert eight - evaluation == pytest.approx(8 * (one - evaluation))


@pytest.mark.parametrize("name", ["fruit3", "fruit3_transfer"])
def test_fruit3_headers_label_the_loss_and_dropout_as_assumptions(name):
    text = header(name)
    assert re.search(
        r"assumed, as the seed does not state them: cross-entropy .*dropout 0\.5", text
    )
    spec = load_study(name)
    assert spec.fixed["loss.name"] == "ce"
    assert all(e["model.dropout"] == 0.5 for e in spec.enqueue)


def test_fruit3_header_names_the_seeds_of_each_command():
    text = header("fruit3")
    spec = load_study("fruit3")
    assert spec.fixed["train.seed"] == 2342 and "search run: 2342 in every trial" in text
    seeds = ", ".join(str(r) for r in range(spec.ablation["repeats"]))  # ablate: repeat r, seed r
    assert f"search ablate: repeat r trains with seed r, so seeds {seeds}" in text
    assert load_study("fruit3", profile="quick").ablation["repeats"] == 1
    assert "(0 alone in the quick profile)" in text
    assert "search confirm: fresh seeds that no search trial used" in text


@pytest.mark.parametrize("name", FP32_SEEDS)
def test_studies_whose_seeds_trained_in_fp32_turn_mixed_precision_off(name):
    for profile in (None, "quick"):
        assert load_study(name, profile=profile).fixed["train.amp"] is False
    assert "fp32 (train.amp = false)" in header(name)


def test_seed_003_keeps_its_mixed_precision_and_names_bf16_as_a_deviation():
    assert load_study("hw100_losses").fixed["train.amp"] is True
    assert "Mixed precision is bf16" in header("hw100_losses")


@pytest.mark.parametrize("name", ["food11", "kfood_scratch"])
def test_from_scratch_resnets_start_as_torchvisions(name):
    for profile in (None, "quick"):
        assert load_study(name, profile=profile).fixed["model.zero_init_last"] is False
    assert "model.zero_init_last = false" in header(name)
    cfg = enqueued_configs(name, "quick")[0]
    model = trainer.create_model(cfg.model, num_classes=3)
    last_bns = [
        b.bn2.weight for layer in ("layer1", "layer4") for b in getattr(model.backbone, layer)
    ]
    assert all(bool((w == 1).all()) for w in last_bns)  # torchvision's init: no zeroed block


def test_digits_says_it_gives_the_tables_shape_with_another_baseline():
    text = " ".join(
        line.lstrip("# ") for line in load_study("digits").path.read_text().splitlines()
    )
    assert "the shape of the seeds' one-factor tables" in text
    assert "is not seed 004's" in text
    fixed = load_study("digits").ablation["fixed"]
    assert (fixed["data.batch_size"], fixed["optim.lr"]) != (8, 1e-4)  # not the seed's


# -- seed 000 and 001's tables, trained at the quick size -----------------------------------


def _image(path: Path, colour: np.ndarray, rng: np.random.Generator) -> None:
    img = np.tile(colour, (20, 20, 1)).astype(np.int16) + rng.integers(-20, 21, (20, 20, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)


def _images(root: Path, n_classes: int, per_class: int, *, flat: bool, seed: int = 0) -> Path:
    """train/ and a validation folder, one colour per class: Food-11's <label>_<id>.png files
    (flat) or class subfolders. Enough per class for a test split of one image each."""
    rng = np.random.default_rng(seed)
    val = "validation" if flat else "val"
    for c in range(n_classes):
        colour = rng.integers(0, 256, 3)
        for split, n in (("train", per_class), (val, 1)):
            for i in range(n):
                name = f"{c}_{split[0]}{i}.png" if flat else f"class_{c:02d}/{i}.png"
                _image(root / split / name, colour, rng)
    return root


QUICK = ["--profile", "quick", "-q", "--set", "train.epochs=1"]


def test_food11_quick_has_a_test_split_that_evaluate_and_confirm_report_with_tta(
    tmp_path, storage_url, capsys, monkeypatch
):
    data = _images(tmp_path / "food11", 11, 10, flat=True)
    made: list[dict] = []
    real = trainer.augment.make_augment

    def make_augment(policy, **kwargs):
        made.append(kwargs)
        return real(policy, **kwargs)

    monkeypatch.setattr(trainer.augment, "make_augment", make_augment)
    args = ["--storage", storage_url, "--data", str(data)]
    assert main(["run", "--study", "food11", "--trials", "1", *QUICK, *args]) == 0
    assert made and all(m["rotation"] == 10.0 and m["rotations"] == 2 for m in made)
    study = optuna.load_study(study_name="food11.quick", storage=storage_url)
    assert study.user_attrs["data_splits"]["test"]["count"] == 11  # 10 % of 110, one a class
    evaluate = ["evaluate", "--study", "food11", "--profile", "quick", "--storage", storage_url]
    assert main([*evaluate, "--split", "test", "--tta", "--json"]) == 0
    capsys.readouterr()
    confirm = ["confirm", "--study", "food11", "--top", "1", "--repeats", "1", "--tta", *QUICK[:3]]
    assert main([*confirm, "--storage", storage_url]) == 0
    (run,) = optuna.load_study(study_name=confirm_name("food11.quick"), storage=storage_url).trials
    assert run.state == TrialState.COMPLETE and 0.0 <= run.user_attrs["test_acc"] <= 1.0
    assert run.user_attrs["tta"] is True


def test_food11_quick_ablation_takes_out_each_recipe_choice_and_reports_test(
    tmp_path, storage_url, capsys
):
    data = _images(tmp_path / "food11", 11, 10, flat=True)
    args = ["ablate", "--study", "food11", "--test", "--tta", "--storage", storage_url,
            "--data", str(data)]  # fmt: skip
    assert main([*args, *QUICK]) == 0
    out = capsys.readouterr().out
    for factor in ("optim.name", "loss.name", "data.cutmix", "test-time augmentation"):
        assert f"Ablation: {factor}" in out  # TTA: the recipe's models without and with views
    assert "Test accuracy (held out)" in out and "Test accuracy with TTA (held out)" in out
    runs = optuna.load_study(study_name=companion_name("food11.quick"), storage=storage_url)
    configs = {t.user_attrs["value"]: t.user_attrs["config"] for t in runs.trials}
    assert len(runs.trials) == 4  # the recipe, then without SAM, LS-focal, CutMix
    assert all(t.state == TrialState.COMPLETE for t in runs.trials)
    base = configs["baseline"]
    assert (base["optim.name"], base["loss.name"], base["data.cutmix"]) == (
        "sam_adam",
        "ls_focal",
        0.5,
    )
    assert configs["adam"]["optim.name"] == "adam" and configs["ce"]["loss.name"] == "ce"
    assert configs[0.0]["data.cutmix"] == 0.0


def test_seed_001_tables_per_configuration_and_per_strategy_with_test_accuracy(
    tmp_path, storage_url, capsys
):
    kfood = _images(tmp_path / "kfood", 6, 5, flat=False)
    health = _images(tmp_path / "kfood_health", 4, 5, flat=False, seed=1)
    store = ["--storage", storage_url]
    # the seed's M1, M2 and ResNet-101 (ResNet-18 standing in), then each on validation and test
    run = ["run", "--study", "kfood_scratch", "--trials", "3", "--data", str(kfood)]
    assert main([*run, *QUICK, *store]) == 0
    trials = optuna.load_study(study_name="kfood_scratch.quick", storage=storage_url).trials
    m1 = trials[0].user_attrs["config"]
    assert (m1["data.rotation"], m1["data.normalize"]) == (0.0, "none")
    confirm = ["confirm", "--study", "kfood_scratch", "--top", "3", "--repeats", "1", *QUICK[:3]]
    assert main([*confirm, *store]) == 0
    assert "Test" in capsys.readouterr().out
    runs = optuna.load_study(study_name=confirm_name("kfood_scratch.quick"), storage=storage_url)
    assert {t.user_attrs["source_trial"] for t in runs.trials} == {0, 1, 2}
    assert all("test_acc" in t.user_attrs for t in runs.trials)
    # the transfer comparison: partial freezing runs without any flag
    ablate = ["ablate", "--study", "kfood_transfer", "--test", "--data", str(health)]
    assert main([*ablate, *QUICK, *store]) == 0
    out = capsys.readouterr().out
    assert "Ablation: model.strategy" in out and "Test accuracy (held out)" in out
    arms = optuna.load_study(study_name=companion_name("kfood_transfer.quick"), storage=storage_url)
    done = {t.user_attrs["config"]["model.strategy"]: t for t in arms.trials}
    assert set(done) == {"full", "partial", "linear_probe"}
    assert all(t.state == TrialState.COMPLETE for t in done.values())
    partial = done["partial"]
    assert partial.user_attrs["config"]["model.freeze_stages"] == 2
    assert partial.user_attrs["trainable_param_count"] < partial.user_attrs["param_count"]


def test_a_study_refuses_trials_of_another_epoch_length(write_study, storage_url, capsys):
    """Eight passes an epoch is a longer epoch: trials of one and of eight passes are no more
    comparable than trials of 1 and 8 epochs (an older fruit3 study, resumed, says so)."""
    from conftest import TINY_DIGITS

    write_study("tiny", TINY_DIGITS)
    run = ["run", "--study", "tiny", "--trials", "1", "-q", "--storage", storage_url]
    assert main(run) == 0
    capsys.readouterr()
    assert main([*run, "--set", "data.epoch_repeats=2"]) == 2
    err = capsys.readouterr().err
    assert "data.epoch_repeats: None -> 2" in err and "--force" in err
    assert main([*run, "--set", "data.epoch_repeats=1"]) == 0  # one pass: the same problem
