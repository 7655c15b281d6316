"""``search run``: check everything, then create or resume the study and fill it to N trials."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

import spaces
import trainer
from search import storage as storage_mod
from search.algorithms import create_pruner, create_sampler
from search.objective import Objective
from search.progress import Progress
from search.sources import resolve_pretrained
from search.studyfile import StudySpec
from trainer._registry import unknown_name_error

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
KEEP_CHECKPOINTS = 3  # best trials whose weights stay on disk (predict, transfer, evaluate)
MAX_CONSECUTIVE_FAILURES = 3


@dataclass
class Plan:
    """A checked run: nothing about it can fail for bad input once built."""

    spec: StudySpec
    url: str
    base: dict[str, Any]
    fixed: dict[str, Any]
    enqueue: list[dict[str, Any]]
    preview: trainer.TrainConfig


def plan_run(
    spec: StudySpec,
    *,
    storage: str | None = None,
    fixed: dict[str, Any] | None = None,
    enqueue: list[dict[str, Any]] | None = None,
    data_root: str | None = None,
) -> Plan:
    """Validate the study, overrides, storage and data before any trial or table is written."""
    url = storage_mod.resolve_url(storage, spec.storage)
    storage_mod.check_url(url)
    spaces.get_space(spec.space)
    base = spec.base_config(data_root=data_root)
    spec.check_data_root(base)
    pinned = resolve_pretrained({**spec.fixed, **(fixed or {})}, url)
    cfg, _ = spaces.build_config(spec.space, None, base=base, fixed=pinned)
    for key, value in pinned.items():
        if key == "model.backbone":
            trainer.check_backbone(value)
    _check_names(cfg)
    queue = [dict(e) for e in spec.enqueue] + [dict(e) for e in (enqueue or [])]
    for item in queue:
        _check_names(spaces.build_config(spec.space, None, base=base, fixed={**pinned, **item})[0])
    create_sampler(spec.sampler)
    create_pruner(spec.pruner, max_epochs=cfg.train.epochs)
    trainer.load_data(cfg.data)  # missing or broken data fails here, not in trial 0
    return Plan(spec, url, base, pinned, queue, cfg)


def _check_names(cfg: trainer.TrainConfig) -> None:
    """Unknown backbone, loss or optimizer names fail before any trial, with the options."""
    trainer.check_backbone(cfg.model.backbone)
    for kind, name, options in (
        ("loss", cfg.loss.name, trainer.list_losses()),
        ("optimizer", cfg.optim.name, trainer.list_optimizers()),
    ):
        if name not in options:
            raise unknown_name_error(kind, name, options)


def open_study(plan: Plan, *, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    spec = plan.spec
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage or storage_mod.open_storage(plan.url),
        sampler=create_sampler(spec.sampler),
        pruner=create_pruner(spec.pruner, max_epochs=plan.preview.train.epochs),
        direction=spec.direction,
        load_if_exists=True,
    )
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.metric])
    study.set_user_attr("space", spec.space)
    study.set_user_attr("study_file", str(spec.path))
    return study


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_study(
    plan: Plan,
    *,
    n_trials: int,
    timeout: float | None = None,
    progress: Progress | None = None,
) -> optuna.Study:
    """Run until the study holds ``n_trials`` finished (complete + pruned) trials."""
    if n_trials < 1:
        raise ValueError(f"--trials must be >= 1, but got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"--timeout must be > 0 seconds, but got {timeout}")
    optuna.logging.set_verbosity(logging.ERROR)  # our own lines say it all
    progress = progress or Progress()
    study = open_study(plan)
    for params in plan.enqueue:
        study.enqueue_trial(params, user_attrs={"enqueued": params}, skip_if_exists=True)
    ckpt_dir = storage_mod.artifact_dir(plan.url, plan.spec.name) / "checkpoints"
    objective = Objective(
        space=plan.spec.space,
        base=plan.base,
        fixed=plan.fixed,
        checkpoint_dir=ckpt_dir,
        progress=progress,
        artifact_root=storage_mod.artifact_store_dir(plan.url),
    )
    progress.wanted = n_trials
    done = finished_count(study)
    progress.message(
        f"study {plan.spec.name!r}: {done} of {n_trials} trials finished; "
        f"storage {storage_mod.mask_url(plan.url)}"
    )
    deadline = time.monotonic() + timeout if timeout else None
    failures = 0
    while done < n_trials:
        if deadline is not None and time.monotonic() >= deadline:
            progress.message(f"timeout reached with {done} of {n_trials} trials finished")
            break
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        last = study.get_trials(deepcopy=False)[-1]
        failures = failures + 1 if last.state == TrialState.FAIL else 0
        done = finished_count(study)
        progress.trial_end(done, describe_trial(last), describe_best(study))
        _prune_checkpoints(study)
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(
                f"{failures} trials in a row failed; last: {last.user_attrs.get('reason', '?')}"
            )
    return study


def describe_trial(t: optuna.trial.FrozenTrial) -> str:
    attrs = t.user_attrs
    epochs = attrs.get("epochs_run", len(t.intermediate_values))
    secs = t.duration.total_seconds() if t.duration else 0.0
    if t.state == TrialState.COMPLETE:
        return f"trial {t.number} complete val_acc {t.value:.4f} ({epochs} epochs, {secs:.1f}s)"
    if t.state == TrialState.PRUNED:
        return f"trial {t.number} pruned: {attrs.get('reason', '')} ({secs:.1f}s)"
    return f"trial {t.number} {t.state.name.lower()}: {attrs.get('reason', '')}"


def describe_best(study: optuna.Study) -> str:
    try:
        best = study.best_trial
    except ValueError:
        return "none yet"
    return f"{best.value:.4f} (trial {best.number})"


def _prune_checkpoints(study: optuna.Study) -> None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(complete, key=lambda t: t.value, reverse=reverse)
    for t in ranked[KEEP_CHECKPOINTS:]:
        path = t.user_attrs.get("checkpoint")
        if path and Path(path).exists():
            Path(path).unlink()
