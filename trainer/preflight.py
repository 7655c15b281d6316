"""Checks that hold for every trial of a configuration, run once before the first trial."""

from __future__ import annotations

import torch

from trainer._registry import unknown_name_error
from trainer.config import TrainConfig
from trainer.data import ImageData
from trainer.device import select_device
from trainer.loop import build_model
from trainer.losses import list_losses
from trainer.models import check_backbone
from trainer.optim import list_optimizers


def check_names(cfg: TrainConfig) -> None:
    """Unknown backbone, loss or optimizer names: a ValueError with the closest options."""
    check_backbone(cfg.model.backbone)
    for kind, name, options in (
        ("loss", cfg.loss.name, list_losses()),
        ("optimizer", cfg.optim.name, list_optimizers()),
    ):
        if name not in options:
            raise unknown_name_error(kind, name, options)


def check_model(cfg: TrainConfig, data: ImageData) -> None:
    """Build ``cfg``'s model on the CPU (weights, freezing) and run two images through it.

    Missing ImageNet weights offline, an unreadable pretrained file, a backbone that cannot
    take the image size, or a ``train.device`` this machine does not have would otherwise fail
    every trial; here they are one ValueError naming the backbone (or device) and the fix.
    """
    select_device(cfg.train.device)  # train.device = "cuda" where CUDA is not usable: the fix
    name, size = cfg.model.backbone, cfg.data.image_size
    try:
        model = build_model(cfg, data, torch.device("cpu"))
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(2, data.in_chans, size, size))
    except ValueError as exc:
        raise ValueError(f"backbone {name!r}: {exc}") from None
    except Exception as exc:  # a shape error, or a timm model's size assertion
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"backbone {name!r} cannot take {size} px images ({first}); raise data.image_size "
            "or leave this backbone out of the space"
        ) from None
