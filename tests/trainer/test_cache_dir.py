"""Where hpsearch caches: ``$HPSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpsearch``, else
``~/.cache/hpsearch``."""

from __future__ import annotations

from pathlib import Path

from trainer._cache import cache_root
from trainer.data.decode import cache_dir


def test_hpsearch_cache_dir_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("HPSEARCH_CACHE_DIR", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "own" / "images" and cache_dir().is_dir()


def test_xdg_cache_home_is_followed(monkeypatch, tmp_path):
    monkeypatch.delenv("HPSEARCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "hpsearch" / "images"
    assert (tmp_path / "xdg" / "hpsearch" / "images").is_dir()


def test_home_cache_without_either(monkeypatch, tmp_path):
    monkeypatch.delenv("HPSEARCH_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "hpsearch"
    # a relative XDG_CACHE_HOME is invalid under the spec and ignored
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert cache_root() == Path(tmp_path) / ".cache" / "hpsearch"
