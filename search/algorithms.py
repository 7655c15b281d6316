"""Samplers and pruners from study-file tables, with their arguments checked up front."""

from __future__ import annotations

import inspect
from typing import Any

import optuna

from trainer._registry import unknown_name_error

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "grid": optuna.samplers.GridSampler,
}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "none": optuna.pruners.NopPruner,
}


def create_sampler(table: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """``{"name": "tpe", "seed": 0, ...}`` -> a sampler. Grid takes ``search_space``."""
    kwargs = dict(table)
    name = kwargs.pop("name", "tpe")
    return _build("sampler", SAMPLERS, name, kwargs)


def create_pruner(table: dict[str, Any], *, max_epochs: int) -> optuna.pruners.BasePruner:
    """``{"name": "median", "n_warmup_steps": 2}`` -> a pruner; steps are epochs."""
    kwargs = dict(table)
    name = kwargs.pop("name", "median")
    if name == "hyperband":
        kwargs.setdefault("max_resource", max_epochs)
    return _build("pruner", PRUNERS, name, kwargs)


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
