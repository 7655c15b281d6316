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
from typing import Any, NamedTuple

import numpy as np
import torch

from trainer.config import DataConfig

# The image-folder layouts (folder, flat, csv) register themselves on import.
from trainer.data import loaders as _folders  # noqa: F401
from trainer.data.decode import read_stats, write_stats
from trainer.data.imagedata import (
    ImageData,
    get_dataset,
    grouped_split,
    list_datasets,
    register_dataset,
    stratified_split,
)
from trainer.data.resize import eval_mode, resize_uint8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_data(cfg: DataConfig) -> ImageData:
    """Load (once per process and data config) the train/val tensors for ``cfg``.

    The test split, if any, is left out (``x_test`` is None); ``splits`` records it."""
    get_dataset(cfg.name)  # unknown names fail here, with the options
    return _load_cached(_data_key(cfg)).view


def load_test(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out test images (uint8 ``[N, C, H, W]``) and labels of ``cfg``'s data.

    Raises ValueError, with the ways to get one, when the data has no test split."""
    get_dataset(cfg.name)
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
        crop_pct=cfg.crop_pct,
    )


@functools.lru_cache(maxsize=4)
def _load_cached(cfg: DataConfig) -> _Loaded:
    data = get_dataset(cfg.name)(cfg)
    if cfg.classes is not None:
        data = select_classes(data, cfg.classes)
    _check_labels(data)
    if cfg.test_fraction > 0 and data.x_test is None:
        raise ValueError(f"dataset {cfg.name!r} does not support data.test_fraction; set it to 0")
    data.splits = _split_records(data)
    # pretrained: ImageNet's until the backbone's own replace them (trainer.models.for_model)
    if cfg.normalize in ("imagenet", "pretrained"):
        if data.in_chans != 3:
            raise ValueError(
                f"data.normalize={cfg.normalize!r} needs RGB images, but {cfg.name!r} has "
                f"{data.in_chans} channel(s); use data.normalize='dataset'"
            )
        data.mean, data.std = IMAGENET_MEAN, IMAGENET_STD
    elif cfg.normalize == "dataset":
        data.mean, data.std = _train_stats(data)
    else:
        data.mean, data.std = (0.0,) * data.in_chans, (1.0,) * data.in_chans
    view = dataclasses.replace(data, x_test=None, y_test=None, ids={})
    return _Loaded(view, data.x_test, data.y_test)


def _train_stats(data: ImageData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``channel_stats`` of the training images, kept beside the decoded-image cache they came
    from, keyed by the training split's identity (its files, contents and labels), so a later
    trial on the same folder and split reads them instead of passing over every image."""
    if data.cache is None:
        return channel_stats(data.x_train)
    key = f"train:{data.splits['train']['hash']}"
    stats = read_stats(data.cache, key)
    if stats is None:
        stats = channel_stats(data.x_train)
        write_stats(data.cache, key, *stats)
    return stats


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
        x_test=x_test, y_test=y_test, test_source=data.test_source, cache=data.cache,
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
    mode = eval_mode(cfg.eval_resize, cfg.crop_pct)
    x_eval = x if mode == "squash" else resize_uint8(x8, cfg.image_size, mode)
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


__all__ = [  # ImageData, the registry and the splits live in trainer.data.imagedata
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageData",
    "channel_stats",
    "grouped_split",
    "list_datasets",
    "load_data",
    "load_test",
    "register_dataset",
    "select_classes",
    "split_record",
    "stratified_split",
]
