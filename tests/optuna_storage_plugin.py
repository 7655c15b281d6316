"""pytest plugin: Optuna's own storage tests, run against hpsearch's storage.

Loaded with ``-p optuna_storage_plugin`` by ``tests/search/test_optuna_storage_suite.py`` on
the ``tests/`` folder of the installed Optuna's source distribution (never copied into this
repository). Before their modules are imported it points ``optuna.storages.RDBStorage`` at
``search.store.storage.ResilientRDBStorage``, so every RDB storage the tests build (theirs directly,
through ``optuna.testing.storages.StorageSupplier``, or from a URL via ``get_storage``) is ours.

Of the parametrised storage modes it keeps the RDB ones that need no server (``sqlite``,
``cached_sqlite``); ``test_with_server.py`` reaches PostgreSQL through ``TEST_DB_URL``.
Known failures of this environment are deselected by name, each with its reason.
"""

from __future__ import annotations

import optuna
import pytest

from search.store.storage import ResilientRDBStorage

ORIGINAL = optuna.storages.RDBStorage
KEPT_MODES = {"sqlite", "cached_sqlite"}

# node id (relative to the sdist's tests/storages_tests/) -> why it is not run
DESELECTED = {
    "rdb_tests/test_storage.py::test_init_db_module_import_error": (
        "expects 'postgresql://' to need psycopg2; SQLAlchemy 2.1 picks psycopg 3 for it, which "
        "hpsearch installs, so Optuna's own RDBStorage fails it here too"
    ),
}


def _all_modes() -> set[str]:
    from optuna.testing import storages

    return {*storages.STORAGE_MODES, *storages.STORAGE_MODES_HEARTBEAT}


_built: dict[str, int] = {}  # RDB storages built during the run, by class name
_original_init = ORIGINAL.__init__


def _counting_init(self, *args, **kwargs) -> None:
    name = f"{type(self).__module__}.{type(self).__qualname__}"
    _built[name] = _built.get(name, 0) + 1
    _original_init(self, *args, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    optuna.storages.RDBStorage = ResilientRDBStorage
    ORIGINAL.__init__ = _counting_init  # to report which classes the tests really built
    config.addinivalue_line("markers", "slow: Optuna's marker for long tests")


def pytest_unconfigure(config: pytest.Config) -> None:
    optuna.storages.RDBStorage = ORIGINAL
    ORIGINAL.__init__ = _original_init


def pytest_terminal_summary(terminalreporter) -> None:
    built = ", ".join(f"{n} {name}" for name, n in sorted(_built.items())) or "none"
    terminalreporter.write_line(f"optuna {optuna.__version__}: RDB storages built: {built}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    modes = _all_modes()
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        other_mode = any(
            isinstance(v, str) and v in modes and v not in KEPT_MODES for v in params.values()
        )
        node = item.nodeid.split("storages_tests/", 1)[-1]
        (drop if other_mode or node in DESELECTED else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _our_storage_class() -> None:
    """Fail loudly if anything undid the switch (a test must never pass on Optuna's class)."""
    assert optuna.storages.RDBStorage is ResilientRDBStorage
