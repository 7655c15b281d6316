"""``search init`` holds out a test split when the folder is large enough (and says when and
why in the file), uses the folder's own, or says why there is none and how to add one."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import search.experiments.init as si
from search.cli import main
from search.study.studyfile import load_study
from trainer.data import load_test
from trainer.throughput import Throughput


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    """Small distinct PNGs, one subfolder per class (a colour per class, noise per image)."""
    rng = np.random.default_rng(0)
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 64, (12, 12, 3), dtype=np.uint8)
            pixels[..., c % 3] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def fake_speed(monkeypatch):
    """Every backbone fast: what fits does not matter here, and nothing is measured."""

    def measure(cfg, *, num_classes, in_chans=3, steps=3, warmup=1, max_seconds=20.0):
        return Throughput(1e6, "cpu:test", cfg.data.batch_size, steps)

    monkeypatch.setattr(si, "measure_throughput", measure)


def _written(capsys) -> tuple[str, str, dict]:
    """What search init printed, the study file's text (comment lines joined, as read), and
    the file as TOML."""
    out = capsys.readouterr().out
    text = Path("studies/photos.toml").read_text()
    joined = " ".join(line.removeprefix("# ") for line in text.splitlines())
    return out, joined, tomllib.loads(text)


@pytest.mark.parametrize(("per_class", "fraction"), [(350, 0.2), (700, 0.1)])
def test_a_large_enough_folder_gets_a_test_split_no_trial_sees(
    per_class, fraction, tmp_path, capsys
):
    root = make_folder(tmp_path / "photos", {"a": per_class, "b": per_class, "c": per_class})
    assert main(["init", str(root)]) == 0
    out, text, raw = _written(capsys)
    assert raw["data"]["test_fraction"] == fraction
    # the file says why and when, where the key is
    assert "no search trial sees" in text and "search confirm" in text
    assert "10% when that is at least 200 images, else 20% when that is" in text
    n_test = len(load_test(_data_config("photos"))[1])
    assert n_test >= si.MIN_TEST_IMAGES
    assert n_test == pytest.approx(fraction * 3 * per_class, abs=3)
    assert f"/ {n_test:,} test" in out and f"/ {n_test:,} test" in text
    assert "test     10% of the images" in out or "test     20% of the images" in out


def _data_config(name: str):
    from trainer import TrainConfig

    spec = load_study(name)
    return TrainConfig.from_flat(spec.base_config()).data


def test_a_small_folder_gets_none_and_the_file_says_how_to_add_one(tmp_path, capsys):
    root = make_folder(tmp_path / "photos", {"a": 150, "b": 150, "c": 150})
    assert main(["init", str(root)]) == 0
    out, text, raw = _written(capsys)
    assert "test_fraction" not in raw["data"]
    assert "test     no test split: 450 images are too few to hold out 200" in out
    assert "No test split: 450 images are too few" in text
    assert "add a labelled test/ folder, or test_fraction = 0.2 here" in text


def test_the_folders_own_test_split_is_kept(tmp_path, capsys):
    root = tmp_path / "photos"
    make_folder(root / "train", {"a": 400, "b": 400})
    make_folder(root / "test", {"a": 20, "b": 20})
    assert main(["init", str(root)]) == 0
    out, text, raw = _written(capsys)
    assert "test_fraction" not in raw["data"]
    assert "The folder's own test split (40 images)" in text
    assert "test     the folder's own test split, 40 images" in out
    assert len(load_test(_data_config("photos"))[1]) == 40
