"""Trainer settings that make the seeds' recipes as they ran: ``data.epoch_repeats`` (seed 004's
eightfold epoch), ``data.rotations`` (seed 000's rotation drawn twice) and
``model.zero_init_last`` (torchvision's ResNet initialisation, seeds 000 and 001)."""

from __future__ import annotations

import pytest
import torch

import trainer
import trainer.loop
import trainer.steps
from trainer import ModelConfig, TrainConfig
from trainer.augment import make_augment
from trainer.data import ImageData

N_TRAIN, CLASSES, BATCH = 24, 3, 4


def _indexed_data() -> ImageData:
    """Every training image is filled with its own index, so a step's images name themselves."""
    x = torch.arange(N_TRAIN, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 8, 8)
    y = torch.arange(N_TRAIN) % CLASSES
    x_val = torch.zeros(CLASSES, 3, 8, 8, dtype=torch.uint8)
    names = [str(c) for c in range(CLASSES)]
    return ImageData(
        x.contiguous(), y, x_val, torch.arange(CLASSES), names, mean=(0.0,) * 3, std=(1.0,) * 3
    )


def _trained_indices(monkeypatch, repeats: int, cache: str = "device") -> list[torch.Tensor]:
    """The image indices of every optimizer step of one epoch, in order."""
    steps: list[torch.Tensor] = []
    real = trainer.steps.make_step

    def make_step(*args, **kwargs):
        step = real(*args, **kwargs)

        def recording(micro):
            # normalisation is the identity here (mean 0, std 1): pixel * 255 is the index
            steps.append(torch.cat([(b.x[:, 0, 0, 0] * 255).round().long() for b in micro]))
            return step(micro)

        return recording

    monkeypatch.setattr(trainer.loop, "make_step", make_step)
    cfg = TrainConfig.from_flat(
        {
            "data.image_size": 8,
            "data.batch_size": BATCH,
            "data.epoch_repeats": repeats,
            "data.device_cache": cache,
            "model.width": 4,
            "train.epochs": 1,
            "train.patience": 0,
            "train.device": "cpu",
        }
    )
    result = trainer.train(cfg, data=_indexed_data())
    assert result.status == "complete", result.reason
    return steps


@pytest.mark.parametrize("cache", ["device", "host"])  # indexed in place, or gathered ahead
def test_an_epoch_with_8_repeats_takes_8x_the_steps_and_sees_each_image_8_times(monkeypatch, cache):
    once = _trained_indices(monkeypatch, 1, cache)
    eight = _trained_indices(monkeypatch, 8, cache)
    assert len(once) == N_TRAIN // BATCH
    assert len(eight) == 8 * len(once)
    order = torch.cat(eight)
    assert torch.bincount(order, minlength=N_TRAIN).tolist() == [8] * N_TRAIN
    passes = order.view(8, N_TRAIN)
    for p in passes:  # each pass is a whole shuffle of the set ...
        assert sorted(p.tolist()) == list(range(N_TRAIN))
    assert len({tuple(p.tolist()) for p in passes}) > 1  # ... drawn afresh


def test_epoch_repeats_must_be_at_least_one():
    with pytest.raises(ValueError, match="data.epoch_repeats must be >= 1, but got 0"):
        TrainConfig.from_flat({"data.epoch_repeats": 0})


def _rotation_degrees(aug, n: int = 256, size: int = 33) -> torch.Tensor:
    """|angle| in degrees by which ``aug`` turned a blob 10 px right of the centre, per image."""
    c = size // 2
    x = torch.zeros(n, 3, size, size)
    x[:, :, c - 1 : c + 2, c + 9 : c + 12] = 1.0
    out = aug(x, torch.Generator().manual_seed(0))[:, 0]
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mass = out.sum((1, 2))
    dy = (out * rows).sum((1, 2)) / mass - c
    dx = (out * cols).sum((1, 2)) / mass - c
    return torch.rad2deg(torch.atan2(dy, dx)).abs()


def test_two_rotation_draws_turn_further_than_one():
    """RandomRotation(30) then RandomAffine(degrees=30): the angles add, up to 60 degrees."""
    one = _rotation_degrees(make_augment("none", image_size=33, rotation=30.0))
    two = _rotation_degrees(make_augment("none", image_size=33, rotation=30.0, rotations=2))
    assert one.max() < 32  # one draw: within +-30 (and the centroid's error)
    assert (two > 32).float().mean() > 0.1  # a sum of two: a quarter of them beyond 30
    assert two.max() > 40


def test_data_rotations_reach_the_augmentation():
    data = TrainConfig.from_flat({"data.rotation": 10.0, "data.rotations": 2}).data
    assert data.augment_settings()["rotations"] == 2
    assert TrainConfig().data.augment_settings()["rotations"] is None  # the preset's
    with pytest.raises(ValueError, match="data.rotations must be >= 1, but got 0"):
        TrainConfig.from_flat({"data.rotations": 0})


def _last_block_bn_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The last BatchNorm weight of each residual block of a (timm or torchvision) ResNet-18."""
    body = getattr(model, "backbone", model)
    blocks = [b for name in ("layer1", "layer2", "layer3", "layer4") for b in getattr(body, name)]
    return [b.bn2.weight.detach() for b in blocks]


def test_zero_init_last_false_initialises_as_torchvision_resnets():
    import torchvision

    timm_default = trainer.create_model(ModelConfig(backbone="resnet18"), num_classes=3)
    as_torchvision = trainer.create_model(
        ModelConfig(backbone="resnet18", zero_init_last=False), num_classes=3
    )
    reference = torchvision.models.resnet18(weights=None)
    assert all((w == 0).all() for w in _last_block_bn_weights(timm_default))
    for ours, theirs in zip(
        _last_block_bn_weights(as_torchvision), _last_block_bn_weights(reference), strict=True
    ):
        assert torch.equal(ours, theirs)  # ones, as torchvision starts them
    assert all((w == 1).all() for w in _last_block_bn_weights(reference))


def test_zero_init_last_false_builds_backbones_without_that_option():
    model = trainer.create_model(
        ModelConfig(backbone="efficientnet_b0", zero_init_last=False), num_classes=3
    )
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
