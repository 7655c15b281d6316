"""trainer.measure_throughput: real training steps timed on synthetic pixels."""

from __future__ import annotations

import pytest

from trainer import TrainConfig, measure_throughput


def _cfg(**flat) -> TrainConfig:
    return TrainConfig.from_flat(
        {"model.backbone": "small_cnn", "model.width": 8, "data.image_size": 16, **flat}
    )


def test_throughput_counts_the_images_of_the_timed_steps():
    got = measure_throughput(_cfg(**{"data.batch_size": 8}), num_classes=3, steps=2)
    assert got.images_per_second > 0
    assert got.batch_size == 8 and got.steps == 2
    assert got.device.startswith("cpu:")


def test_a_slow_configuration_is_timed_by_fewer_steps_within_max_seconds():
    got = measure_throughput(_cfg(), num_classes=2, steps=1000, max_seconds=0.0)
    assert got.steps == 1


def test_sam_is_measured_with_its_second_pass():
    got = measure_throughput(_cfg(**{"optim.name": "sam_adam"}), num_classes=2, steps=1)
    assert got.images_per_second > 0


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        measure_throughput(_cfg(), num_classes=2, steps=0)
