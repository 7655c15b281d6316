"""Image folders on disk as whole uint8 tensors, decoded once into a shared on-disk cache.

Registered dataset layouts (``data.name``), all reading ``data.root``:

- ``folder``: one subfolder per class (torchvision's ImageFolder), searched recursively. If
  ``root/train`` and ``root/val`` (or ``valid``/``validation``) exist they are the given splits;
  otherwise ``root/train`` (or ``root`` itself) is split with a seeded stratified split. A
  labeled ``root/test`` (class subfolders) beside ``root/train`` is the test split; an
  unlabeled one (images directly in it, for ``search predict``) is ignored.
- ``flat``: files named ``<label>_<id>.<ext>`` in one folder (seed 000's Food-11), with the same
  ``train``/``val``/``test`` rule. Class names are the label ids, sorted numerically.
- ``csv``: ``data.root`` is a manifest with a header ``path,label[,split]``; paths are relative to
  the manifest's folder, labels are names or integer ids, ``split`` is train, val or test.
  Without a validation row the training rows are split.

Without a given test split, ``data.test_fraction`` holds out that share of the images (seeded,
stratified, byte-identical files on one side) before the validation split is drawn.

``load_unlabeled(root, image_size=...)`` reads a flat folder of images for prediction.

This module turns a listing into splits. The listings (and ``detect_layout``, ``scan_folder``,
``unreadable_files`` for ``search init``) are ``trainer.data.layouts``; decoding and its on-disk cache
are ``trainer.data.decode``; the resize protocols are ``trainer.data.resize``. Every file is decoded once
per resolution into the cache; with ``data.eval_resize = "center_crop"`` the validation and
test images are decoded once more, cropped, into a cache of their own. Unreadable files are
skipped with one ``BadImageWarning`` listing them; ``data.strict`` refuses to start.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from trainer.config import DataConfig
from trainer.data.decode import (
    CACHE_VERSION,
    MAX_PIXELS,
    BadImageWarning,
    cache_dir,
    decode_cached,
    max_pixels,
    relative_name,
)
from trainer.data.imagedata import ImageData, grouped_split, register_dataset
from trainer.data.layouts import (
    IMAGE_EXTENSIONS,
    FolderScan,
    Listing,
    class_names,
    csv_listing,
    detect_layout,
    dir_listing,
    image_files,
    root_dir,
    scan_folder,
    unreadable_files,
)
from trainer.data.resize import eval_mode

_SHOWN_BAD = 20  # bad files named in the warning; the rest are counted


@register_dataset("folder")
def _folder(cfg: DataConfig) -> ImageData:
    """Class subfolders (ImageFolder layout), with or without train/val folders."""
    return _load_labeled(cfg, dir_listing("folder", root_dir(cfg)))


@register_dataset("flat")
def _flat(cfg: DataConfig) -> ImageData:
    """A folder of ``<label>_<id>.<ext>`` files (seed 000), with or without train/val folders."""
    return _load_labeled(cfg, dir_listing("flat", root_dir(cfg)))


@register_dataset("csv")
def _csv(cfg: DataConfig) -> ImageData:
    """A manifest ``path,label[,split]``; paths relative to the manifest's folder."""
    if cfg.root is None:
        raise ValueError("data.root is not set; point it at the manifest .csv file")
    manifest = Path(cfg.root).expanduser()
    if not manifest.is_file():
        what = "is a folder" if manifest.is_dir() else "does not exist"
        raise ValueError(
            f"data.root {manifest} {what}; data.name='csv' needs the manifest file "
            "(header path,label[,split])"
        )
    return _load_labeled(cfg, csv_listing(manifest))


