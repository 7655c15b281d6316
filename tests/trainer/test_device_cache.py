"""Images larger than the device: kept in host memory, each batch copied over one ahead, with
the same results as the set on the device (forced here with data.device_cache = "host")."""

from __future__ import annotations

import pytest
import torch

import trainer
from trainer import TrainConfig
from trainer.loop import data_placement

GiB = 1 << 30


def test_auto_keeps_the_images_on_the_device_only_when_they_fit():
    cuda = torch.device("cuda")
    assert data_placement("auto", device=cuda, needed=6 * GiB, free=8 * GiB) == "host"
    assert data_placement("auto", device=cuda, needed=3 * GiB, free=8 * GiB) == "device"
    assert (
        data_placement("auto", device=torch.device("cpu"), needed=60 * GiB, free=None) == "device"
    )
    assert data_placement("host", device=cuda, needed=1, free=8 * GiB) == "host"
    assert data_placement("device", device=cuda, needed=9 * GiB, free=8 * GiB) == "device"


def test_unknown_setting_is_refused_with_the_options():
    with pytest.raises(ValueError, match="data.device_cache.*Options: auto, device, host"):
        TrainConfig.from_flat({"data.device_cache": "gpu"})


@pytest.mark.parametrize("extra", [{}, {"data.augment": "strong", "data.cutmix": 0.5}])
def test_host_path_trains_exactly_like_the_device_path(extra):
    flat = {
        "data.image_size": 8, "data.batch_size": 64, "model.width": 8, "train.epochs": 2,
        "train.patience": 0, **extra,
    }  # fmt: skip

    def run(place: str) -> trainer.TrainResult:
        return trainer.train(TrainConfig.from_flat({**flat, "data.device_cache": place}))

    on_device, on_host = run("device"), run("host")

    def strip(r: trainer.TrainResult) -> list[dict]:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in r.history]

    assert strip(on_host) == strip(on_device)
    a, b = on_device.model.state_dict(), on_host.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
