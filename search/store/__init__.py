"""The study storage: one object per storage URL (``search.store.storage``), trial claims,
heartbeat and liveness (``search.store.workers``), the lookup of an existing study
(``search.store.lookup``), and the one module that touches Optuna's internals."""

from __future__ import annotations

from optuna.trial import TrialState

# Trials that count towards ``--trials N``: complete, or pruned (stopped early by the pruner,
# a diverged loss, a budget). FAIL and RUNNING do not.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# The user attribute of a refit (the winner of a budgeted search trained again, longer; see
# ``search.study.refit``): the number of the search trial it retrains. A refit is one trial
# more than ``--trials N``: it never counts towards N, so a rerun does not run one search
# trial fewer for it.
REFIT_ATTR = "refit_of"

from search.store.storage import Storage  # noqa: E402  (after FINISHED: nothing below needs it)

__all__ = ["FINISHED", "REFIT_ATTR", "Storage"]
