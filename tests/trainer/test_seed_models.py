"""What the seed recipes need from the trainer: seed 004's networks at their parameter counts,
a two-layer head, parameter counts in the result, and seed 000's zoom and blur as settings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import trainer
from trainer import ModelConfig, TrainConfig
from trainer.augment import PRESETS


def _count(model: nn.Module, *, trainable: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [("seed_cnn_full", 9_966_691), ("mlp", 68_851_023)],  # seed 004's two model summaries
)
def test_seed_004_networks_have_the_reports_parameter_counts(backbone, expected):
    model = trainer.create_model(
        ModelConfig(backbone=backbone, dropout=0.5), num_classes=3, image_size=300
    )
    assert _count(model) == expected


def test_seed_cnn_full_has_two_dropout_layers_and_refuses_tiny_images():
    model = trainer.create_model(
        ModelConfig(backbone="seed_cnn_full", dropout=0.3), num_classes=3, image_size=64
    )
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.3, 0.3]
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    # two unpadded 5x5 convs, each followed by a 2x2 pool: 16 px is the least that leaves 1x1
    smallest = trainer.create_model(
        ModelConfig(backbone="seed_cnn_full"), num_classes=3, image_size=16
    )
    assert smallest(torch.zeros(1, 3, 16, 16)).shape == (1, 3)
    with pytest.raises(ValueError, match="at least 16 px, but got 15; set data.image_size"):
        trainer.create_model(ModelConfig(backbone="seed_cnn_full"), num_classes=3, image_size=15)


def test_head_hidden_gives_a_two_layer_head():
    model = trainer.create_model(
        ModelConfig(backbone="small_cnn", width=4, dropout=0.2, head_hidden=32),
        num_classes=5,
        image_size=16,
    )
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 5)]
    assert [m.p for m in model.head if isinstance(m, nn.Dropout)] == [0.2, 0.2]
    with pytest.raises(ValueError, match="model.head_hidden must be >= 0"):
        ModelConfig(head_hidden=-1)


def test_result_counts_parameters_and_the_trainable_ones_of_a_linear_probe():
    flat = {
        "data.name": "digits", "data.image_size": 8, "data.batch_size": 128,
        "model.backbone": "small_cnn", "model.width": 4, "model.head_hidden": 16,
        "model.strategy": "linear_probe", "train.epochs": 1, "train.patience": 0,
    }  # fmt: skip
    cfg = TrainConfig.from_flat(flat)
    result = trainer.train(cfg)
    model = trainer.create_model(cfg.model, num_classes=10, in_chans=1, image_size=8)
    head = _count(model.head)
    assert result.param_count == _count(model)
    assert result.trainable_param_count == head == 16 * 16 + 16 + 16 * 10 + 10
    summary = result.summary()
    assert summary["param_count"] == result.param_count
    assert summary["trainable_param_count"] == head


def test_zoom_and_blur_are_settings_that_override_the_preset():
    cfg = TrainConfig.from_flat({"data.augment": "strong", "data.blur": 0.0, "data.zoom": 0.2})
    settings = cfg.data.augment_settings()
    assert settings["blur"] == 0.0 and settings["zoom"] == 0.2
    assert PRESETS["strong"].blur > 0  # so the override is what turns it off
    zoom = trainer.augment.make_augment("none", image_size=8, zoom=0.2)
    x = torch.linspace(0, 1, 64).reshape(1, 1, 8, 8).repeat(4, 3, 1, 1)  # a ramp: any zoom shows
    out = zoom(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert trainer.augment.make_augment("none", image_size=8) is None  # so zoom is the change
    with pytest.raises(ValueError, match=r"data.blur must be in \[0, 1\]"):
        TrainConfig.from_flat({"data.blur": 1.5})
    with pytest.raises(ValueError, match=r"data.zoom must be in \[0, 0.5\]"):
        TrainConfig.from_flat({"data.zoom": 0.9})
