"""trainer.measure_throughput: real training steps timed on synthetic pixels."""

from __future__ import annotations

import types

import pytest

import trainer.throughput as throughput_mod
from trainer import TrainConfig, measure_throughput


def _cfg(**flat) -> TrainConfig:
    return TrainConfig.from_flat(
        {"model.backbone": "small_cnn", "model.width": 8, "data.image_size": 16, **flat}
    )


@pytest.fixture
def forward_clock(monkeypatch) -> list[int]:
    """A clock that advances one second per forward pass of the measured model and not
    otherwise: the measured rate is then (images per step) / (forward passes per step),
    whatever the machine. Returns the list whose only item counts forward passes."""
    passes = [0]
    real_create_model = throughput_mod.create_model

    def create_model(*args, **kwargs):
        model = real_create_model(*args, **kwargs)
        model.register_forward_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
        return model

    monkeypatch.setattr(throughput_mod, "create_model", create_model)
    monkeypatch.setattr(
        throughput_mod, "time", types.SimpleNamespace(perf_counter=lambda: passes[0])
    )
    return passes


def test_throughput_counts_the_images_of_the_timed_steps():
    got = measure_throughput(_cfg(**{"data.batch_size": 8}), num_classes=3, steps=2)
    assert got.images_per_second > 0
    assert got.batch_size == 8 and got.steps == 2
    assert got.device.startswith("cpu:")


@pytest.mark.parametrize("steps", [1, 3])
def test_images_per_second_is_images_of_all_timed_steps_over_their_time(forward_clock, steps):
    got = measure_throughput(_cfg(**{"data.batch_size": 8}), num_classes=3, steps=steps, warmup=2)
    # one forward pass (one fake second) per step: 8 images a second, however many steps
    assert got.steps == steps
    assert got.images_per_second == pytest.approx(8.0)
    assert forward_clock[0] == 2 + steps  # the warm-up steps ran, untimed


def test_sam_is_measured_with_its_second_pass(forward_clock):
    plain = measure_throughput(_cfg(**{"data.batch_size": 8}), num_classes=2, steps=3)
    forward_clock[0] = 0
    sam = measure_throughput(
        _cfg(**{"data.batch_size": 8, "optim.name": "sam_adam"}), num_classes=2, steps=3
    )
    # two forward passes per SAM step: half the images per second of the plain optimizer
    assert plain.images_per_second == pytest.approx(8.0)
    assert sam.images_per_second == pytest.approx(4.0)
    assert forward_clock[0] == 2 * (1 + 3)


def test_a_slow_configuration_is_timed_by_fewer_steps_within_max_seconds():
    got = measure_throughput(_cfg(), num_classes=2, steps=1000, max_seconds=0.0)
    assert got.steps == 1


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        measure_throughput(_cfg(), num_classes=2, steps=0)
