"""kfood_scratch -> kfood_transfer end to end on a generated miniature K-Food tree
(42 -> 13 classes, tiny images), and evaluate / predict on the result."""

from __future__ import annotations

import csv
import json

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

import trainer
from search.cli import main

SIZE = 16


def _make_tree(root, n_classes: int, per_class: int, seed: int) -> None:
    """Each class a distinct colour/stripe pattern, so the classes are learnable."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        d = root / f"dish_{c:02d}"
        d.mkdir(parents=True)
        base = rng.integers(0, 256, size=3)
        for i in range(per_class):
            img = np.tile(base, (20, 20, 1)).astype(np.int16)
            img[:: 2 + c % 5] += 60
            img += rng.integers(-20, 21, size=img.shape)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i}.png")


@pytest.fixture
def kfood(tmp_path):
    scratch, health = tmp_path / "kfood", tmp_path / "kfood_health"
    _make_tree(scratch, 42, 5, seed=0)
    _make_tree(health, 13, 5, seed=1)
    return scratch, health, f"sqlite:///{tmp_path / 'k.db'}"


TINY = ["--set", f"data.image_size={SIZE}", "--set", "train.epochs=2", "-q"]


def test_kfood_scratch_then_transfer(kfood, capsys):
    scratch, health, url = kfood
    code = main(
        [
            "run",
            "--study",
            "kfood_scratch",
            "--trials",
            "2",
            "--storage",
            url,
            "--data",
            str(scratch),
            "--set",
            "model.backbone=resnet18",
            *TINY,
        ]
    )
    assert code == 0, capsys.readouterr().err
    source = optuna.load_study(study_name="kfood_scratch", storage=url).best_trial
    src_ckpt = source.user_attrs["checkpoint"]
    src_state, src_meta = trainer.read_checkpoint(src_ckpt)
    assert len(src_meta["class_names"]) == 42

    code = main(
        [
            "run",
            "--study",
            "kfood_transfer",
            "--trials",
            "2",
            "--storage",
            url,
            "--data",
            str(health),
            "--set",
            "model.strategy=linear_probe",
            *TINY,
        ]
    )
    assert code == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="kfood_transfer", storage=url)
    done = [t for t in study.trials if t.state.is_finished()]
    assert len(done) == 2
    best = study.best_trial
    cfg = best.user_attrs["config"]
    assert cfg["model.pretrained"] == src_ckpt  # study:kfood_scratch -> its best checkpoint
    assert cfg["model.backbone"] == "resnet18"  # pinned to the source's backbone
    state, meta = trainer.read_checkpoint(best.user_attrs["checkpoint"])
    assert meta["class_names"] == [f"dish_{c:02d}" for c in range(13)]
    assert state["head.1.weight"].shape[0] == 13  # a new 13-way head
    # a linear probe leaves the transferred backbone untouched: weights and BN statistics
    for key in (
        "backbone.conv1.weight",
        "backbone.layer4.1.conv2.weight",
        "backbone.bn1.running_mean",
    ):
        torch.testing.assert_close(state[key], src_state[key])


def test_transfer_without_source_is_a_clear_error(kfood, capsys):
    _, health, url = kfood
    code = main(
        [
            "run",
            "--study",
            "kfood_transfer",
            "--trials",
            "1",
            "--storage",
            url,
            "--data",
            str(health),
            *TINY,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: pretrained source 'study:kfood_scratch'")


def test_missing_data_names_where_to_put_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KFOOD_ROOT", raising=False)
    url = f"sqlite:///{tmp_path / 'k.db'}"
    code = main(["run", "--study", "kfood_scratch", "--trials", "1", "--storage", url])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "data/kfood" in err[0] and "--data" in err[0] and "KFOOD_ROOT" in err[0]
    assert not (tmp_path / "k.db").exists()


def test_evaluate_and_predict(kfood, tmp_path, capsys):
    _, health, url = kfood
    # a small CNN on the 13-class tree, then evaluate it and predict an unlabeled folder
    code = main(
        [
            "run",
            "--study",
            "kfood_scratch",
            "--trials",
            "1",
            "--storage",
            url,
            "--data",
            str(health),
            "--set",
            "model.backbone=resnet18",
            *TINY,
        ]
    )
    assert code == 0
    capsys.readouterr()
    assert main(["evaluate", "--study", "kfood_scratch", "--storage", url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    cm = np.array(report["confusion"])
    assert cm.shape == (13, 13) and cm.sum() == 13  # 5 images x 13 classes, 20% held out
    accs = [r["accuracy"] for r in report["per_class"]]
    assert accs == sorted(accs)  # worst classes first
    assert abs(report["accuracy"] - np.trace(cm) / cm.sum()) < 1e-9

    fig = tmp_path / "cm.html"
    assert main(["evaluate", "--study", "kfood_scratch", "--storage", url, "--out", str(fig)]) == 0
    assert "validation accuracy" in capsys.readouterr().out and fig.is_file()

    unlabeled = tmp_path / "test"
    unlabeled.mkdir()
    for c in (0, 5):
        src = sorted((health / f"dish_{c:02d}").glob("*.png"))[0]
        (unlabeled / f"{c}.png").write_bytes(src.read_bytes())
    out = tmp_path / "preds.csv"
    for extra in ([], ["--tta"], ["--tta-views", "identity,hflip,crops"]):
        code = main(
            [
                "predict",
                "--study",
                "kfood_scratch",
                "--storage",
                url,
                "--data",
                str(unlabeled),
                "--out",
                str(out),
                *extra,
            ]
        )
        assert code == 0
        rows = list(csv.DictReader(out.open()))
        assert [r["file"] for r in rows] == ["0.png", "5.png"]
        assert all(r["label"].startswith("dish_") for r in rows)

    code = main(
        [
            "predict",
            "--study",
            "kfood_scratch",
            "--storage",
            url,
            "--data",
            str(unlabeled),
            "--out",
            str(tmp_path / "nope" / "p.csv"),
        ]
    )
    assert code == 2
    capsys.readouterr()
    views = ["--tta-views", "hflip,flips"]
    assert main(["evaluate", "--study", "kfood_scratch", "--storage", url, *views]) == 0
    assert "with test-time views hflip,identity,vflip" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    predict = ["predict", "--study", "kfood_scratch", "--storage", url, "--data", str(unlabeled)]
    assert main([*predict, "--out", str(bad), "--tta-views", "hflp"]) == 2
    assert "Did you mean 'hflip'" in capsys.readouterr().err and not bad.exists()
