"""The decoded-image cache: every image file decoded once into a shared, memory-mapped file.

Every image becomes RGB (grayscale, palette and 16-bit are converted, transparency is composited
on white, EXIF orientation is applied) and is resized to ``size`` squared as ``data.eval_resize``
says (``trainer.data.resize``; squash, the default, is seed 000's ``Resize((256, 256))``: no crop,
aspect ratios change). JPEGs are decoded at a reduced DCT scale when that still covers the
target size.

Decoding happens once per (files, resolution, protocol): the images go into
``<cache>/<key>.npy`` (uint8 ``[N, 3, S, S]``), where the key hashes the layout, root, file
list, sizes and mtimes. The cache directory is ``$HPSEARCH_CACHE_DIR`` or ``~/.cache/hpsearch``.
Later loads, in any process, map the file instead of decoding, so every trial and worker of a
study shares the same pages.

Unreadable files (zero bytes, truncated, undecodable, missing, or larger than ``MAX_PIXELS``,
a decompression-bomb guard) are found by this one decoding pass and returned with the reason;
the callers decide whether to skip or refuse them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from trainer._cache import cache_root
from trainer._files import atomic_write
from trainer.data.resize import draft_size, resize_pil

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused
# Images above this many pixels are refused as possible decompression bombs (PIL warns at the
# same default). $HPSEARCH_MAX_PIXELS overrides it.
MAX_PIXELS = 89_478_485
PARALLEL_MIN_FILES = 64  # below this, decoding in-process beats starting worker processes


class BadImageWarning(UserWarning):
    """Some image files could not be used and were skipped."""


def cache_dir() -> Path:
    """Where decoded images are cached: ``images`` in the cache folder (``$HPSEARCH_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/hpsearch``, else ``~/.cache/hpsearch``)."""
    path = cache_root() / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def max_pixels() -> int:
    env = os.environ.get("HPSEARCH_MAX_PIXELS")
    if env is None:
        return MAX_PIXELS
    if not env.isdigit() or int(env) < 1:
        raise ValueError(f"HPSEARCH_MAX_PIXELS must be a positive integer, but got {env!r}")
    return int(env)


@dataclass
class Decoded:
    path: Path  # the .npy with one row per listed file (bad rows are zeros)
    bad: dict[int, str]  # row -> why the file was skipped
    digests: list[str | None]  # content hash per row, to find duplicates

    def bad_names(self, base: Path, files: Sequence[Path]) -> list[tuple[str, str]]:
        return [(relative_name(files[i], base), why) for i, why in sorted(self.bad.items())]

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
                    with atomic_write(out) as tmp:
                        dst = np.lib.format.open_memmap(
                            tmp, mode="w+", dtype=np.uint8, shape=(len(order), *src.shape[1:])
                        )
                        for i in range(0, len(order), 1024):
                            dst[i : i + 1024] = src[order[i : i + 1024]]
                        dst.flush()
                        del dst
        return np.load(out, mmap_mode="c")


def decode_cached(
    layout: str,
    base: Path,
    files: Sequence[Path],
    size: int,
    resize: str = "squash",
    *,
    subset: str = "",
) -> Decoded:
    """Decode ``files`` at ``size`` px (``resize``: a ``data.eval_resize`` protocol) into the
    cache, or reuse the cache when nothing changed. ``subset`` names a part of a folder that
    is cached apart from the rest."""
    cap = max_pixels()
    stats = []
    for f in files:
        try:
            st = f.stat()
            stats.append((relative_name(f, base), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((relative_name(f, base), -1, -1))
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
    return Decoded(npy, {int(k): v for k, v in info["bad"].items()}, info["digests"])


def _build(
    npy: Path, meta: Path, base: Path, files: Sequence[Path], size: int, cap: int, resize: str
) -> None:
    t0 = time.perf_counter()
    log.info(
        "decoding %d images under %s at %d px (%s) into %s", len(files), base, size, resize, npy
    )
    bad: dict[int, str] = {}
    digests: list[str | None] = []
    with atomic_write(npy) as tmp:
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
        "files": [relative_name(f, base) for f in files],
        "bad": {str(i): why for i, why in bad.items()},
        "digests": digests,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    with atomic_write(meta) as tmp:
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
    method = _start_method()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        args = (repeat(size), repeat(cap), repeat(resize))
        yield from pool.map(_decode_file, paths, *args, chunksize=16)


def _start_method() -> str | None:
    """fork (Linux) starts workers in milliseconds, and they only touch PIL and numpy. A
    process with a CUDA context (a worker between trials) has driver threads, and a forked
    child can hang on a lock one of them held: there the workers start from a fresh server."""
    if sys.platform != "linux":
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "forkserver"
    return "fork"


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
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on any OS, so concurrent workers decode a folder
    once. A cache folder we cannot write is an OSError here, as the writes would be."""
    from filelock import FileLock

    with FileLock(path):
        yield


def read_stats(npy: Path, key: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The per-channel ``(mean, std)`` stored beside the cache ``npy`` under ``key`` (the
    training split's identity), or None."""
    try:
        entry = json.loads(_stats_path(npy).read_text()).get(key)
    except (OSError, ValueError):
        return None
    return None if entry is None else (tuple(entry["mean"]), tuple(entry["std"]))


def write_stats(npy: Path, key: str, mean: Sequence[float], std: Sequence[float]) -> None:
    """Store ``(mean, std)`` beside the cache ``npy`` under ``key``. The file lives and is
    pruned with its cache, so a changed folder (a new cache) computes them again."""
    path = _stats_path(npy)
    try:
        with _locked(npy.with_name(f"{npy.stem}.stats.lock")):
            try:
                table = json.loads(path.read_text())
            except (OSError, ValueError):
                table = {}
            table[key] = {"mean": list(mean), "std": list(std)}
            with atomic_write(path) as tmp:
                tmp.write_text(json.dumps(table))
    except OSError as exc:  # only a cache: training goes on without it
        log.warning("could not store the image statistics beside %s: %s", npy, exc)


def _stats_path(npy: Path) -> Path:
    return npy.with_name(f"{npy.stem}.stats.json")


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def relative_name(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


__all__ = [
    "CACHE_VERSION",
    "MAX_PIXELS",
    "PARALLEL_MIN_FILES",
    "BadImageWarning",
    "Decoded",
    "cache_dir",
    "decode_cached",
    "max_pixels",
    "read_stats",
    "relative_name",
    "write_stats",
]
