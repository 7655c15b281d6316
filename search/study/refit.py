"""Refits: a budgeted search's winner trained again, longer, as a trial of its own.

``search run`` with ``[budget] refit`` keeps that share of the wall clock for the end: the
best search trial's configuration is trained again with more epochs and a longer patience,
to its last epoch or early stop, and stored as a new trial with the user attribute
``refit_of = k`` (k: the search trial it retrains).

Optuna's ``study.best_trial`` ranks every complete trial by value, refits among them. The
commands that use "the best trial" (``search best``, ``search predict`` and ``evaluate``,
``search confirm``) take ``best_trial`` here instead: the best *search* trial by value, or
its refit when one completed, whatever the two values. The refit is the model the budget
paid to train to the end; its value is the best epoch of one longer run, where trial k's is
the best of many short ones on the same validation images, so a refit a little below trial
k is the expected outcome of that selection, not a worse model. Both values are shown.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

# the user attribute of a refit: the number of the trial it retrains
from search.store import REFIT_ATTR


def refit_source(trial: FrozenTrial) -> int | None:
    """The number of the search trial that ``trial`` refits, or None for a search trial."""
    source = trial.user_attrs.get(REFIT_ATTR)
    return None if source is None else int(source)


def best_search_trial(study: optuna.Study) -> FrozenTrial | None:
    """The complete search trial (not a refit) with the best value; the earliest of equals."""
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if refit_source(t) is None and t.value is not None
    ]
    if not done:
        return None
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return min(done, key=lambda t: (sign * t.value, t.number))


def refit_of(study: optuna.Study, number: int) -> FrozenTrial | None:
    """The latest complete refit of search trial ``number``, if any."""
    refits = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if refit_source(t) == number
    ]
    return max(refits, key=lambda t: t.number) if refits else None


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The trial that stands for the study: the refit of the best search trial when one
    completed, else that search trial (see the module docstring for why)."""
    best = best_search_trial(study)
    if best is None:
        raise ValueError(f"study {study.study_name!r} has no complete trial yet")
    return refit_of(study, best.number) or best


__all__ = ["REFIT_ATTR", "best_search_trial", "best_trial", "refit_of", "refit_source"]
