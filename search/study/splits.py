"""The data split a study was searched on, recorded in the study, so that later commands
(``search confirm``, ``search evaluate --split test``) refuse to report on data that changed.

The record is ``trainer.data.split_record``'s: per split (train, val, test) the image count and a
hash of the sorted (image, label) list, where an image is its file name and content hash.
"""

from __future__ import annotations

from typing import Any

import optuna

import trainer
from trainer.data import split_record

ATTR = "data_splits"


def record_splits(study: optuna.Study, data: trainer.DataConfig) -> dict[str, Any]:
    """Store the split of ``data`` in ``study`` unless it already holds one; return the one
    it holds (the first run's: later changes are detected against it)."""
    held = study.user_attrs.get(ATTR)
    if held is None:
        held = split_record(data)
        study.set_user_attr(ATTR, held)
    return held


def check_splits(
    recorded: dict[str, Any] | None,
    data: trainer.DataConfig,
    *,
    study: str,
    need_test: bool = False,
) -> dict[str, Any]:
    """The current split of ``data``; ValueError naming the split that changed since
    ``recorded`` (a study's record; None: a study older than records, nothing to compare),
    or, with ``need_test``, saying how to get a test split when there is none."""
    if need_test:
        require_test(recorded, study=study)
    current = split_record(data)
    if need_test:
        require_test(current, study=study)
    if not recorded:
        return current
    for split in ("train", "val", "test"):
        then, now = recorded.get(split), current.get(split)
        if then is None and now is None:
            continue
        same = then is not None and now is not None
        if not same or (then["count"], then["hash"]) != (now["count"], now["hash"]):
            was = "none" if then is None else f"{then['count']} images (hash {then['hash']})"
            is_ = "none" if now is None else f"{now['count']} images (hash {now['hash']})"
            raise ValueError(
                f"the {split} split of study {study!r} changed since the search: it had {was}, "
                f"now {is_}; restore the data as it was (or pass --data with the original "
                "folder), or run the search again as a new study"
            )
    return current


def require_test(recorded: dict[str, Any] | None, *, study: str) -> None:
    """ValueError with the fix when the study was searched without a test split."""
    if recorded is not None and "test" not in recorded:
        raise ValueError(
            f"study {study!r} has no test split; set data.test_fraction (e.g. 0.2) in the "
            "study file's [data] (or add a labeled test/ folder, or split=test manifest rows) "
            "and run the search as a new study"
        )


__all__ = ["ATTR", "check_splits", "record_splits", "require_test"]
