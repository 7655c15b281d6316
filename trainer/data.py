"""Datasets as whole uint8 tensors: load once, index batches, no per-sample Python.

``load_data(cfg)`` returns an ``ImageData`` (train/val images as uint8 ``[N, C, H, W]``, int64
labels, class names, normalisation statistics, and ``splits``: the count and a hash of the
image list of every split). Loaders are registered by name; ``digits`` is scikit-learn's
bundled 8x8 digits, upsampled, so everything runs offline.

A test split (``data.test_fraction``, a ``test/`` folder, or ``split=test`` manifest rows) is
held out from both training and validation. ``load_data`` never hands it out, so a training
run (a search trial) cannot touch it, not even by moving it to the device; ``load_test(cfg)``
returns it, for the commands that report on it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from trainer._registry import Registry
from trainer.config import DataConfig
from trainer.resize import resize_uint8

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
    x_test: torch.Tensor | None = None  # the held-out test split; None from load_data
    y_test: torch.Tensor | None = None
    # one identity per image and split (file name and content hash), for the split record;
    # loaders may leave it empty (then the pixels are hashed)
    ids: dict[str, list[str]] = field(default_factory=dict, repr=False)
    test_source: str = ""  # where the test split comes from, e.g. "data.test_fraction=0.2"
    # per split: {"count": images, "hash": of the sorted (image, label) list}; by load_data
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)

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


def load_data(cfg: DataConfig) -> ImageData:
    """Load (once per process and data config) the train/val tensors for ``cfg``.

    The test split, if any, is left out (``x_test`` is None); ``splits`` records it."""
    _DATASETS.get(cfg.name)  # unknown names fail here, with the options
    return _load_cached(_data_key(cfg)).view


def load_test(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out test images (uint8 ``[N, C, H, W]``) and labels of ``cfg``'s data.

    Raises ValueError, with the ways to get one, when the data has no test split."""
    _DATASETS.get(cfg.name)
    loaded = _load_cached(_data_key(cfg))
    if loaded.x_test is None:
        raise ValueError(
            f"the {cfg.name!r} data at {cfg.root or 'its default location'} has no test split; "
            "set data.test_fraction (e.g. 0.2) in the study's [data], add a labeled test/ "
            "folder, or mark manifest rows split=test, then run the search as a new study"
        )
    return loaded.x_test, loaded.y_test


def split_record(cfg: DataConfig) -> dict[str, dict[str, Any]]:
    """Count and hash of every split of ``cfg``'s data, e.g. ``{"train": {"count": 1149,
    "hash": "3f0c..."}, "val": {...}, "test": {..., "source": "data.test_fraction=0.2"}}``."""
    return json.loads(json.dumps(load_data(cfg).splits))  # a copy the caller may keep


class _Loaded(NamedTuple):
    view: ImageData  # train/val only: what training runs get
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None


def _data_key(cfg: DataConfig) -> DataConfig:
    # Fields that only change training (batch size, augmentation) share one loaded dataset.
    return DataConfig(
        name=cfg.name,
        root=cfg.root,
        image_size=cfg.image_size,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        split_seed=cfg.split_seed,
        classes=cfg.classes,
        normalize=cfg.normalize,
        strict=cfg.strict,
        eval_resize=cfg.eval_resize,
    )


@functools.lru_cache(maxsize=4)
def _load_cached(cfg: DataConfig) -> _Loaded:
    data = _DATASETS.get(cfg.name)(cfg)
    if cfg.classes is not None:
        data = select_classes(data, cfg.classes)
    _check_labels(data)
    if cfg.test_fraction > 0 and data.x_test is None:
        raise ValueError(f"dataset {cfg.name!r} does not support data.test_fraction; set it to 0")
    data.splits = _split_records(data)
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
    view = dataclasses.replace(data, x_test=None, y_test=None, ids={})
    return _Loaded(view, data.x_test, data.y_test)


