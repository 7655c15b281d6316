"""Helpers for trainer tests: tiny image folders written with PIL."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

# pyproject puts tests/ on sys.path, where this folder would shadow the trainer package as an
# empty namespace package (the editable install's finder comes after the path finder). With
# the repository root on the path as well, the real package wins.
_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.append(_REPO)
if getattr(sys.modules.get("trainer"), "__file__", "") is None:
    del sys.modules["trainer"]

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

import trainer.data  # noqa: E402


def write_image(
    path: Path,
    *,
    seed: int = 0,
    size: tuple[int, int] = (24, 20),
    mode: str = "RGB",
    fmt: str | None = None,
) -> Path:
    """A random (so unique) image of ``size`` (w, h) in ``mode``; the format from the suffix."""
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    im = rgb if mode == "RGB" else rgb.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


@pytest.fixture
def write_img() -> Callable[..., Path]:
    """write_img(path, seed=..., size=(w, h), mode="RGB") -> path (see write_image)."""
    return write_image


@pytest.fixture
def make_classes() -> Callable[..., Path]:
    """make_classes(root, {"cat": 5, "dog": 5}, ext=".png") -> root with class subfolders."""
    counter = iter(range(10**6))

    def make(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
        for name, n in counts.items():
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_image(root / name / f"img{i}{ext}", seed=next(counter))
        return root

    return make


@pytest.fixture(autouse=True)
def _fresh_data_cache():
    """Each test sees load_data's per-process cache empty (the disk cache is per test too)."""
    trainer.data._load_cached.cache_clear()
    yield
    trainer.data._load_cached.cache_clear()
