"""What every dataset loader shares: ``ImageData``, the dataset registry and seeded splits.

``trainer.data`` (``load_data``, the digits) and the image-folder layouts (``trainer.data.loaders``)
both build on this module, and it imports neither of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer._registry import Registry
from trainer.config import DataConfig


@dataclass
class ImageData:
    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor  # int64 [N]
    x_val: torch.Tensor
    y_val: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...] = ()  # per channel, in [0, 1] units; filled by load_data
    std: tuple[float, ...] = ()
    x_test: torch.Tensor | None = None  # the held-out test split; None from load_data
    y_test: torch.Tensor | None = None
    # one identity per image and split (file name and content hash), for the split record;
    # loaders may leave it empty (then the pixels are hashed)
    ids: dict[str, list[str]] = field(default_factory=dict, repr=False)
    test_source: str = ""  # where the test split comes from, e.g. "data.test_fraction=0.2"
    # per split: {"count": images, "hash": of the sorted (image, label) list}; by load_data
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the decoded-image cache (.npy) the images came from, if any: load_data keeps the
    # training split's statistics beside it
    cache: Path | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_test(self) -> bool:
        return "test" in self.splits or self.x_test is not None

    @property
    def in_chans(self) -> int:
        return int(self.x_train.shape[1])


_DATASETS: Registry[Callable[[DataConfig], ImageData]] = Registry("dataset")
register_dataset = _DATASETS.register


def list_datasets() -> list[str]:
    return _DATASETS.names()


def get_dataset(name: str) -> Callable[[DataConfig], ImageData]:
    """The loader registered as ``name``; an unknown name raises ValueError with the options."""
    return _DATASETS.get(name)


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


def grouped_split(
    y: np.ndarray,
    groups: Sequence[str | None],
    *,
    fraction: float,
    seed: int,
    class_names: Sequence[str],
    key: str = "data.val_fraction",
    fraction_of: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of positions ``0..len(y)-1`` into (kept, held out) in which
    images of one group (byte-identical files) stay on one side: seed 004's leakage lesson,
    no image may be on both sides. ``groups[i]`` None is a group of its own.

    ``key`` and ``fraction_of`` (the share of all images that ``fraction`` stands for) only
    word the error messages."""
    first: dict[str, int] = {}
    group = np.empty(len(y), dtype=np.int64)  # position of each image's first identical copy
    for i, d in enumerate(groups):
        group[i] = first.setdefault(d, i) if d is not None else i
    reps = np.unique(group)
    counts = np.bincount(y[reps], minlength=len(class_names))
    if counts.min() < 2:
        c = int(counts.argmin())
        raise ValueError(
            f"class {class_names[c]!r} has {counts[c]} distinct image(s) left to split by {key}; "
            "a stratified split needs at least 2 per class: add images, or give the split as a "
            "folder (train/ and val/, test/)"
        )
    n_held = int(np.ceil(fraction * len(reps)))
    if n_held < len(class_names) or len(reps) - n_held < len(class_names):
        shown = fraction if fraction_of is None else fraction_of
        raise ValueError(
            f"{key}={shown:g} puts {n_held} of {len(reps)} images on one side, but each of "
            f"the {len(class_names)} classes needs one on each side; change {key} or add images"
        )
    _, held = stratified_split(y[reps], val_fraction=fraction, seed=seed)
    in_held = np.zeros(len(y), dtype=bool)
    in_held[reps[held]] = True
    in_held = in_held[group]  # every copy goes where its first copy went
    return np.flatnonzero(~in_held), np.flatnonzero(in_held)


__all__ = [
    "ImageData",
    "get_dataset",
    "grouped_split",
    "list_datasets",
    "register_dataset",
    "stratified_split",
]
