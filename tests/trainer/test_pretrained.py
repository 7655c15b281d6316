"""Pretrained sources: ImageNet through timm fails fast and clearly offline; a local weights
file loads with the head replaced."""

from __future__ import annotations

import time

import pytest
import torch

import trainer
from trainer import ModelConfig, TrainConfig


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


# ------------------------------------------------------------------ timm pretrained tags


def test_tagged_timm_names_are_backbones_and_bad_tags_name_the_closest():
    assert trainer.check_backbone("resnet152.tv2_in1k") == "resnet152.tv2_in1k"
    with pytest.raises(ValueError) as err:
        trainer.check_backbone("resnet152.tv3_in1k")
    msg = str(err.value)
    assert "'tv3_in1k'" in msg and "Did you mean 'resnet152.tv_in1k'?" in msg
    assert "resnet152.tv2_in1k" in msg and "\n" not in msg
    with pytest.raises(ValueError, match=r"Did you mean 'resnet50\.tv2_in1k'"):
        trainer.check_backbone("resnet51.tv2_in1k")  # no such architecture
    with pytest.raises(ValueError, match="built-in backbones take no tag; use 'small_cnn'"):
        trainer.check_backbone("small_cnn.in1k")


def test_a_tagged_backbone_builds_from_scratch_and_runs_a_preflight():
    cfg = TrainConfig.from_flat({"model.backbone": "resnet18.tv_in1k", "data.image_size": 32})
    from trainer.data import ImageData

    x = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    data = ImageData(x, torch.arange(4) % 2, x, torch.arange(4) % 2, ["a", "b"])
    trainer.check_model(cfg, data)  # builds on the CPU and runs two images, no weights needed
    model = trainer.create_model(cfg.model, num_classes=2, image_size=32)
    assert type(model.backbone).__name__ == "ResNet" and model.num_features == 512


def _empty_hub_cache(monkeypatch, path) -> None:
    """An empty Hugging Face cache, offline (huggingface_hub reads its cache path at import,
    so the module constant is pointed there as well as the environment)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet152.tv2_in1k"])
def test_imagenet_offline_fails_at_once_with_the_fix(monkeypatch, tmp_path, backbone):
    _empty_hub_cache(monkeypatch, tmp_path / "hf")
    trainer.check_backbone(backbone)  # importing timm is not what is timed here
    t0 = time.perf_counter()
    with pytest.raises(ValueError) as err:
        trainer.create_model(ModelConfig(backbone=backbone, pretrained="imagenet"), num_classes=3)
    # no download attempt, no network timeout (those take 10 s and more): it fails at once
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    assert f"'{backbone}'" in msg and "cache" in msg and "model.pretrained" in msg
    assert "\n" not in msg


def test_tagged_imagenet_weights_load_from_the_hub_cache_offline(monkeypatch, tmp_path):
    """The tag picks the weights: a cached ``timm/resnet18.tv_in1k`` file is what loads."""
    import timm
    from safetensors.torch import save_file

    _empty_hub_cache(monkeypatch, tmp_path / "hf")
    snapshot = tmp_path / "hf" / "hub" / "models--timm--resnet18.tv_in1k"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("0" * 40)
    (snapshot / "snapshots" / ("0" * 40)).mkdir(parents=True)
    torch.manual_seed(7)
    src = timm.create_model("resnet18", num_classes=1000)
    save_file(src.state_dict(), snapshot / "snapshots" / ("0" * 40) / "model.safetensors")
    model = trainer.create_model(
        ModelConfig(backbone="resnet18.tv_in1k", pretrained="imagenet"), num_classes=3
    )
    torch.testing.assert_close(model.backbone.conv1.weight, src.conv1.weight)
    torch.testing.assert_close(model.backbone.layer4[1].bn2.bias, src.layer4[1].bn2.bias)
    with pytest.raises(ValueError, match="'resnet18.a1_in1k' are not in the Hugging Face cache"):
        trainer.create_model(  # another tag of the same architecture is another file
            ModelConfig(backbone="resnet18.a1_in1k", pretrained="imagenet"), num_classes=3
        )
