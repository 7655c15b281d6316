"""How the image-folder layouts list their files and labels, before anything is decoded.

``folder`` (class subfolders), ``flat`` (``<label>_<id>`` files) and ``csv`` (a manifest
``path,label[,split]``) each become one listing: the files, their raw labels, and the given
validation and test splits. ``detect_layout``, ``scan_folder`` and ``unreadable_files`` look at
a folder before any training (``search init``) with the same listing, the same decoding pass
and the same cache as training.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from trainer.config import DataConfig
from trainer.data.decode import PARALLEL_MIN_FILES, decode_cached, relative_name

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VAL_DIRS = ("val", "valid", "validation")
_FLAT_NAME = re.compile(r"(\d+)_.+")
_INT = re.compile(r"-?\d+")


@dataclass
class Listing:
    layout: str
    base: Path  # file names in messages and cache keys are relative to this
    files: list[Path]
    labels: list[str]  # raw label of each file: folder name, id, or manifest label
    is_val: list[bool] | None  # None: no given validation set, split with data.split_seed
    is_test: list[bool] | None = None  # None: no given test set


def dir_listing(layout: str, root: Path) -> Listing:
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
        return Listing(layout, root, files, labels, is_val)
    tfiles, tlabels = test
    _check_val_classes(labels, tlabels, root / "test", train_dir, what="test")
    n = len(files)
    return Listing(
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
        files = list(image_files(folder, recursive=False))
        if not files or not all(_FLAT_NAME.fullmatch(p.stem) for p in files):
            return None
        files, labels = _flat_files(folder)
    return (files, labels) if files else None


def csv_listing(manifest: Path) -> Listing:
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
    listing = Listing(
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
        return class_names(set(self.labels))

    def name(self, i: int) -> str:
        """File ``i`` as messages show it: relative to the folder or manifest."""
        return relative_name(self.files[i], self.base)


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
    images = list(image_files(top, recursive=False))
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
        listing = csv_listing(data_root)
    elif layout in ("folder", "flat"):
        if not data_root.is_dir():
            raise ValueError(f"{data_root} is not a folder; layout {layout} needs the folder")
        listing = dir_listing(layout, data_root)
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
    return dict(decode_cached(scan.layout, scan.base, scan.files, image_size).bad)


def _header_size(path: Path) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a huge image is judged by the decoding pass
            with Image.open(path) as im:
                return im.size
    except Exception:  # noqa: BLE001 - any failure here means "no usable header"
        return None


def root_dir(cfg: DataConfig) -> Path:
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


def image_files(folder: Path, *, recursive: bool) -> Iterator[Path]:
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
        found = list(image_files(c, recursive=True))
        if not found and required:
            raise ValueError(
                f"class folder {c} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "add images or remove the folder"
            )
        files += found
        labels += [c.name] * len(found)
    return files, labels


def _flat_files(folder: Path) -> tuple[list[Path], list[str]]:
    files = list(image_files(folder, recursive=False))
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


def class_names(labels: set[str]) -> list[str]:
    """Integer labels sort numerically (2 before 10), names alphabetically."""
    if all(_INT.fullmatch(lb) for lb in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _natural_key(name: str) -> list[int | str]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


__all__ = [
    "IMAGE_EXTENSIONS",
    "VAL_DIRS",
    "FolderScan",
    "Listing",
    "class_names",
    "detect_layout",
    "dir_listing",
    "csv_listing",
    "image_files",
    "root_dir",
    "scan_folder",
    "unreadable_files",
]
