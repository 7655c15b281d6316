"""Every shipped study file: it parses with each profile, `search space` resolves it, its enqueued
configurations are draws of its space, and its quick profile trains an epoch on a generated
miniature of its data layout (offline: local weights where the study is pretrained)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

import spaces
from search.cli import main
from search.study.studyfile import PACKAGE_STUDIES, load_study

SHIPPED = sorted(p.stem for p in PACKAGE_STUDIES.glob("*.toml"))
SEED_STUDIES = {  # study -> the seed report it reproduces
    "food11": "000",
    "kfood_scratch": "001",
    "kfood_transfer": "001",
    "hw100_resnext": "002",
    "hw100_losses": "003",
    "fruit3": "004",
    "fruit3_transfer": "004",
}
VARIANTS = [(name, profile) for name in SHIPPED for profile in (None, *load_study(name).profiles)]


def test_every_seed_study_is_shipped_with_a_quick_profile_and_names_its_seed():
    for name, seed in SEED_STUDIES.items():
        spec = load_study(name)
        assert "quick" in spec.profiles, name
        header = spec.path.read_text().split("\n\n")[0]
        assert f"Seed {seed}" in header, name
        assert "Deviations from the seed" in spec.path.read_text(), name
        assert spec.enqueue, f"{name} enqueues none of the seed's configurations"
        assert load_study(name, profile="quick").enqueue, name
    assert "hw100" not in SHIPPED  # replaced by hw100_resnext and hw100_losses


@pytest.mark.parametrize(("name", "profile"), VARIANTS)
def test_search_space_resolves(name, profile, capsys):
    args = ["space", "--study", name] + (["--profile", profile] if profile else [])
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    shown = f"{name}.{profile}" if profile else name
    assert out.startswith(f"search space of study {shown!r}")
    # rows: parameter, distribution, source[, condition], columns apart by two spaces or more
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()[2:]]
    searched = {r[0]: r[1] for r in rows if not r[1].startswith("fixed ")}
    pinned = {r[0] for r in rows if r[1].startswith("fixed ")}
    spec = load_study(name, profile=profile)
    assert pinned == set(spec.fixed)
    assert all(re.match(r"(categorical|float|int) ", d) for d in searched.values()), searched
    # every parameter that draws of the space produce is listed as searched
    space = spaces.resolve_space(spec.search_space)
    fixed = {k: v for k, v in spec.fixed.items() if not str(v).startswith("study:")}
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn: set[str] = set()
    for _ in range(30):
        trial = study.ask()
        drawn |= set(spaces.build_config(space, trial, base=spec.base_config(), fixed=fixed)[1])
        study.tell(trial, 0.0)
    drawn -= set(spec.fixed)  # a pin is recorded with each trial, as a parameter
    assert drawn and drawn <= set(searched), drawn - set(searched)


@pytest.mark.parametrize(("name", "profile"), VARIANTS)
def test_enqueued_configurations_are_draws_of_the_space(name, profile):
    """Each enqueued configuration, asked of an in-memory study, is drawn exactly as written:
    Optuna warns when a value lies outside its distribution, which fails this test."""
    spec = load_study(name, profile=profile)
    space = spaces.resolve_space(spec.search_space)
    base = spec.base_config()
    fixed = {k: v for k, v in spec.fixed.items() if not str(v).startswith("study:")}
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    for params in spec.enqueue:
        study.enqueue_trial(params)
    for params in spec.enqueue:
        trial = study.ask()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cfg, drawn = spaces.build_config(space, trial, base=base, fixed=fixed)
        flat = cfg.replace({k: v for k, v in params.items() if k not in drawn}).to_flat()
        for key, value in params.items():
            assert flat[key] == value, (name, profile, key)
            if key in drawn:
                assert drawn[key] == value, (name, profile, key)
        study.tell(trial, 0.0)


# -- the quick profiles train ------------------------------------------------------------


def _image(path: Path, colour: np.ndarray, rng: np.random.Generator) -> None:
    img = np.tile(colour, (20, 20, 1)).astype(np.int16) + rng.integers(-20, 21, (20, 20, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)


def class_folders(root: Path, n_classes: int, *, per_class: int = 3, seed: int = 0) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png, one colour per class."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        colour = rng.integers(0, 256, 3)
        for split, n in (("train", per_class), ("val", 1)):
            for i in range(n):
                _image(root / split / f"class_{c:02d}" / f"{i}.png", colour, rng)
    return root


def flat_folder(root: Path, n_classes: int, *, per_class: int = 3) -> Path:
    """Food-11's layout: root/train/<label>_<id>.png and root/validation/<label>_<id>.png."""
    rng = np.random.default_rng(0)
    for c in range(n_classes):
        colour = rng.integers(0, 256, 3)
        for split, n in (("train", per_class), ("validation", 1)):
            for i in range(n):
                _image(root / split / f"{c}_{split[0]}{i}.png", colour, rng)
    return root


