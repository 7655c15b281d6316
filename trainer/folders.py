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
``detect_layout(root)``, ``scan_folder(root)`` and ``unreadable_files(scan, image_size=...)``
look at a folder before any training (``search init``) with the same listing, the same
decoding pass and the same cache.

Every image becomes RGB (grayscale, palette and 16-bit are converted, transparency is composited
on white, EXIF orientation is applied) and is resized directly to ``image_size`` squared, as seed
000's ``Resize((256, 256))``: no crop, so nothing at the border is lost; aspect ratios change.
With ``data.eval_resize = "center_crop"`` the validation and test images (and ``load_unlabeled``'s)
are decoded once more, short side to ``image_size / 0.875`` and the centre square kept
(``trainer.resize``), into a cache of their own. JPEGs are decoded at a reduced DCT scale when
that still covers the target size.

Decoding happens once per (files, resolution): the images go into ``<cache>/<key>.npy`` (uint8
``[N, 3, S, S]``), where the key hashes the layout, root, file list, sizes and mtimes. The cache
directory is ``$HPSEARCH_CACHE_DIR`` or ``~/.cache/hpsearch``. Later loads, in any process, map
the file instead of decoding, so every trial and worker of a study shares the same pages.

Unreadable files (zero bytes, truncated, undecodable, missing, or larger than ``MAX_PIXELS``,
a decompression-bomb guard) are found by this one decoding pass, before any training. By
default they are skipped with one ``BadImageWarning`` listing them; ``data.strict`` refuses.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from trainer.config import DataConfig
from trainer.data import ImageData, grouped_split, register_dataset
from trainer.resize import draft_size, resize_pil

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Images above this many pixels are refused as possible decompression bombs (PIL warns at the
# same default). $HPSEARCH_MAX_PIXELS overrides it.
MAX_PIXELS = 89_478_485
VAL_DIRS = ("val", "valid", "validation")
PARALLEL_MIN_FILES = 64  # below this, decoding in-process beats starting worker processes
_SHOWN_BAD = 20  # bad files named in the warning; the rest are counted
_FLAT_NAME = re.compile(r"(\d+)_.+")
_INT = re.compile(r"-?\d+")


class BadImageWarning(UserWarning):
    """Some image files could not be used and were skipped."""


def cache_dir() -> Path:
    """Where decoded images are cached: ``$HPSEARCH_CACHE_DIR`` or ``~/.cache/hpsearch``."""
    root = os.environ.get("HPSEARCH_CACHE_DIR") or Path.home() / ".cache" / "hpsearch"
    path = Path(root).expanduser() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def max_pixels() -> int:
    env = os.environ.get("HPSEARCH_MAX_PIXELS")
    if env is None:
        return MAX_PIXELS
    if not env.isdigit() or int(env) < 1:
        raise ValueError(f"HPSEARCH_MAX_PIXELS must be a positive integer, but got {env!r}")
    return int(env)


# --------------------------------------------------------------------------------- layouts


@dataclass
class _Listing:
    layout: str
    base: Path  # file names in messages and cache keys are relative to this
    files: list[Path]
    labels: list[str]  # raw label of each file: folder name, id, or manifest label
    is_val: list[bool] | None  # None: no given validation set, split with data.split_seed
    is_test: list[bool] | None = None  # None: no given test set


@register_dataset("folder")
def _folder(cfg: DataConfig) -> ImageData:
    """Class subfolders (ImageFolder layout), with or without train/val folders."""
    return _load_labeled(cfg, _dir_listing("folder", _root_dir(cfg)))


@register_dataset("flat")
def _flat(cfg: DataConfig) -> ImageData:
    """A folder of ``<label>_<id>.<ext>`` files (seed 000), with or without train/val folders."""
    return _load_labeled(cfg, _dir_listing("flat", _root_dir(cfg)))


def _dir_listing(layout: str, root: Path) -> _Listing:
    train_dir, val_dir = _split_dirs(root)
    if layout == "folder":
        files, labels = _class_files(train_dir or root, required=True)
    else:
        files, labels = _flat_files(train_dir or root)
    is_val = None
    if val_dir is not None:
        if layout == "folder":
            vfiles, vlabels = _class_files(val_dir, required=False)
        else:
            vfiles, vlabels = _flat_files(val_dir)
        _check_val_classes(labels, vlabels, val_dir, train_dir)
        is_val = [False] * len(files) + [True] * len(vfiles)
        files, labels = files + vfiles, labels + vlabels
    test = _labeled_test(layout, root) if train_dir is not None else None
    if test is None:
        return _Listing(layout, root, files, labels, is_val)
    tfiles, tlabels = test
    _check_val_classes(labels, tlabels, root / "test", train_dir, what="test")
    n = len(files)
    return _Listing(
        layout, root, files + tfiles, labels + tlabels,
        None if is_val is None else is_val + [False] * len(tfiles),
        [False] * n + [True] * len(tfiles),
    )  # fmt: skip


def _labeled_test(layout: str, root: Path) -> tuple[list[Path], list[str]] | None:
    """``root/test`` with labels (class subfolders, or all files named ``<label>_<id>``), or
    None: absent, or unlabeled (seed 000's test folder, read by ``search predict``)."""
    folder = root / "test"
    if not folder.is_dir():
        return None
    if layout == "folder":
        if not any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir()):
            return None
        files, labels = _class_files(folder, required=False)
    else:
        files = list(_image_files(folder, recursive=False))
        if not files or not all(_FLAT_NAME.fullmatch(p.stem) for p in files):
            return None
        files, labels = _flat_files(folder)
    return (files, labels) if files else None


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
    return _load_labeled(cfg, _csv_listing(manifest))


def _csv_listing(manifest: Path) -> _Listing:
    base = manifest.parent
    files, labels, splits, tests = [], [], [], []
    seen: dict[Path, int] = {}
    with manifest.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
        if "path" not in columns or "label" not in columns:
            raise ValueError(
                f"{manifest} needs a header row with columns path,label (optional split), "
                f"but has {reader.fieldnames}"
            )
        for line, row in enumerate(reader, start=2):
            rel = (row.get(columns["path"]) or "").strip()
            label = (row.get(columns["label"]) or "").strip()
            split = (row.get(columns.get("split", ""), "") or "").strip().lower()
            if not rel or not label:
                raise ValueError(f"{manifest}, line {line}: empty path or label; fill it in")
            if split not in ("", "train", "test", *VAL_DIRS):
                raise ValueError(
                    f"{manifest}, line {line}: split {split!r} must be train, val or test"
                )
            if _INT.fullmatch(label):
                if int(label) < 0:
                    raise ValueError(
                        f"{manifest}, line {line}: label {label} is out of range; integer "
                        "labels must be >= 0 (or use class names)"
                    )
                label = str(int(label))  # "07" and "7" are one class
            path = Path(rel).expanduser()
            path = path if path.is_absolute() else base / path
            key = Path(os.path.normpath(path))
            if key in seen:
                raise ValueError(
                    f"{manifest}, line {line}: {rel} is already listed on line {seen[key]}; "
                    "list every image once (an image in both splits leaks into validation)"
                )
            seen[key] = line
            files.append(key)
            labels.append(label)
            splits.append(split in VAL_DIRS)
            tests.append(split == "test")
    if all(tests):
        raise ValueError(f"{manifest} lists no training images; add rows path,label")
    listing = _Listing(
        "csv", base, files, labels, splits if any(splits) else None, tests if any(tests) else None
    )
    train_labels = [lb for lb, v, t in zip(labels, splits, tests, strict=True) if not v and not t]
    if listing.is_val is not None:
        val_labels = [lb for lb, v in zip(labels, splits, strict=True) if v]
        _check_val_classes(train_labels, val_labels, manifest, manifest)
    if listing.is_test is not None:
        test_labels = [lb for lb, t in zip(labels, tests, strict=True) if t]
        _check_val_classes(train_labels, test_labels, manifest, manifest, what="test")
    return listing


def load_unlabeled(
    root: str | Path, *, image_size: int, strict: bool = False, eval_resize: str = "squash"
) -> tuple[torch.Tensor, list[str]]:
    """Images directly in ``root`` (e.g. seed 000's test folder) as uint8 ``[N, 3, S, S]``,
    resized as ``data.eval_resize`` says, with their file names, in natural order (2.png before
    10.png). Unreadable files are skipped with one warning (``strict``: ValueError)."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist; pass the folder of test images")
    files = list(_image_files(folder, recursive=False))
    if not files:
        raise ValueError(
            f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) directly in {folder}; "
            "pass the folder that holds the test images"
        )
    decoded = _decode_cached("unlabeled", folder, files, image_size, eval_resize)
    _report_bad(folder, decoded.bad_names(folder, files), strict=strict)
    good = np.array([i for i in range(len(files)) if i not in decoded.bad], dtype=np.int64)
    if len(good) == 0:
        raise ValueError(f"none of the {len(files)} images in {folder} could be read")
    x = torch.from_numpy(decoded.arranged(good))
    return x, [_rel(files[i], folder) for i in good.tolist()]


@dataclass(frozen=True)
class FolderScan:
    """An image folder as training lists it, before decoding (see ``scan_folder``)."""

    layout: str  # folder | flat | csv: the data.name that reads it
    root: Path  # the data.root that reads it: the folder, or the manifest for csv
    base: Path  # file names in messages are relative to this
    files: tuple[Path, ...]
    labels: tuple[str, ...]  # raw label of each file: folder name, id or manifest label
    is_val: tuple[bool, ...] | None  # the given validation split; None: training splits
    sizes: tuple[tuple[int, int] | None, ...]  # (width, height) per header; None: unreadable

    @property
    def classes(self) -> list[str]:
        """Class names in training's order (integer labels numerically)."""
        return _class_names(set(self.labels))

    def name(self, i: int) -> str:
        """File ``i`` as messages show it: relative to the folder or manifest."""
        return _rel(self.files[i], self.base)


def detect_layout(root: str | Path) -> tuple[str, Path]:
    """``(layout, data_root)`` for a folder or manifest: ``folder`` when it (or its ``train/``)
    has subfolders, ``flat`` for ``<label>_<id>`` files, ``csv`` for a manifest file (or the
    one ``.csv`` in a folder without images)."""
    path = Path(root).expanduser().resolve()
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv", path
        raise ValueError(f"{path} is a file; pass an image folder or a manifest .csv")
    if not path.is_dir():
        raise ValueError(f"{path} does not exist; pass the folder that holds the images")
    train_dir, _ = _split_dirs(path)
    top = train_dir or path
    if any(d.is_dir() and not d.name.startswith(".") for d in top.iterdir()):
        return "folder", path
    images = list(_image_files(top, recursive=False))
    if any(_FLAT_NAME.fullmatch(p.stem) for p in images):
        return "flat", path
    if images:
        raise ValueError(
            f"the images directly in {top} carry no class: put each class's images in its own "
            "subfolder, or name them <label>_<id>.png"
        )
    manifests = sorted(path.glob("*.csv"))
    if len(manifests) == 1:
        return "csv", manifests[0]
    raise ValueError(
        f"no images in {path}: put each class's images in its own subfolder "
        f"({path.name}/cats/*.jpg), name them <label>_<id>.png, or pass a manifest .csv"
    )


def scan_folder(root: str | Path, *, layout: str | None = None) -> FolderScan:
    """List ``root`` exactly as training's ``layout`` does (detected when None) and read each
    image's header for its size. Nothing is decoded; ``unreadable_files`` does that."""
    if layout is None:
        layout, data_root = detect_layout(root)
    else:
        data_root = Path(root).expanduser().resolve()
    if layout == "csv":
        if not data_root.is_file():
            raise ValueError(f"{data_root} is not a manifest file; layout csv needs the .csv")
        listing = _csv_listing(data_root)
    elif layout in ("folder", "flat"):
        if not data_root.is_dir():
            raise ValueError(f"{data_root} is not a folder; layout {layout} needs the folder")
        listing = _dir_listing(layout, data_root)
    else:
        raise ValueError(f"layout must be folder, flat or csv, but got {layout!r}")
    if len(listing.files) >= PARALLEL_MIN_FILES:  # headers are I/O: threads overlap the reads
        with ThreadPoolExecutor(8) as pool:
            sizes = tuple(pool.map(_header_size, listing.files))
    else:
        sizes = tuple(_header_size(f) for f in listing.files)
    return FolderScan(
        layout=layout,
        root=data_root,
        base=listing.base,
        files=tuple(listing.files),
        labels=tuple(listing.labels),
        is_val=None if listing.is_val is None else tuple(listing.is_val),
        sizes=sizes,
    )


def unreadable_files(scan: FolderScan, *, image_size: int) -> dict[int, str]:
    """Run training's one decoding pass over ``scan`` at ``image_size`` (filling the cache that
    training then reads) and return the files it cannot use: index in ``scan.files`` -> why."""
    return dict(_decode_cached(scan.layout, scan.base, scan.files, image_size).bad)


def _header_size(path: Path) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a huge image is judged by the decoding pass
            with Image.open(path) as im:
                return im.size
    except Exception:  # noqa: BLE001 - any failure here means "no usable header"
        return None


def _root_dir(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise ValueError(f"data.root is not set; point it at the image folder for {cfg.name!r}")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise ValueError(f"data.root {root} {what}; point it at the image folder")
    return root


def _split_dirs(root: Path) -> tuple[Path | None, Path | None]:
    """``root/train`` and ``root/val|valid|validation`` if present (val only with train)."""
    train = root / "train"
    if not train.is_dir():
        return None, None
    val = next((root / d for d in VAL_DIRS if (root / d).is_dir()), None)
    return train, val


def _image_files(folder: Path, *, recursive: bool) -> Iterator[Path]:
    """Image files by extension, in natural order (2.png before 10.png); hidden files and
    folders (.DS_Store, ._x.jpg) are skipped."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=_natural_key)
        for name in sorted(filenames, key=_natural_key):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                yield Path(dirpath) / name
        if not recursive:
            return


def _class_files(folder: Path, *, required: bool) -> tuple[list[Path], list[str]]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(
            f"no class subfolders in {folder}; put each class's images in its own folder "
            "(or use data.name='flat' for <label>_<id> files, 'csv' for a manifest)"
        )
    files: list[Path] = []
    labels: list[str] = []
    for c in classes:
        found = list(_image_files(c, recursive=True))
        if not found and required:
            raise ValueError(
                f"class folder {c} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images or remove the folder"
            )
        files += found
        labels += [c.name] * len(found)
    return files, labels


def _flat_files(folder: Path) -> tuple[list[Path], list[str]]:
    files = list(_image_files(folder, recursive=False))
    if not files:
        raise ValueError(
            f"no images directly in {folder}; data.name='flat' expects files named "
            "<label>_<id>.png (use data.name='folder' for class subfolders)"
        )
    odd = [p.name for p in files if not _FLAT_NAME.fullmatch(p.stem)]
    if odd:
        more = f" and {len(odd) - 3} more" if len(odd) > 3 else ""
        raise ValueError(
            f"{', '.join(odd[:3])}{more} in {folder} do not follow the <label>_<id> naming of "
            "data.name='flat' (e.g. 3_0042.png); rename them or use data.name='folder'"
        )
    return files, [str(int(_FLAT_NAME.fullmatch(p.stem).group(1))) for p in files]


def _check_val_classes(
    train_labels: Sequence[str],
    val_labels: Sequence[str],
    val_src: Path,
    train_src: Path | None,
    *,
    what: str = "validation",
) -> None:
    missing = sorted(set(val_labels) - set(train_labels))
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ValueError(
            f"{what} class(es) {shown} in {val_src} have no training images in "
            f"{train_src}; add training images or remove them from {what}"
        )


def _class_names(labels: set[str]) -> list[str]:
    """Integer labels sort numerically (2 before 10), names alphabetically."""
    if all(_INT.fullmatch(lb) for lb in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _natural_key(name: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _rel(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- labels, split


def _load_labeled(cfg: DataConfig, listing: _Listing) -> ImageData:
    decoded = _decode_cached(listing.layout, listing.base, listing.files, cfg.image_size)
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
    names = _class_names(set(labels[train_pool].tolist()))
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
    if cfg.eval_resize != "squash":  # validation and test images decoded again, cropped
        x = torch.cat([x[:k], _decode_eval(listing, order[k:], cfg)])

    def ids(idx: np.ndarray) -> list[str]:
        return [f"{_rel(listing.files[i], listing.base)}#{digests[i]}" for i in idx.tolist()]

    return ImageData(
        x[:k], y[:k], x[k:v], y[k:v], names,
        x_test=x[v:] if has_test else None,
        y_test=y[v:] if has_test else None,
        ids={"train": ids(train_idx), "val": ids(val_idx), "test": ids(test_idx)},
        test_source=source if has_test else "",
    )  # fmt: skip


def _decode_eval(listing: _Listing, rows: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """The files ``rows`` of ``listing`` decoded under ``cfg.eval_resize``, in that order.

    They get a cache of their own, keyed (besides the files, sizes and mtimes) by the protocol
    and the list of names, so splits of one folder that differ do not evict each other."""
    files = [listing.files[i] for i in rows.tolist()]
    if not files:
        return torch.empty(0, 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    names = _hash(json.dumps([_rel(f, listing.base) for f in files]))[:12]
    decoded = _decode_cached(
        listing.layout, listing.base, files, cfg.image_size, cfg.eval_resize, subset=names
    )
    if decoded.bad:  # these files decoded a moment ago: they changed while loading
        bad = "; ".join(f"{n} ({why})" for n, why in decoded.bad_names(listing.base, files)[:5])
        raise ValueError(f"image files under {listing.base} changed while loading: {bad}; rerun")
    return torch.from_numpy(decoded.arranged(np.arange(len(files))))


def _warn_duplicates(
    listing: _Listing,
    digests: Sequence[str | None],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    *,
    what: str = "validation",
) -> None:
    train_digests = {digests[i] for i in train_idx.tolist()} - {None}
    dup = [i for i in val_idx.tolist() if digests[i] in train_digests]
    if dup:
        shown = ", ".join(_rel(listing.files[i], listing.base) for i in dup[:5])
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


# ---------------------------------------------------------------------------- decode cache


@dataclass
class _Decoded:
    path: Path  # the .npy with one row per listed file (bad rows are zeros)
    bad: dict[int, str]  # row -> why the file was skipped
    digests: list[str | None]  # content hash per row, to find duplicates

    def bad_names(self, base: Path, files: Sequence[Path]) -> list[tuple[str, str]]:
        return [(_rel(files[i], base), why) for i, why in sorted(self.bad.items())]

    def arranged(self, order: np.ndarray) -> np.ndarray:
        """Rows ``order`` of the cache as one writable-copy-on-write memory map.

        The identity order maps the cache itself; any other order (a seeded split, skipped
        files) is written once to a sibling file, so that processes still share pages."""
        n = int(np.load(self.path, mmap_mode="r").shape[0])
        if len(order) == n and np.array_equal(order, np.arange(n)):
            return np.load(self.path, mmap_mode="c")
        tag = hashlib.sha256(order.astype(np.int64).tobytes()).hexdigest()[:16]
        out = self.path.with_name(f"{self.path.stem}.{tag}.npy")
        if not out.exists():
            with _locked(out.with_suffix(".lock")):
                if not out.exists():
                    src = np.load(self.path, mmap_mode="r")
                    with _atomic(out) as tmp:
                        dst = np.lib.format.open_memmap(
                            tmp, mode="w+", dtype=np.uint8, shape=(len(order), *src.shape[1:])
                        )
                        for i in range(0, len(order), 1024):
                            dst[i : i + 1024] = src[order[i : i + 1024]]
                        dst.flush()
                        del dst
        return np.load(out, mmap_mode="c")


def _decode_cached(
    layout: str,
    base: Path,
    files: Sequence[Path],
    size: int,
    resize: str = "squash",
    *,
    subset: str = "",
) -> _Decoded:
    """Decode ``files`` at ``size`` px (``resize``: a ``data.eval_resize`` protocol) into the
    cache, or reuse the cache when nothing changed. ``subset`` names a part of a folder that
    is cached apart from the rest."""
    cap = max_pixels()
    stats = []
    for f in files:
        try:
            st = f.stat()
            stats.append((_rel(f, base), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((_rel(f, base), -1, -1))
    # squash keeps the key it always had; another protocol is another file and another prefix
    extra = [] if resize == "squash" and not subset else [resize, subset]
    ident = json.dumps([layout, str(base.resolve()), size, *extra])
    content = json.dumps([CACHE_VERSION, cap, stats])
    protocol = "" if resize == "squash" else f"{resize.replace('_', '')}-"
    prefix = f"{layout}-{size}px-{protocol}{_hash(ident)[:12]}-"
    npy = cache_dir() / f"{prefix}{_hash(ident + content)[:20]}.npy"
    meta = npy.with_suffix(".json")
    if not meta.exists():
        with _locked(npy.with_suffix(".lock")):
            if not meta.exists():  # another process may have built it meanwhile
                _build(npy, meta, base, files, size, cap, resize)
                _prune(npy, prefix)
    info = json.loads(meta.read_text())
    return _Decoded(npy, {int(k): v for k, v in info["bad"].items()}, info["digests"])


def _build(
    npy: Path, meta: Path, base: Path, files: Sequence[Path], size: int, cap: int, resize: str
) -> None:
    t0 = time.perf_counter()
    log.info(
        "decoding %d images under %s at %d px (%s) into %s", len(files), base, size, resize, npy
    )
    bad: dict[int, str] = {}
    digests: list[str | None] = []
    with _atomic(npy) as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(files), 3, size, size)
        )
        paths = [str(f) for f in files]
        for i, (img, why, digest) in enumerate(_decode_all(paths, size, cap, resize)):
            digests.append(digest)
            if img is None:
                bad[i] = why or "unreadable"
            else:
                out[i] = img
        out.flush()
        del out
    info = {
        "version": CACHE_VERSION,
        "base": str(base),
        "size": size,
        "resize": resize,
        "files": [_rel(f, base) for f in files],
        "bad": {str(i): why for i, why in bad.items()},
        "digests": digests,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    with _atomic(meta) as tmp:
        tmp.write_text(json.dumps(info))
    log.info("decoded %d images in %.1f s", len(files), info["seconds"])


def _decode_all(
    paths: list[str], size: int, cap: int, resize: str
) -> Iterator[tuple[np.ndarray | None, str | None, str | None]]:
    workers = _workers()
    if len(paths) < PARALLEL_MIN_FILES or workers < 2:
        for p in paths:
            yield _decode_file(p, size, cap, resize)
        return
    # fork (Linux) starts workers in milliseconds; they only touch PIL and numpy.
    method = "fork" if sys.platform == "linux" else None
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        args = (repeat(size), repeat(cap), repeat(resize))
        yield from pool.map(_decode_file, paths, *args, chunksize=16)


def _workers() -> int:
    env = os.environ.get("HPSEARCH_DECODE_WORKERS")
    if env:
        return max(1, int(env))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(cpus or 1, 16)


def _decode_file(
    path: str, size: int, cap: int, resize: str = "squash"
) -> tuple[np.ndarray | None, str | None, str | None]:
    """One file -> (uint8 [3, size, size] or None, why it is unusable, content hash), resized
    as ``resize`` (a ``data.eval_resize`` protocol) says.

    Never raises: every failure becomes a reason, so a bad file cannot crash a study."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, "missing", None
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}", None
    if not data:
        return None, "zero-byte file", None
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > cap:
                    why = f"{w}x{h} px is over the {cap} px limit (decompression bomb?)"
                    return None, why, digest
                side = draft_size(size, resize)
                im.draft("RGB", (side, side))  # JPEG: decode at 1/2..1/8 scale if still >= side
                return _to_rgb(ImageOps.exif_transpose(im), size, resize), None, digest
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return None, "over PIL's pixel limit (decompression bomb?)", digest
    except Image.UnidentifiedImageError:
        return None, "not an image PIL can read", digest
    except Exception as e:  # noqa: BLE001 - any decoder failure means "unreadable file"
        msg = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        if "truncat" in msg.lower():
            return None, "truncated", digest
        return None, f"undecodable: {msg}", digest


def _to_rgb(im: Image.Image, size: int, resize: str = "squash") -> np.ndarray:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16-bit or float grayscale
        a = np.asarray(im, dtype=np.float32)
        a = a / 257.0 if im.mode.startswith("I;16") or a.max() > 255 else a
        im = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")  # transparent pixels become white, not whatever colour they hold
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im)
    im = resize_pil(im.convert("RGB"), size, resize)  # bilinear, antialiased when shrinking
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _prune(keep: Path, prefix: str) -> None:
    """Delete older caches of the same folder and size (the data changed since)."""
    for old in keep.parent.glob(f"{prefix}*"):
        if not old.name.startswith(keep.stem) and old.suffix in (".npy", ".json", ".lock"):
            with contextlib.suppress(OSError):  # mapped elsewhere (Windows): leave it
                old.unlink()


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Write to a private temporary name, then rename: readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes, so concurrent workers decode a folder once."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps files whole
        yield
        return
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


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
