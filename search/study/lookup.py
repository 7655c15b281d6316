"""A stored study by the name a user gives: the study file's storage, then the stored study."""

from __future__ import annotations

import optuna

from search.store import storage as storage_mod
from search.store.lookup import load_existing_study
from search.study.studyfile import list_study_files, load_study


def storage_of(name: str, storage: str | None) -> str:
    """The storage URL of stored study ``name``: ``--storage``, else ``$SEARCH_STORAGE``, else
    the storage of the study file it came from (``NAME``, ``NAME.PROFILE``,
    ``NAME.PROFILE.ablation``), else the default."""
    study_url = None
    files = list_study_files()
    file_name = name
    while file_name not in files and "." in file_name:
        file_name = file_name.rsplit(".", 1)[0]
    if file_name in files:
        study_url = load_study(file_name).storage
    return storage_mod.resolve_url(storage, study_url)


def load_stored(name: str, storage: str | None) -> tuple[optuna.Study, str]:
    """The stored study ``name`` and its storage URL (never creates one)."""
    url = storage_of(name, storage)
    return load_existing_study(name, url), url


__all__ = ["load_stored", "storage_of"]