def backbone_weights(path: Path, backbone: str) -> Path:
    """A local weights file (a bare timm backbone state dict): no download needed. Drawn from
    a seed no trial uses, so a model that starts from these weights was loaded from it."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(12345)
    model = timm.create_model(backbone, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def run_quick(name: str, data: Path, url: str, *extra: str) -> optuna.Study:
    args = ["run", "--study", name, "--profile", "quick", "--trials", "1", "-q"]
    args += ["--storage", url, "--data", str(data), "--set", "train.epochs=1", *extra]
    assert main(args) == 0
    study = optuna.load_study(study_name=f"{name}.quick", storage=url)
    (trial,) = [t for t in study.trials if t.state.is_finished()]  # the rest wait in the queue
    assert trial.number == 0
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get("reason")
    spec = load_study(name, profile="quick")
    cfg = trial.user_attrs["config"]
    assert cfg["data.image_size"] == spec.data["image_size"]
    assert trial.user_attrs["epochs_run"] == 1
    assert trial.user_attrs["param_count"] > 0
    for key, value in spec.enqueue[0].items():  # trial 0 is the seed's configuration
        if key not in {a.split("=")[0] for a in extra[1::2]}:
            assert cfg[key] == value, key
    with pytest.raises(KeyError):  # and it never lands in the full recipe's study
        optuna.load_study(study_name=name, storage=url)
    return study


def test_food11_quick_trains_on_a_flat_folder(tmp_path, storage_url):
    # data.test_fraction = 0.1 holds out one of every class's 10 training images
    data = flat_folder(tmp_path / "food11", 11, per_class=10)
    run_quick("food11", data, storage_url)


def test_fruit3_quick_trains_on_class_folders(tmp_path, storage_url):
    data = class_folders(tmp_path / "fruit3", 3)
    study = run_quick("fruit3", data, storage_url)
    assert study.trials[0].user_attrs["config"]["model.backbone"] == "seed_cnn_full"


def test_kfood_quick_scratch_then_transfer_from_its_best(tmp_path, storage_url):
    # data.test_fraction = 0.2 holds out one of every class's 5 training images
    run_quick("kfood_scratch", class_folders(tmp_path / "kfood", 6, per_class=5), storage_url)
    source = optuna.load_study(study_name="kfood_scratch.quick", storage=storage_url)
    health = class_folders(tmp_path / "kfood_health", 4, per_class=5, seed=1)
    study = run_quick("kfood_transfer", health, storage_url)
    cfg = study.trials[0].user_attrs["config"]
    assert cfg["model.pretrained"] == source.best_trial.user_attrs["checkpoint"]
    assert cfg["model.strategy"] == "full"  # the seed's best strategy runs first


@pytest.mark.parametrize(
    ("name", "backbone", "classes"),
    [
        ("hw100_resnext", "resnet18", 5),
        ("hw100_losses", "resnet18", 5),
        ("fruit3_transfer", "resnet18", 3),
    ],
)
def test_pretrained_quick_trains_from_a_local_weights_file(
    name, backbone, classes, tmp_path, storage_url, monkeypatch
):
    from safetensors.torch import load_file

    import trainer.loop

    data = class_folders(tmp_path / name, classes)
    weights = backbone_weights(tmp_path / f"{backbone}.safetensors", backbone)
    built: list[dict[str, torch.Tensor]] = []  # each trained model's weights as built
    real_build = trainer.loop.build_model

    def build_model(*args, **kwargs):
        model = real_build(*args, **kwargs)
        built.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    monkeypatch.setattr(trainer.loop, "build_model", build_model)
    study = run_quick(
        name,
        data,
        storage_url,
        "--set",
        f"model.backbone={backbone}",
        "--set",
        f"model.pretrained={weights}",
    )
    # the trained model started from the file: every backbone tensor of it, before training
    (start,) = built
    given = load_file(str(weights))
    assert all(torch.equal(start[f"backbone.{k}"], v) for k, v in given.items())
    attrs = study.trials[0].user_attrs
    if name == "fruit3_transfer":  # frozen backbone: only the two-layer head trains
        head = 512 * 256 + 256 + 256 * classes + classes
        assert attrs["trainable_param_count"] == head < attrs["param_count"]


def test_fruit3_quick_ablation_is_its_own_companion_with_parameter_counts(
    tmp_path, storage_url, capsys
):
    data = class_folders(tmp_path / "fruit3", 3)
    args = ["ablate", "--study", "fruit3", "--profile", "quick", "-q", "--storage", storage_url]
    args += ["--data", str(data), "--set", "train.epochs=1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for factor in ("data.batch_size", "optim.lr", "model.dropout"):  # seed 004's three tables
        assert f"Ablation: {factor}" in out
    assert "| Parameters (trainable)" in out and "337.9 k" in out  # its CNN at 64 px
    runs = optuna.load_study(study_name="fruit3.quick.ablation", storage=storage_url).trials
    assert len(runs) == 7  # baseline + 2 batch sizes + 3 learning rates + 1 dropout, 1 repeat
    assert {t.user_attrs["config"]["data.image_size"] for t in runs} == {64}
    assert {t.user_attrs["param_count"] for t in runs} == {337_891}
    # repeat r trains with seed r, as the header says, not with the search's 2342
    assert {t.user_attrs["config"]["train.seed"] for t in runs} == {0}


def test_parameter_counts_in_the_best_summary_and_the_trials_table(tmp_path, storage_url, capsys):
    from search.report.export import trials_table
    from search.report.tables import fmt_param_count

    assert fmt_param_count(9_966_691) == "9.967 M"
    assert fmt_param_count(68_851_023, 68_851_023) == "68.85 M"
    assert fmt_param_count(23_512_130, 8_195) == "23.51 M (8,195 trainable)"
    data = class_folders(tmp_path / "fruit3", 3)
    study = run_quick("fruit3", data, storage_url)
    assert "model      337.9 k" in capsys.readouterr().out
    table = trials_table(study)
    column = table.headers.index("parameters")
    assert table.rows[0][column] == "337.9 k"  # shown as the summary shows it
    assert table.raw[0][column] == 337_891  # the exact count for CSV and JSON


def test_hw100_losses_quick_ablation_is_seed_003s_loss_table_of_best_accuracy(
    tmp_path, storage_url, capsys
):
    data = class_folders(tmp_path / "hw100", 5)
    weights = backbone_weights(tmp_path / "resnet18.safetensors", "resnet18")
    args = ["ablate", "--study", "hw100_losses", "--profile", "quick", "-q"]
    args += ["--storage", storage_url, "--data", str(data), "--set", "train.epochs=1"]
    args += ["--set", f"model.pretrained={weights}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    table = out[out.index("Loss function comparison") :]
    assert "| Loss" in table and "Max validation accuracy (%)" in table
    for loss in ("ce", "focal", "label_smoothing"):
        assert f"| {loss}" in table
    companion = optuna.load_study(study_name="hw100_losses.quick.ablation", storage=storage_url)
    assert companion.user_attrs["loss_metric"] == "max_val_acc"
    assert len(companion.trials) == 3


def test_loss_metric_must_be_an_accuracy_the_runs_record(write_study, capsys):
    from conftest import TINY_DIGITS

    write_study("tiny", TINY_DIGITS + '\n[ablation]\nloss_metric = "val_loss"\n')
    assert main(["space", "--study", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "unknown loss_metric" in err and "max_val_acc" in err


def _backbones(spec) -> set[str]:
    """What search run preflights (every backbone a trial can get), and the ablation's."""
    from search.experiments.run import study_backbones

    space = spaces.resolve_space(spec.search_space)
    base = spec.base_config()
    fixed = {k: v for k, v in spec.fixed.items() if k != "model.pretrained"}
    cfg = spaces.build_config(space, None, base=base, fixed=fixed)[0]
    names = set(study_backbones(space, cfg, pinned=fixed, base=base, queue=list(spec.enqueue)))
    return names | set(spec.ablation.get("factors", {}).get("model.backbone", []))


@pytest.mark.parametrize(
    ("name", "profile"),
    [(n, p) for n, p in VARIANTS if n in SEED_STUDIES and n != "kfood_transfer"],
)
def test_every_backbone_of_a_seed_study_runs_at_its_image_size(name, profile):
    """Weights aside (offline), each network the study can train takes its images."""
    import trainer

    spec = load_study(name, profile=profile)
    size = spec.data["image_size"]
    for backbone in sorted(_backbones(spec)):
        cfg = trainer.ModelConfig(
            backbone=backbone, head_hidden=spec.fixed.get("model.head_hidden", 0)
        )
        model = trainer.create_model(cfg, num_classes=3, image_size=size).eval()
        with torch.inference_mode():
            assert model(torch.zeros(1, 3, size, size)).shape == (1, 3), backbone