def _split_records(data: ImageData) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for split, x, y in (
        ("train", data.x_train, data.y_train),
        ("val", data.x_val, data.y_val),
        ("test", data.x_test, data.y_test),
    ):
        if x is None:
            continue
        ids = data.ids.get(split)
        if ids is None or len(ids) != len(y):  # a loader without identities: hash the pixels
            ids = [hashlib.blake2b(row.numpy().tobytes(), digest_size=16).hexdigest() for row in x]
        labels = [data.class_names[i] for i in y.tolist()]
        blob = json.dumps(sorted(zip(ids, labels, strict=True)))
        out[split] = {"count": len(ids), "hash": hashlib.sha256(blob.encode()).hexdigest()[:16]}
    if "test" in out and data.test_source:
        out["test"]["source"] = data.test_source
    return out


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

    def pick_ids(split: str, y: torch.Tensor | None) -> list[str] | None:
        ids = data.ids.get(split)
        if ids is None or y is None:
            return None
        return [i for i, keep in zip(ids, (lut[y] >= 0).tolist(), strict=True) if keep]

    x_train, y_train = pick(data.x_train, data.y_train)
    x_val, y_val = pick(data.x_val, data.y_val)
    x_test = y_test = None
    if data.x_test is not None:
        x_test, y_test = pick(data.x_test, data.y_test)
    ids = {s: pick_ids(s, y) for s, y in (("train", data.y_train), ("val", data.y_val))}
    ids["test"] = pick_ids("test", data.y_test)
    return ImageData(
        x_train, y_train, x_val, y_val, [data.class_names[c] for c in classes],
        x_test=x_test, y_test=y_test, test_source=data.test_source,
        ids={s: v for s, v in ids.items() if v is not None},
    )  # fmt: skip


def _check_labels(data: ImageData) -> None:
    splits = [("training", data.y_train), ("validation", data.y_val)]
    if data.y_test is not None:
        splits.append(("test", data.y_test))
    for split, y in splits:
        if len(y) == 0:
            raise ValueError(f"the {split} split is empty; add images or lower data.val_fraction")
        if int(y.min()) < 0 or int(y.max()) >= data.num_classes:
            raise ValueError(
                f"{split} labels must be in 0..{data.num_classes - 1}, "
                f"but got {int(y.min())}..{int(y.max())}"
            )
    for split, y in splits[1:]:
        missing = sorted(set(y.tolist()) - set(data.y_train.tolist()))
        if missing:
            names = ", ".join(data.class_names[i] for i in missing)
            raise ValueError(f"{split} classes with no training images: {names}")


@register_dataset("digits")
def _digits(cfg: DataConfig) -> ImageData:
    """scikit-learn's 1,797 8x8 handwritten digits (values 0..16), grayscale, 10 classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x8 = torch.from_numpy(bunch.images * (255.0 / 16.0)).round().to(torch.uint8)[:, None]
    x = resize_uint8(x8, cfg.image_size)
    x_eval = x if cfg.eval_resize == "squash" else resize_uint8(x8, cfg.image_size, cfg.eval_resize)
    target = np.asarray(bunch.target, dtype=np.int64)
    y = torch.from_numpy(target)
    names = [str(i) for i in range(10)]
    # identity of an image: its index and its original 8x8 pixels (not the resized ones, so
    # the split record does not depend on data.image_size)
    digests = [
        hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).hexdigest()
        for im in bunch.images
    ]
    ids = np.array([f"{i}:{d}" for i, d in enumerate(digests)], dtype=object)
    pool, test_idx = np.arange(len(target)), None
    val_fraction = cfg.val_fraction
    if cfg.test_fraction > 0:
        keep, held = grouped_split(
            target, digests, fraction=cfg.test_fraction, seed=cfg.split_seed,
            class_names=names, key="data.test_fraction",
        )  # fmt: skip
        pool, test_idx = keep, held
        val_fraction = cfg.val_fraction / (1.0 - cfg.test_fraction)  # of all images
    # No two digits images are identical, so the grouped split equals the plain stratified
    # split the digits always had: adding test_fraction = 0 changes no existing split.
    tr, va = grouped_split(
        target[pool], [digests[i] for i in pool], fraction=val_fraction, seed=cfg.split_seed,
        class_names=names, fraction_of=cfg.val_fraction,
    )  # fmt: skip
    train_idx, val_idx = pool[tr], pool[va]
    splits = {"train": train_idx, "val": val_idx}
    if test_idx is not None:
        splits["test"] = test_idx
    return ImageData(
        x[train_idx], y[train_idx], x_eval[val_idx], y[val_idx], names,
        x_test=None if test_idx is None else x_eval[test_idx],
        y_test=None if test_idx is None else y[test_idx],
        ids={s: ids[idx].tolist() for s, idx in splits.items()},
        test_source=f"data.test_fraction={cfg.test_fraction:g}" if test_idx is not None else "",
    )  # fmt: skip


# The image-folder layouts (folder, flat, csv) register themselves on import.
from trainer import folders as _folders  # noqa: E402, F401
