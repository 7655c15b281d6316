"""Companion studies: fixed configurations trained as trials of a study beside the search
(``NAME.ablation``, ``NAME.confirm``) in the same storage.

Every run is one trial, tagged with user attributes (which configuration, which repeat or
seed), so the dashboard shows it, an interrupted command resumes with only the missing runs,
and tables are recomputed from storage alone. Shared by ``search ablate`` and
``search confirm``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

import trainer
from search.experiments.objective import (
    OptunaReporter,
    record_result,
    set_status,
    with_local_pretrained,
)
from search.report.notes import annotate_trial, note_failure
from search.report.progress import Progress
from search.store import FINISHED, Storage
from search.store.workers import interruption_reason

# After training, before the trial is told: extra evaluations stored as user attributes.
AfterRun = Callable[[optuna.Trial, trainer.TrainResult], None]


def open_companion(name: str, storage: Storage, attrs: dict[str, Any]) -> optuna.Study:
    """Create or load the companion study ``name`` and (re)write its user attributes."""
    study = optuna.create_study(
        study_name=name,
        storage=storage.rdb,
        sampler=optuna.samplers.RandomSampler(seed=0),  # never consulted: every run is fixed
        pruner=optuna.pruners.NopPruner(),
        direction="maximize",
        load_if_exists=True,
    )
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study


def done_runs(study: optuna.Study, *keys: str) -> set[tuple[Any, ...]]:
    """The tag tuples (user attributes ``keys``) of the finished runs."""
    return {
        tuple(t.user_attrs.get(k) for k in keys)
        for t in study.get_trials(deepcopy=False, states=FINISHED)
    }


def run_fixed(
    study: optuna.Study,
    cfg: trainer.TrainConfig,
    *,
    tags: dict[str, Any],
    label: str,
    progress: Progress,
    storage: Storage | None,
    after: AfterRun | None = None,
) -> optuna.trial.FrozenTrial:
    """Train ``cfg`` as a new trial tagged with ``tags``; return the finished trial. Its
    dashboard artifacts go to ``storage``'s artifact store (None: none are kept).

    Ctrl-C/SIGTERM fail the trial (with the reason) and propagate; any other error fails it
    and the next run goes on. A diverged run is pruned, never complete with a NaN value."""
    trial = study.ask()
    for key, value in tags.items():
        # Tags live in user attributes, not params: a categorical param's choices could not
        # change when a later rerun adds values.
        trial.set_user_attr(key, value)
    trial.set_user_attr("config", cfg.to_flat())
    trial.set_user_attr("label", label)
    progress.trial_start(trial.number, {"run": label})
    try:
        result = trainer.train(
            with_local_pretrained(cfg), reporter=OptunaReporter(trial, progress, cfg.train.epochs)
        )
        diverged = result.status in ("nonfinite_loss", "oom") or not math.isfinite(
            result.best_val_acc
        )
        if after is not None and not diverged and result.model is not None:
            after(trial, result)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (search.cli.Terminated)
        set_status(trial, "interrupted", interruption_reason(exc))
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        set_status(trial, "error", reason)
        note_failure(trial, cfg, status="error", reason=reason)
        study.tell(trial, state=TrialState.FAIL)
        return _frozen(study, trial.number)
    record_result(trial, result)
    annotate_trial(trial, cfg, result, storage=storage)
    if diverged:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, result.best_val_acc)
    return _frozen(study, trial.number)


def split_evaluator(
    data: trainer.DataConfig,
    *,
    tta: bool | str | Sequence[str] = False,
    also_tta: bool | str = False,
) -> AfterRun:
    """An ``after`` that evaluates the run's model (best epoch's weights) once on the
    validation split and once on the test split, stored as ``eval_val_acc`` and ``test_acc``,
    with the test-time views ``tta`` names (``trainer.evaluate.tta_views``; True: seed 000's
    six). ``also_tta``: the test split once more with these views, as ``test_acc_tta`` (and
    the views as ``tta_views``), beside the plain ``test_acc``: the same model both ways.
    The test images are loaded here, after training, never before."""
    from trainer.data import load_test
    from trainer.evaluate import accuracy, tta_views

    views = tta_views(tta)  # resolved (and a bad name refused) before any run
    extra = tta_views(also_tta) if also_tta else None

    def after(trial: optuna.Trial, result: trainer.TrainResult) -> None:
        d = trainer.load_data(data)
        x_test, y_test = load_test(data)
        mean, std = result.normalization or (d.mean, d.std)  # as the run fed its model
        kw = {"mean": mean, "std": std, "tta": views}
        trial.set_user_attr("eval_val_acc", accuracy(result.model, d.x_val, d.y_val, **kw))
        trial.set_user_attr("test_acc", accuracy(result.model, x_test, y_test, **kw))
        trial.set_user_attr("tta", tta)
        if extra is not None:
            kw["tta"] = extra
            trial.set_user_attr("test_acc_tta", accuracy(result.model, x_test, y_test, **kw))
            trial.set_user_attr("tta_views", also_tta)

    return after


def _frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    return next(t for t in reversed(trials) if t.number == number)


__all__ = ["AfterRun", "done_runs", "open_companion", "run_fixed", "split_evaluator"]
