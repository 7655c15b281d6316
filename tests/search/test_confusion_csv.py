"""The confusion-matrix CSV of a trial (a dashboard artifact) is real CSV: class names with a
comma or a quote read back as they are."""

from __future__ import annotations

import csv

import numpy as np
import torch
from PIL import Image

import trainer
from search.report import notes

CLASSES = ["cats, big", 'dogs "small"', "plain"]


def test_class_names_with_commas_and_quotes_read_back(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 64, (8, 8, 3), dtype=np.uint8)
            pixels[..., c] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    cfg = trainer.TrainConfig.from_flat(
        {"data.name": "folder", "data.root": str(root), "data.image_size": 8}
    )
    data = trainer.load_data(cfg.data)
    pred = torch.roll(data.y_val, 1)  # some right, some wrong
    result = trainer.TrainResult(status="complete", reason="", model=torch.nn.Identity())
    result.val_predictions = pred
    path = notes._confusion_csv(cfg, result, tmp_path, 7)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    names = list(data.class_names)
    assert sorted(names) == sorted(CLASSES)
    assert rows[0] == ["true\\predicted", *names]
    assert [r[0] for r in rows[1:]] == names
    counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    expected = np.zeros((3, 3), dtype=int)
    for t, p in zip(data.y_val.tolist(), pred.tolist(), strict=True):
        expected[t, p] += 1
    assert (counts == expected).all() and counts.sum() == len(data.y_val)
