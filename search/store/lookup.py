"""The one lookup of a study that must already exist in a storage (never creates one)."""

from __future__ import annotations

import logging
from typing import Any

import optuna

from search.store.storage import Storage


def find_study(storage: Storage, name: str) -> optuna.Study | None:
    """The stored study ``name``, or None when the storage holds no such study."""
    try:
        storage.rdb.get_study_id_from_name(name)
    except KeyError:
        return None
    return optuna.load_study(study_name=name, storage=storage.rdb)


def stored_user_attrs(storage: Storage, name: str) -> dict[str, Any] | None:
    """The user attributes of the stored study ``name``; None when there is no such study
    (a missing SQLite file is not created)."""
    if not storage.exists:
        return None
    try:
        study_id = storage.rdb.get_study_id_from_name(name)
    except KeyError:
        return None
    return storage.rdb.get_study_user_attrs(study_id)


def load_existing_study(name: str, storage: Storage) -> optuna.Study:
    """The stored study ``name``; a ValueError naming the fix when the storage or the study
    is missing."""
    optuna.logging.set_verbosity(logging.WARNING)
    if not storage.exists:
        raise ValueError(
            f"no storage at {storage.sqlite_path}; run `search run --study {name}` first "
            "or pass --storage"
        )
    study = find_study(storage, name)
    if study is None:
        from trainer._registry import unknown_name_error

        names = [
            s.study_name
            for s in optuna.get_all_study_summaries(storage.rdb, include_best_trial=False)
        ]
        raise unknown_name_error(f"study in {storage.masked}", name, names)
    return study


__all__ = ["find_study", "load_existing_study", "stored_user_attrs"]
