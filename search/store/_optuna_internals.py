"""Every place hpsearch reaches past Optuna's public API, each with the reason.

Nothing else in the package imports a private Optuna module, reads a private attribute or
writes Optuna's tables. The tested range is ``SUPPORTED`` (CI runs the storage, worker and
fault tests against its lowest and its latest version); a rename inside Optuna then breaks
here, at import, rather than somewhere in a running study.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy

# The table definitions of Optuna's RDB schema. Why: Optuna has no public call that (a) counts
# a study's trials per state without loading every trial, (b) reads the heartbeat times that
# its own heartbeat records, or (c) writes an attribute of a finished trial (below).
from optuna.storages._rdb import models as _models
from optuna.trial import TrialState

SUPPORTED = ">=4.8,<6"  # keep in step with pyproject.toml

# RDBStorage methods that Optuna's study-level cache (``_CachedStorage``, which
# ``optuna.create_study`` puts around any RDBStorage) calls directly instead of the public
# ones. Why: the retrying storage (search/storage.py) must wrap them as well, or a study's
# ``ask``/``tell`` would not be retried through a database restart.
CACHED_STORAGE_CALLS = (
    "_create_new_trial",
    "_set_trial_param",
    "_get_trials",
    "_get_best_trial_id",
)

_trials = _models.TrialModel.__table__
_beats = _models.TrialHeartbeatModel.__table__
_user_attrs = _models.TrialUserAttributeModel.__table__


def count_by_state(
    conn: Any, study_id: int, *, unless_attr: str | None = None
) -> dict[TrialState, int]:
    """Trials of a study per state, on the caller's connection (inside its lock's transaction),
    in one ``GROUP BY``: the public ``get_all_trials`` would load every trial to count them.
    ``unless_attr``: trials that carry this user attribute are not counted."""
    query = sqlalchemy.select(_trials.c.state, sqlalchemy.func.count()).where(
        _trials.c.study_id == study_id
    )
    if unless_attr is not None:
        marked = sqlalchemy.select(_user_attrs.c.trial_id).where(
            _user_attrs.c.trial_id == _trials.c.trial_id, _user_attrs.c.key == unless_attr
        )
        query = query.where(~marked.exists())
    query = query.group_by(_trials.c.state)
    out = dict.fromkeys(TrialState, 0)
    for state, n in conn.execute(query).all():
        out[TrialState[state] if isinstance(state, str) else state] = n
    return out


def running_heartbeats(conn: Any, study_id: int) -> list[tuple[int, int, Any]]:
    """(trial id, number, last heartbeat or None) of the study's RUNNING trials. The heartbeat
    is the database's clock at the beat (``RDBStorage.record_heartbeat`` writes ``now()``), so
    it is compared with the same database's ``now()``, never a worker's clock. Optuna's only
    public reader of it (``fail_stale_trials``) fails trials with its own grace and no reason."""
    query = (
        sqlalchemy.select(_trials.c.trial_id, _trials.c.number, _beats.c.heartbeat)
        .select_from(_trials.outerjoin(_beats, _beats.c.trial_id == _trials.c.trial_id))
        .where(_trials.c.study_id == study_id, _trials.c.state == TrialState.RUNNING)
    )
    return [tuple(row) for row in conn.execute(query).all()]


def write_finished_trial_attrs(engine: Any, trial_id: int, values: dict[str, Any]) -> None:
    """Set user attributes of a trial this worker has just failed. Why: Optuna refuses
    attributes on a finished trial, and writing them before the state change would label a
    trial whose (paused) worker completes it in between as lost."""
    with engine.begin() as conn:
        conn.execute(
            _user_attrs.delete().where(
                _user_attrs.c.trial_id == trial_id, _user_attrs.c.key.in_(list(values))
            )
        )
        conn.execute(
            _user_attrs.insert(),
            [
                {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                for k, v in values.items()
            ],
        )
