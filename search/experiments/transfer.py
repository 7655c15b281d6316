"""Pretrained sources that name another study: ``model.pretrained = "study:NAME"``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from search.store import Storage, artifacts

PREFIX = "study:"


def resolve_pretrained(pinned: dict[str, Any], storage: Storage) -> dict[str, Any]:
    """Replace ``study:NAME`` by the path of that study's best checkpoint (same storage) and
    pin the backbone it was trained with (seed 001 transfers its own best ResNet)."""
    source = pinned.get("model.pretrained")
    if not isinstance(source, str) or not source.startswith(PREFIX):
        return pinned
    from search.experiments.evaluate import checkpoint_of, pick_trial
    from search.study.lookup import load_stored

    name = source[len(PREFIX) :]
    if not name:
        raise ValueError("model.pretrained = 'study:' needs a study name, e.g. study:kfood_scratch")
    try:
        study, _ = load_stored(name, storage)
    except ValueError as exc:
        raise ValueError(f"pretrained source {source!r}: {exc}") from None
    best = pick_trial(study, None)
    path = checkpoint_of(best, name)
    src_cfg = best.user_attrs.get("config", {})
    pins = {k: src_cfg[k] for k in ("model.backbone", "model.width") if k in src_cfg}
    clash = {k: v for k, v in pins.items() if k in pinned and pinned[k] != v}
    if clash:
        raise ValueError(
            f"{source!r} was trained with {clash}; the transfer must use the same backbone "
            f"(remove the conflicting setting)"
        )
    ref = best.user_attrs["checkpoint"]  # an S3 URL stays one: every node can read it
    where = ref if artifacts.is_remote(ref) else str(Path(path).resolve())
    return {**pinned, **pins, "model.pretrained": where}
