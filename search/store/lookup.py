"""The one lookup of a study that must already exist in a storage (never creates one)."""

from __future__ import annotations

import logging

import optuna

from search.store import storage as storage_mod


def find_study(url: str, name: str) -> optuna.Study | None:
    """The stored study ``name``, or None when the storage holds no such study."""
    store = storage_mod.open_storage(url)
    try:
        store.get_study_id_from_name(name)
    except KeyError:
        return None
    return optuna.load_study(study_name=name, storage=store)


def load_existing_study(name: str, url: str) -> optuna.Study:
    """The stored study ``name``; a ValueError naming the fix when the storage or the study
    is missing."""
    optuna.logging.set_verbosity(logging.WARNING)
    path = storage_mod.sqlite_path(url)
    if path is not None and not path.exists():
        raise ValueError(
            f"no storage at {path}; run `search run --study {name}` first or pass --storage"
        )
    study = find_study(url, name)
    if study is None:
        from trainer._registry import unknown_name_error

        store = storage_mod.open_storage(url)
        names = [
            s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)
        ]
        raise unknown_name_error(f"study in {storage_mod.mask_url(url)}", name, names)
    return study


__all__ = ["find_study", "load_existing_study"]
