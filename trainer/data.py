"""Datasets as whole uint8 tensors: load once, index batches, no per-sample Python.

``load_data(cfg)`` returns an ``ImageData`` (train/val images as uint8 ``[N, C, H, W]``, int64
labels, class names, normalisation statistics). Loaders are registered by name; ``digits`` is
scikit-learn's bundled 8x8 digits, upsampled, so everything runs offline.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer._registry import Registry
from trainer.config import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageData:
    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor  # int64 [N]
    x_val: torch.Tensor
    y_val: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...] = ()  # per channel, in [0, 1] units; filled by load_data
    std: tuple[float, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.x_train.shape[1])


_DATASETS: Registry[Callable[[DataConfig], ImageData]] = Registry("dataset")
register_dataset = _DATASETS.register


def list_datasets() -> list[str]:
    return _DATASETS.names()


def load_data(cfg: DataConfig) -> ImageData:
    """Load (once per process and data config) the train/val tensors for ``cfg``."""
    _DATASETS.get(cfg.name)  # unknown names fail here, with the options
    return _load_cached(_data_key(cfg))


def _data_key(cfg: DataConfig) -> DataConfig:
    # Fields that only change training (batch size, augmentation) share one loaded dataset.
    return DataConfig(
        name=cfg.name,
        root=cfg.root,
        image_size=cfg.image_size,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        classes=cfg.classes,
        normalize=cfg.normalize,
        strict=cfg.strict,
    )


@functools.lru_cache(maxsize=4)
def _load_cached(cfg: DataConfig) -> ImageData:
    data = _DATASETS.get(cfg.name)(cfg)
    if cfg.classes is not None:
        data = select_classes(data, cfg.classes)
    _check_labels(data)
    if cfg.normalize == "imagenet":
        if data.in_chans != 3:
            raise ValueError(
                f"data.normalize='imagenet' needs RGB images, but {cfg.name!r} has "
                f"{data.in_chans} channel(s); use data.normalize='dataset'"
            )
        data.mean, data.std = IMAGENET_MEAN, IMAGENET_STD
    elif cfg.normalize == "dataset":
        data.mean, data.std = channel_stats(data.x_train)
    else:
        data.mean, data.std = (0.0,) * data.in_chans, (1.0,) * data.in_chans
    return data


def channel_stats(
    x: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (seed 000 normalised so)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk].to(torch.float64) / 255.0
        total += xb.sum(dim=(0, 2, 3))
        total_sq += (xb * xb).sum(dim=(0, 2, 3))
    n = len(x) * x.shape[2] * x.shape[3]
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.clamp_min(1e-3).tolist())


def stratified_split(
    labels: np.ndarray, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified train/val indices; every sample lands in exactly one of them."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        idx, test_size=val_fraction, random_state=seed, stratify=labels
    )
    return np.sort(train_idx), np.sort(val_idx)


def select_classes(data: ImageData, classes: tuple[int, ...]) -> ImageData:
    """Keep only ``classes`` (original label ids), relabelled 0..k-1 in the given order."""
    bad = [c for c in classes if not 0 <= c < data.num_classes]
    if bad or len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(
            f"data.classes must be >= 2 distinct labels in 0..{data.num_classes - 1}, "
            f"but got {list(classes)}"
        )
    lut = torch.full((data.num_classes,), -1, dtype=torch.int64)
    lut[list(classes)] = torch.arange(len(classes))

    def pick(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = lut[y] >= 0
        return x[keep], lut[y[keep]]

    x_train, y_train = pick(data.x_train, data.y_train)
    x_val, y_val = pick(data.x_val, data.y_val)
    return ImageData(x_train, y_train, x_val, y_val, [data.class_names[c] for c in classes])


def _check_labels(data: ImageData) -> None:
    for split, y in (("training", data.y_train), ("validation", data.y_val)):
        if len(y) == 0:
            raise ValueError(f"the {split} split is empty; add images or lower data.val_fraction")
        if int(y.min()) < 0 or int(y.max()) >= data.num_classes:
            raise ValueError(
                f"{split} labels must be in 0..{data.num_classes - 1}, "
                f"but got {int(y.min())}..{int(y.max())}"
            )
    missing = sorted(set(data.y_val.tolist()) - set(data.y_train.tolist()))
    if missing:
        names = ", ".join(data.class_names[i] for i in missing)
        raise ValueError(f"validation classes with no training images: {names}")


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 [N, C, H, W] batch to size x size (antialiased when shrinking)."""
    if x.shape[-2:] == (size, size):
        return x
    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


@register_dataset("digits")
def _digits(cfg: DataConfig) -> ImageData:
    """scikit-learn's 1,797 8x8 handwritten digits (values 0..16), grayscale, 10 classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images * (255.0 / 16.0)).round().to(torch.uint8)[:, None]
    x = resize_uint8(x, cfg.image_size)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, val_idx = stratified_split(
        bunch.target, val_fraction=cfg.val_fraction, seed=cfg.split_seed
    )
    return ImageData(
        x[train_idx], y[train_idx], x[val_idx], y[val_idx], [str(i) for i in range(10)]
    )


# The image-folder layouts (folder, flat, csv) register themselves on import.
from trainer import folders as _folders  # noqa: E402, F401
