"""Pretrained weights' own input pipeline (timm's data config): ``data.normalize =
"pretrained"`` feeds the model the mean/std its weights were trained with, ``data.crop_pct``
sets the evaluation centre crop, and a run that feeds ImageNet weights otherwise says so.
Offline: the configs are read without weights."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image

import trainer
import trainer.models as models
from trainer import TrainConfig
from trainer.checkpoint import read_checkpoint
from trainer.data import IMAGENET_MEAN, IMAGENET_STD
from trainer.data.resize import center_crop_geometry, eval_mode, resize_pil


def test_the_weights_own_config_is_timms_read_without_weights():
    inception = models.pretrained_data_config("inception_v3")
    assert inception["mean"] == (0.5, 0.5, 0.5) and inception["std"] == (0.5, 0.5, 0.5)
    built = timm.data.resolve_model_data_config(timm.create_model("inception_v3", num_classes=0))
    for key in ("mean", "std", "crop_pct", "interpolation"):
        assert inception[key] == built[key]
    assert models.pretrained_data_config("resnet50.a1_in1k")["crop_pct"] == 0.95
    assert models.pretrained_data_config("resnet152.tv2_in1k")["crop_pct"] == 0.875
    assert models.pretrained_data_config("small_cnn") is None


@pytest.fixture
def rgb_folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / f"c{c}").mkdir()
        for i in range(12):
            pixels = rng.integers(0, 80, (20, 14, 3), dtype=np.uint8)
            pixels[..., c] += 150
            Image.fromarray(pixels).save(tmp_path / f"c{c}" / f"{i}.png")
    return tmp_path


def cfg_for(root, **overrides) -> TrainConfig:
    flat = {
        "data.name": "folder", "data.root": str(root), "data.image_size": 8,
        "data.batch_size": 8, "model.backbone": "small_cnn", "model.width": 4,
        "train.epochs": 1, "train.patience": 0,
    }  # fmt: skip
    return TrainConfig.from_flat({**flat, **overrides})


OWN = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3), "crop_pct": 0.9}


def test_pretrained_normalisation_reaches_the_run_and_its_checkpoint(
    rgb_folder, tmp_path, monkeypatch
):
    # a backbone whose weights were trained with OWN (timm's config, patched in)
    monkeypatch.setattr(models, "pretrained_data_config", lambda name: OWN)
    cfg = cfg_for(rgb_folder, **{"data.normalize": "pretrained"})
    assert trainer.load_data(cfg.data).mean == IMAGENET_MEAN  # until the model is known
    result = trainer.train(cfg, checkpoint_path=tmp_path / "w.safetensors")
    assert result.normalization == (OWN["mean"], OWN["std"])
    _, meta = read_checkpoint(result.checkpoint)
    assert (tuple(meta["mean"]), tuple(meta["std"])) == (OWN["mean"], OWN["std"])
    # imagenet keeps meaning ImageNet's, whatever the weights: old studies stay the same
    other = trainer.train(cfg_for(rgb_folder, **{"data.normalize": "imagenet"}))
    assert other.normalization == (IMAGENET_MEAN, IMAGENET_STD)


def test_pretrained_normalisation_without_pretrained_stats_is_refused(rgb_folder):
    cfg = cfg_for(rgb_folder, **{"data.normalize": "pretrained"})
    with pytest.raises(ValueError, match="'small_cnn' has none; use 'imagenet' or 'dataset'"):
        trainer.check_model(cfg, trainer.load_data(cfg.data))


def test_crop_pct_sets_the_evaluation_centre_crop(rgb_folder):
    assert eval_mode("center_crop", None) == eval_mode("center_crop", 0.875) == "center_crop"
    assert eval_mode("center_crop", 0.95) == "center_crop@0.95"
    assert eval_mode("squash", 0.95) == "squash"
    assert center_crop_geometry(400, 300, 224, 0.95)[1] == 235  # floor(224 / 0.95)
    assert center_crop_geometry(400, 300, 224)[1] == 256  # timm's default, seed 002's
    base = {"data.eval_resize": "center_crop"}
    default = trainer.load_data(cfg_for(rgb_folder, **base).data)
    wide = trainer.load_data(cfg_for(rgb_folder, **base, **{"data.crop_pct": 1.0}).data)
    assert torch.equal(default.x_train, wide.x_train)  # training images are not cropped
    assert not torch.equal(default.x_val, wide.x_val)
    # every validation image is one of the files cropped as center_crop@1 does
    crops = {
        np.asarray(resize_pil(Image.open(p).convert("RGB"), 8, "center_crop@1")).tobytes()
        for p in rgb_folder.glob("*/*.png")
    }
    assert all(x.permute(1, 2, 0).numpy().tobytes() in crops for x in wide.x_val)
    assert not all(x.permute(1, 2, 0).numpy().tobytes() in crops for x in default.x_val)


def test_imagenet_weights_fed_other_inputs_are_named_once(rgb_folder, caplog, monkeypatch):
    monkeypatch.setattr("trainer.loop._WARNED", set())
    cfg = cfg_for(
        rgb_folder,
        **{
            "model.backbone": "inception_v3", "model.pretrained": "imagenet",
            "data.normalize": "imagenet",
        },
    )  # fmt: skip
    data = trainer.load_data(cfg.data)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        for _ in range(2):
            with pytest.raises(ValueError):  # offline: the weights cannot be fetched
                trainer.build_model(cfg, data, torch.device("cpu"))
    lines = [r.getMessage() for r in caplog.records if "inception_v3" in r.getMessage()]
    assert lines == [
        "the weights of 'inception_v3' were trained with mean (0.5, 0.5, 0.5) and std "
        "(0.5, 0.5, 0.5), not ImageNet's: data.normalize = 'pretrained' uses them"
    ]
