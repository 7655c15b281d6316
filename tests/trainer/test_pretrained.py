"""Pretrained sources: ImageNet through timm fails fast and clearly offline; a local weights
file loads with the head replaced."""

from __future__ import annotations

import time

import pytest
import torch

import trainer
from trainer import ModelConfig, TrainConfig


def test_imagenet_offline_fails_within_a_second_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    trainer.check_backbone("resnet18")  # importing timm is not what is timed here
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:
        trainer.create_model(ModelConfig(backbone="resnet18", pretrained="imagenet"), num_classes=3)
    assert time.perf_counter() - t0 < 1.0
    msg = str(err.value)
    assert "resnet18" in msg and "cache" in msg and "model.pretrained" in msg
    assert "\n" not in msg


def test_local_weights_file_loads_backbone_and_keeps_a_fresh_head(tmp_path):
    src = trainer.create_model(ModelConfig(backbone="resnet18"), num_classes=42, image_size=32)
    path = trainer.save_checkpoint(src, tmp_path / "src.safetensors")
    cfg = TrainConfig.from_flat({"model.backbone": "resnet18", "model.pretrained": str(path)})
    from trainer.data import ImageData

    x = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    data = ImageData(x, torch.arange(8) % 13, x, torch.arange(8) % 13, [str(i) for i in range(13)])
    model = trainer.build_model(cfg, data, torch.device("cpu"))
    torch.testing.assert_close(model.backbone.conv1.weight, src.backbone.conv1.weight)
    assert model.head[1].out_features == 13


def test_weights_of_another_backbone_are_refused(tmp_path):
    src = trainer.create_model(ModelConfig(backbone="small_cnn", width=8), num_classes=3)
    path = trainer.save_checkpoint(src, tmp_path / "cnn.safetensors")
    model = trainer.create_model(ModelConfig(backbone="resnet18"), num_classes=3)
    with pytest.raises(ValueError, match="does not fit this backbone"):
        trainer.load_pretrained(model, path)