def load_unlabeled(
    root: str | Path, *, image_size: int, strict: bool = False, eval_resize: str = "squash"
) -> tuple[torch.Tensor, list[str]]:
    """Images directly in ``root`` (e.g. seed 000's test folder) as uint8 ``[N, 3, S, S]``,
    resized as ``data.eval_resize`` says, with their file names, in natural order (2.png before
    10.png). Unreadable files are skipped with one warning (``strict``: ValueError)."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist; pass the folder of test images")
    files = list(image_files(folder, recursive=False))
    if not files:
        raise ValueError(
            f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) directly in {folder}; "
            "pass the folder that holds the test images"
        )
    decoded = decode_cached("unlabeled", folder, files, image_size, eval_resize)
    _report_bad(folder, decoded.bad_names(folder, files), strict=strict)
    good = np.array([i for i in range(len(files)) if i not in decoded.bad], dtype=np.int64)
    if len(good) == 0:
        raise ValueError(f"none of the {len(files)} images in {folder} could be read")
    x = torch.from_numpy(decoded.arranged(good))
    return x, [relative_name(files[i], folder) for i in good.tolist()]


def _load_labeled(cfg: DataConfig, listing: Listing) -> ImageData:
    decoded = decode_cached(listing.layout, listing.base, listing.files, cfg.image_size)
    _report_bad(listing.base, decoded.bad_names(listing.base, listing.files), strict=cfg.strict)
    n = len(listing.files)
    good = np.array([i for i in range(n) if i not in decoded.bad], dtype=np.int64)
    is_val = np.array(listing.is_val if listing.is_val is not None else [False] * n, dtype=bool)
    is_test = np.array(listing.is_test if listing.is_test is not None else [False] * n, bool)
    if listing.is_test is not None and cfg.test_fraction > 0:
        where = "split=test rows" if listing.layout == "csv" else "a labeled test/ folder"
        raise ValueError(
            f"{listing.base} has {where} and data.test_fraction={cfg.test_fraction:g} asks for "
            "another test split; set data.test_fraction = 0 to use the given one"
        )
    train_pool = good[~is_val[good] & ~is_test[good]]
    labels = np.array(listing.labels, dtype=object)
    names = class_names(set(labels[train_pool].tolist()))
    if not names:
        raise ValueError(f"no readable training images under {listing.base}")
    lost = sorted(set(labels[~is_val & ~is_test].tolist()) - set(names))
    if lost:
        raise ValueError(
            f"class(es) {', '.join(lost[:10])} have no readable training images under "
            f"{listing.base}; replace the unreadable files"
        )
    index = {name: i for i, name in enumerate(names)}
    y_all = np.array([index.get(lb, -1) for lb in listing.labels], dtype=np.int64)
    digests = decoded.digests

    def split_off(pool: np.ndarray, fraction: float, key: str, of: float | None = None):
        keep, held = grouped_split(
            y_all[pool], [digests[i] for i in pool], fraction=fraction, seed=cfg.split_seed,
            class_names=names, key=key, fraction_of=of,
        )  # fmt: skip
        return pool[keep], pool[held]

    test_idx, source = good[is_test[good]], "test/ folder"
    if listing.layout == "csv":
        source = "manifest rows split=test"
    val_fraction, val_of = cfg.val_fraction, None
    if cfg.test_fraction > 0:  # held out first, so the test set does not move with val_fraction
        train_pool, test_idx = split_off(train_pool, cfg.test_fraction, "data.test_fraction")
        source = f"data.test_fraction={cfg.test_fraction:g}"
        if listing.is_val is None:
            val_fraction, val_of = cfg.val_fraction / (1.0 - cfg.test_fraction), cfg.val_fraction
    if listing.is_val is None:
        train_idx, val_idx = split_off(train_pool, val_fraction, "data.val_fraction", val_of)
    else:
        train_idx, val_idx = train_pool, good[is_val[good]]
        _warn_duplicates(listing, digests, train_idx, val_idx)
    has_test = listing.is_test is not None or cfg.test_fraction > 0
    if has_test and listing.is_test is not None:
        _warn_duplicates(
            listing, digests, np.concatenate([train_idx, val_idx]), test_idx, what="test"
        )
    if has_test and len(test_idx) == 0:
        raise ValueError(f"the test split under {listing.base} has no readable images")

    order = np.concatenate([train_idx, val_idx, test_idx])
    x = torch.from_numpy(decoded.arranged(order))
    y = torch.from_numpy(y_all[order])
    k, v = len(train_idx), len(train_idx) + len(val_idx)
    x_eval = x[k:]  # validation then test: views of the same mapping, no copy
    if cfg.eval_resize != "squash":  # decoded again, cropped, into a mapping of their own
        x_eval = _decode_eval(listing, order[k:], cfg)

    def ids(idx: np.ndarray) -> list[str]:
        return [
            f"{relative_name(listing.files[i], listing.base)}#{digests[i]}" for i in idx.tolist()
        ]

    return ImageData(
        x[:k], y[:k], x_eval[: v - k], y[k:v], names,
        x_test=x_eval[v - k :] if has_test else None,
        y_test=y[v:] if has_test else None,
        ids={"train": ids(train_idx), "val": ids(val_idx), "test": ids(test_idx)},
        test_source=source if has_test else "",
        cache=decoded.path,
    )  # fmt: skip


def _decode_eval(listing: Listing, rows: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """The files ``rows`` of ``listing`` decoded under ``cfg.eval_resize``, in that order.

    They get a cache of their own, keyed (besides the files, sizes and mtimes) by the protocol
    and the list of names, so splits of one folder that differ do not evict each other."""
    files = [listing.files[i] for i in rows.tolist()]
    if not files:
        return torch.empty(0, 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    listed = json.dumps([relative_name(f, listing.base) for f in files])
    names = hashlib.sha256(listed.encode()).hexdigest()[:12]
    mode = eval_mode(cfg.eval_resize, cfg.crop_pct)
    decoded = decode_cached(listing.layout, listing.base, files, cfg.image_size, mode, subset=names)
    if decoded.bad:  # these files decoded a moment ago: they changed while loading
        bad = "; ".join(f"{n} ({why})" for n, why in decoded.bad_names(listing.base, files)[:5])
        raise ValueError(f"image files under {listing.base} changed while loading: {bad}; rerun")
    return torch.from_numpy(decoded.arranged(np.arange(len(files))))


def _warn_duplicates(
    listing: Listing,
    digests: Sequence[str | None],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    *,
    what: str = "validation",
) -> None:
    train_digests = {digests[i] for i in train_idx.tolist()} - {None}
    dup = [i for i in val_idx.tolist() if digests[i] in train_digests]
    if dup:
        shown = ", ".join(relative_name(listing.files[i], listing.base) for i in dup[:5])
        more = f" and {len(dup) - 5} more" if len(dup) > 5 else ""
        other = "training" if what == "validation" else "training or validation"
        warnings.warn(
            f"{len(dup)} {what} image(s) are byte-identical to {other} images, so "
            f"{what} accuracy is inflated: {shown}{more}; remove them from one split",
            BadImageWarning,
            stacklevel=2,
        )


def _report_bad(base: Path, bad: list[tuple[str, str]], *, strict: bool) -> None:
    if not bad:
        return
    shown = "; ".join(f"{name} ({why})" for name, why in bad[:_SHOWN_BAD])
    more = f"; and {len(bad) - _SHOWN_BAD} more" if len(bad) > _SHOWN_BAD else ""
    if strict:
        raise ValueError(
            f"{len(bad)} unreadable image file(s) under {base}: {shown}{more}; fix or delete "
            "them, or set data.strict=false to skip them"
        )
    warnings.warn(
        f"skipping {len(bad)} unreadable image file(s) under {base}: {shown}{more} "
        "(set data.strict=true to refuse to start instead)",
        BadImageWarning,
        stacklevel=2,
    )


__all__ = [
    "BadImageWarning",
    "CACHE_VERSION",
    "FolderScan",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "cache_dir",
    "detect_layout",
    "load_unlabeled",
    "max_pixels",
    "scan_folder",
    "unreadable_files",
]
