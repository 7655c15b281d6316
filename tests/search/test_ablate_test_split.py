"""``search ablate --test`` refuses, before any run, a test split that changed since the
search recorded it, and a study without one (the README's "The record")."""

from __future__ import annotations

import numpy as np
import optuna
from conftest import TINY_DIGITS, one_error_line
from PIL import Image

from search.cli import main

FOLDER = """
description = "image folder with a given test/ folder"
space = "digits"

[data]
name = "folder"
root = "{root}"
image_size = 8

[budget]
epochs = 2

[sampler]
name = "random"
seed = 0

[pruner]
name = "none"

[fixed]
"model.backbone" = "small_cnn"
"model.width" = 8
"data.batch_size" = 16

[ablation]
repeats = 1

[ablation.factors]
"model.dropout" = [0.0, 0.5]
"""


def _images(root, classes: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((10, 10, 3), 70 * c + 30, dtype=np.int16) + rng.integers(
                -25, 26, (10, 10, 3)
            )
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")


def _studies(url: str) -> set[str]:
    return {s.study_name for s in optuna.get_all_study_summaries(url, include_best_trial=False)}


def test_ablate_test_refuses_a_test_split_changed_since_the_search(
    write_study, storage_url, tmp_path, capsys, fake_train
):
    import trainer.data

    root = tmp_path / "imgs"
    _images(root / "train", {"a": 8, "b": 8}, seed=0)
    _images(root / "test", {"a": 3, "b": 3}, seed=1)
    write_study("fold", FOLDER.format(root=root))
    args = ["--study", "fold", "-q", "--storage", storage_url]
    assert main(["run", *args, "--trials", "1"]) == 0
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(root / "test" / "a" / "0.png")
    trainer.data._load_cached.cache_clear()
    capsys.readouterr()
    assert main(["ablate", *args, "--test"]) == 2
    one_error_line(capsys, "the test split of study 'fold.ablation' changed since the search")
    assert _studies(storage_url) == {"fold"}  # no ablation companion, no run
    assert len(fake_train.calls) == 1  # the search's trial only


def test_ablate_test_refuses_a_study_without_a_test_split(write_study, storage_url, capsys):
    write_study(
        "plain",
        TINY_DIGITS
        + '\n[ablation]\nrepeats = 1\n[ablation.factors]\n"model.dropout" = [0.0, 0.5]\n',
    )
    assert main(["ablate", "--study", "plain", "-q", "--storage", storage_url, "--test"]) == 2
    one_error_line(capsys, "has no test split; set data.test_fraction")
    assert _studies(storage_url) == set()
