"""A stored study by the name a user gives: the study file's storage, then the stored study."""

from __future__ import annotations

import optuna

from search.store import Storage
from search.store.lookup import load_existing_study
from search.study.studyfile import list_study_files, load_study


def storage_of(name: str, storage: Storage | str | None) -> Storage:
    """The storage of stored study ``name``: ``storage`` when it is one; else the URL
    ``--storage``, else ``$SEARCH_STORAGE``, else the storage of the study file it came from
    (``NAME``, ``NAME.PROFILE``, ``NAME.PROFILE.ablation``), else the default."""
    if isinstance(storage, Storage):
        return storage
    study_url = None
    files = list_study_files()
    file_name = name
    while file_name not in files and "." in file_name:
        file_name = file_name.rsplit(".", 1)[0]
    if file_name in files:
        study_url = load_study(file_name).storage
    return Storage.open(storage, study_url=study_url)


def load_stored(name: str, storage: Storage | str | None) -> tuple[optuna.Study, Storage]:
    """The stored study ``name`` and its storage (never creates one)."""
    store = storage_of(name, storage)
    return load_existing_study(name, store), store


__all__ = ["load_stored", "storage_of"]
