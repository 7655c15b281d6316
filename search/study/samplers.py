"""Samplers and pruners from study-file tables, with their arguments checked up front."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from trainer._registry import unknown_name_error


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` once every point has run: that call
    only works inside ``study.optimize``, and ``search run`` asks and tells, so it raised from
    ``study.tell`` on the grid's last trial. The run counts its trials itself."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "grid": _AskTellGridSampler,
}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}


def create_sampler(table: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """``{"name": "tpe", "seed": 0, ...}`` -> a sampler. Grid takes ``search_space``.

    With a seed, each trial's randomness comes from the seed and the trial number (see
    ``TrialSeededSampler``), so a resumed study goes on where it stopped instead of replaying.
    """
    kwargs = dict(table)
    name = kwargs.pop("name", "tpe")
    sampler = _build("sampler", SAMPLERS, name, kwargs)
    seed = kwargs.get("seed")
    if seed is None or name == "grid":
        # A seeded grid sampler shuffles the whole grid once and trial k takes point k, so it
        # resumes exactly as it is; made anew per trial it would reshuffle and repeat points.
        return sampler
    return TrialSeededSampler(
        lambda s: _build("sampler", SAMPLERS, name, {**kwargs, "seed": s}), seed
    )


def grid_trials(table: dict[str, Any], n_trials: int | None) -> int | None:
    """``--trials`` for a study of this ``[sampler]`` table: a grid runs each of its points once,
    so more trials than points (which Optuna's grid sampler would fill by repeating points at
    random) is refused, and a run without ``--trials`` ends with the grid."""
    if table.get("name") != "grid" or not isinstance(table.get("search_space"), dict):
        return n_trials
    points = math.prod(len(values) for values in table["search_space"].values())
    if n_trials is not None and n_trials > points:
        raise ValueError(
            f"--trials {n_trials} is more than the {points} points of the study's grid "
            f"([sampler] search_space), and each point runs once: use --trials {points}"
        )
    return points if n_trials is None else n_trials


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial ``number`` of a study seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A seeded sampler made anew for every trial with the seed ``trial_seed(seed, number)``.

    A sampler rebuilt with the same seed in every new process replays the start of its random
    sequence, so a study resumed by a second ``search run`` would redraw its first trials.
    Seeding by trial number instead makes trial k's draw depend only on the study seed, k and
    the trials before it: 3 + 3 trials draw what 6 in one go draw, and workers running side by
    side (different trial numbers) draw different configurations. Only the public sampler
    interface is used; the samplers keep their state in the study (TPE, CMA-ES).
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._inner = make(seed)

    @property
    def inner(self) -> optuna.samplers.BaseSampler:
        return self._inner

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with warnings.catch_warnings():  # e.g. TPE's multivariate flag, once per trial
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._inner = self._make(trial_seed(self._seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def create_pruner(table: dict[str, Any], *, max_epochs: int) -> optuna.pruners.BasePruner:
    """``{"name": "median", "n_warmup_steps": 2}`` -> a pruner; steps are epochs."""
    kwargs = dict(table)
    name = kwargs.pop("name", "median")
    if name == "hyperband":
        kwargs.setdefault("max_resource", max_epochs)
    return _build("pruner", PRUNERS, name, kwargs)


# Pruners that judge trials at rungs of a bracket (epochs r, r*eta, r*eta^2, ...): most
# trials stop at a low rung, so a trial costs its expected epochs, not train.epochs.
BRACKET_PRUNERS = ("successive_halving", "hyperband")
# Optuna's defaults for the arguments the schedule depends on
_REDUCTION = {"successive_halving": 4, "hyperband": 3}


def bracket_rungs(table: dict[str, Any], *, max_epochs: int) -> list[int]:
    """The epochs after which a bracket pruner judges a trial of its lowest bracket (those
    before ``max_epochs``: a trial that ran all its epochs is complete, never judged); []
    for other pruners. ``min_resource = "auto"`` is Optuna's estimate, max epochs // 100."""
    schedule = _schedule(table, max_epochs=max_epochs)
    if schedule is None:
        return []
    low, eta, _ = schedule
    return _rungs(low, eta, max_epochs)


def expected_epoch_share(table: dict[str, Any], *, max_epochs: int) -> float:
    """What a trial is expected to train, as a share of ``max_epochs``, before any trial has
    run: 1 for pruners without brackets. Under successive halving a trial goes on past each
    rung with probability 1/eta (the top 1/eta of those that reached it); Hyperband mixes
    brackets whose first rung is r, r*eta, ... in Optuna's proportions of trials."""
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, but got {max_epochs}")
    schedule = _schedule(table, max_epochs=max_epochs)
    if schedule is None:
        return 1.0
    low, eta, hyperband = schedule
    if not hyperband:
        rate = int(table.get("min_early_stopping_rate", 0))
        return _expected_epochs(low * eta**rate, eta, max_epochs) / max_epochs
    # Optuna's own count of brackets (HyperbandPruner._try_initialization)
    n = max(1, math.floor(math.log(max(max_epochs / low, 1.0), eta)) + 1)
    weights = [math.ceil(n * eta ** (n - 1 - b) / (n - b)) for b in range(n)]
    epochs = [_expected_epochs(low * eta**b, eta, max_epochs) for b in range(n)]
    return sum(w * e for w, e in zip(weights, epochs, strict=True)) / sum(weights) / max_epochs


def _schedule(table: dict[str, Any], *, max_epochs: int) -> tuple[int, int, bool] | None:
    """(lowest rung, reduction factor, hyperband?) of a bracket pruner's table, else None."""
    name = table.get("name", "median")
    if name not in BRACKET_PRUNERS:
        return None
    low = table.get("min_resource", "auto" if name == "successive_halving" else 1)
    if low == "auto":
        low = max(1, max_epochs // 100)
    return int(low), int(table.get("reduction_factor", _REDUCTION[name])), name == "hyperband"


def _rungs(low: int, eta: int, max_epochs: int) -> list[int]:
    out, rung = [], low
    while rung < max_epochs:
        out.append(rung)
        rung *= eta
    return out


def _expected_epochs(low: int, eta: int, max_epochs: int) -> float:
    """Expected epochs of a trial whose first rung is ``low``: all of them up to it, then
    each further stretch by the 1/eta, 1/eta^2, ... that passed the rungs before it."""
    rungs = _rungs(low, eta, max_epochs)
    if not rungs:
        return float(max_epochs)
    ends = [*rungs[1:], max_epochs]
    stretches = enumerate(zip(rungs, ends, strict=True))
    return rungs[0] + sum((end - r) / eta ** (i + 1) for i, (r, end) in stretches)


def _build(kind: str, table: dict[str, type], name: str, kwargs: dict[str, Any]) -> Any:
    if name not in table:
        raise unknown_name_error(kind, name, table)
    cls = table[name]
    params = inspect.signature(cls).parameters
    for key in kwargs:
        if key not in params or key == "self":
            raise unknown_name_error(f"{name} {kind} argument", key, [p for p in params])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad {name} {kind} arguments {kwargs}: {exc}") from None
