"""``search run``: check everything, then create or resume the study and fill it to N trials.

A run is one worker (``search/workers.py``): it claims trial slots in the storage, so any
number of workers on any number of machines fill the same study to exactly N finished
trials, and trials of workers that die or freeze are failed and retried.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

import spaces
import trainer
from search.experiments.cost import CostModel
from search.experiments.objective import NoTimeLeft, Objective
from search.experiments.transfer import resolve_pretrained
from search.report.notes import study_changes_note
from search.report.progress import Progress
from search.store import FINISHED, Storage, artifacts
from search.store.storage import check_study_name
from search.store.workers import (
    CHILD_ENV,
    PLACEMENT_ENV,
    WORKER_ATTR,
    Claim,
    Heartbeat,
    SlotClaimer,
    WorkerOptions,
    mark_interrupted,
    signals_ignored,
    this_process,
    worker_name,
)
from search.study.budget import RunLimits, fmt_duration
from search.study.problem import check_problem, describe_problem, record_problem, stored_problem
from search.study.refit import REFIT_ATTR, best_search_trial, best_trial, refit_source
from search.study.samplers import (
    TrialSeededSampler,
    create_pruner,
    create_sampler,
    expected_epoch_share,
)
from search.study.splits import record_splits
from search.study.studyfile import StudySpec

log = logging.getLogger(__name__)
KEEP_CHECKPOINTS = 3  # best trials whose weights stay on disk (predict, transfer, evaluate)
MAX_CONSECUTIVE_FAILURES = 3
# Drawn configurations in a row too long for the budget left after which the run ends, unless
# a cheaper configuration seen earlier would still fit (then it draws on, up to the second).
MAX_MISFITS, MAX_MISFITS_WITH_ROOM = 3, 25
UNLIMITED = 2**62  # trial slots when only the wall-clock budget ends the run
# The refit of the winner ([budget] refit, a share of the wall clock kept for the end): at most
# this many times the epochs of its search trial, in at most this share of the time left (the
# deadline would stop a refit that overran, and a stopped trial keeps no weights).
REFIT_MAX_EPOCHS_FACTOR, REFIT_TIME_SAFETY = 3, 0.85


@dataclass
class Plan:
    """A checked run: nothing about it can fail for bad input once built."""

    spec: StudySpec
    storage: Storage
    base: dict[str, Any]
    fixed: dict[str, Any]
    enqueue: list[dict[str, Any]]
    preview: trainer.TrainConfig
    space: spaces.SearchSpace
    problem: dict[str, Any]  # what the study measures (search.study.problem)
    force: bool = False  # go on although the problem changed, recording the change

    @property
    def url(self) -> str:
        """The storage's URL, for what leaves the process (a worker's environment)."""
        return self.storage.url


def plan_run(
    spec: StudySpec,
    *,
    storage: Storage | str | None = None,
    fixed: dict[str, Any] | None = None,
    enqueue: list[dict[str, Any]] | None = None,
    data_root: str | None = None,
    force: bool = False,
) -> Plan:
    """Validate the study, overrides, storage and data before any trial or table is written:
    also that every backbone the space can draw builds and runs at the image size, and that an
    existing study of this name measures the same problem. ``storage``: a ``Storage``, or
    the URL ``--storage`` (resolved here once, with ``$SEARCH_STORAGE`` and the study file's)."""
    store = Storage.open(storage, study_url=spec.storage)
    store.check()
    check_study_name(spec.name)
    space = spaces.resolve_space(spec.search_space)
    base = spec.base_config(data_root=data_root)
    spec.check_data_root(base)
    pinned = resolve_pretrained({**spec.fixed, **(fixed or {})}, store)
    source = pinned.get("model.pretrained")
    if isinstance(source, str) and source != "imagenet":
        # missing, damaged or unsafe (a pickle): fail here
        trainer.read_checkpoint(artifacts.local_copy(source))
    queue = [dict(e) for e in spec.enqueue] + [dict(e) for e in (enqueue or [])]
    cfg = spaces.check_names(space, base=base, fixed=pinned, queue=queue)
    create_sampler(spec.sampler)
    create_pruner(spec.pruner, max_epochs=cfg.train.epochs)
    data = trainer.load_data(cfg.data)  # missing or broken data fails here, not in trial 0
    for backbone in study_backbones(space, cfg, pinned=pinned, base=base, queue=queue):
        trainer.check_model(cfg.replace({"model.backbone": backbone}), data)
    problem = describe_problem(
        cfg, data, metric=spec.metric, direction=spec.direction, space=spec.space,
        params=spec.raw_params,
    )  # fmt: skip
    if not force:
        check_problem(stored_problem(store, spec.name), problem, study=spec.name)
    return Plan(spec, store, base, pinned, queue, cfg, space, problem, force)


def study_backbones(
    space: spaces.SearchSpace,
    cfg: trainer.TrainConfig,
    *,
    pinned: dict[str, Any],
    base: dict[str, Any],
    queue: list[dict[str, Any]],
) -> list[str]:
    """Every backbone a trial of this study can get: drawn by the space, pinned, enqueued."""
    if "model.backbone" in pinned:
        return [pinned["model.backbone"]]
    seen: dict[str, spaces.Traced] = {}
    spaces.trace(space, fixed=pinned, base=base, seen=seen)
    drawn = seen.get("model.backbone")
    names = list(drawn.choices) if drawn is not None and drawn.kind == "choice" else []
    names += [item["model.backbone"] for item in queue if "model.backbone" in item]
    return list(dict.fromkeys(names or [cfg.model.backbone]))


def open_study(plan: Plan) -> optuna.Study:
    spec = plan.spec
    study = optuna.create_study(
        study_name=spec.name,
        storage=plan.storage.rdb,
        sampler=create_sampler(spec.sampler),
        pruner=create_pruner(spec.pruner, max_epochs=plan.preview.train.epochs),
        direction=spec.direction,
        load_if_exists=True,
    )
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.metric])
    study.set_user_attr("space", plan.space.name)
    study.set_user_attr("study_file", str(spec.path))
    changes = record_problem(study, plan.problem, forced=plan.force)
    if changes:
        study_changes_note(study, changes)
    record_splits(study, plan.preview.data)  # search confirm refuses data changed since
    return study


def prepare_study(plan: Plan) -> tuple[Storage, optuna.Study]:
    """Open the storage and create or load the study and its queue, all under one lock:
    workers starting together on a fresh database make one schema and one study."""
    optuna.logging.set_verbosity(logging.ERROR)  # our own lines say it all
    storage = plan.storage
    with storage.exclusive("setup"):
        study = open_study(plan)
        for params in plan.enqueue:
            study.enqueue_trial(params, user_attrs={"enqueued": params}, skip_if_exists=True)
    return storage, study


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_study(
    plan: Plan,
    *,
    n_trials: int | None,
    timeout: float | None = None,
    progress: Progress | None = None,
    options: WorkerOptions | None = None,
    announce: bool = True,
    limits: RunLimits | None = None,
    started: float | None = None,
) -> optuna.Study:
    """Run until the study holds ``n_trials`` finished (complete + pruned) trials, counting
    those of every other worker on the same storage; never more. With a wall clock
    (``limits.wall_seconds`` from ``started``, a ``time.monotonic()``, default now) the run
    also ends when it is spent: no trial starts that its estimate says cannot finish in the
    time left, and the running one stops at its next step. Without ``n_trials`` the wall
    clock alone ends the run.

    With a wall clock and ``[budget] refit = share`` in the study file, the search stops
    starting trials when ``1 - share`` of the wall clock is spent (or when a drawn
    configuration cannot finish in the search's time left), and the rest trains the best
    search trial's configuration longer, as a trial of its own (``_refit``)."""
    limits = limits or RunLimits()
    if n_trials is None and limits.wall_seconds is None:
        raise ValueError("--trials N is needed unless a wall-clock budget is given (--budget 30m)")
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"--trials must be >= 1, but got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise ValueError(f"--timeout must be > 0 seconds, but got {timeout}")
    started = time.monotonic() if started is None else started
    wall_end = started + limits.wall_seconds if limits.wall_seconds is not None else None
    share = refit_share(plan.spec.budget)
    refit_due = wall_end is not None and share > 0
    # the search's own end: the refit's share of the wall clock is kept for after it
    search_end = started + limits.wall_seconds * (1 - share) if refit_due else wall_end
    options = options or WorkerOptions()
    optuna.logging.set_verbosity(logging.ERROR)  # our own lines say it all
    progress = progress or Progress()
    storage, study = prepare_study(plan)
    ckpt_dir = storage.checkpoint_dir(plan.spec.name)
    objective = Objective(
        space=plan.space,
        base=plan.base,
        fixed=plan.fixed,
        checkpoint_dir=ckpt_dir,
        progress=progress,
        storage=storage,
        limits=limits,
        cost=CostModel(
            study,
            storage=storage,
            # most trials stop at a low rung under a bracket pruner: the prior of the estimate
            prior_share=expected_epoch_share(
                plan.spec.pruner, max_epochs=plan.preview.train.epochs
            ),
        )
        if limits.costed
        else None,
        deadline=search_end,
    )
    progress.wanted = n_trials
    progress.start(started=started, wall_seconds=limits.wall_seconds)
    if not isinstance(study.sampler, TrialSeededSampler) and (
        os.environ.get(CHILD_ENV) or not storage.is_sqlite
    ):
        # An unseeded sampler: make sure workers started together do not share a stream.
        study.sampler.reseed_rng()
    claimer = SlotClaimer(
        study,
        storage=storage,
        n_trials=n_trials if n_trials is not None else UNLIMITED,
        options=options,
        checkpoint_dir=ckpt_dir,
        say=progress.message,
    )
    if announce:
        done = claimer.finished(claimer.counts())
        wanted = f"{done} of {n_trials}" if n_trials is not None else f"{done}"
        wall = limits.wall_seconds
        progress.message(
            f"study {plan.spec.name!r}: {wanted} trials finished"
            + (f"; wall-clock budget {fmt_duration(wall)}" if wall is not None else "")
            + f"; storage {storage.masked}"
        )
    deadline = time.monotonic() + timeout if timeout else None
    failures, misfits, waiting = 0, 0, False
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            done = claimer.finished(claimer.counts())
            if n_trials is None or done < n_trials:  # a full study is simply done
                progress.message(f"timeout reached with {_of(done, n_trials)} trials finished")
            refit_due = False  # the user's --timeout ends the command
            break
        if refit_due and not _refit_fits(study, wall_end, search_end=search_end):
            refit_due, search_end = False, _search_on(objective, progress, wall_end)
        if search_end is not None and time.monotonic() >= search_end:
            done = claimer.finished(claimer.counts())
            if refit_due:
                progress.message(
                    f"search: {fmt_duration(search_end - started)} spent with "
                    f"{_of(done, n_trials)} trials finished; the rest of the budget trains "
                    "the best one longer"
                )
            else:
                progress.message(
                    f"budget: {fmt_duration(limits.wall_seconds)} spent with "
                    f"{_of(done, n_trials)} trials finished; rerun with a new --budget to go on"
                )
            break
        claimed = claimer.claim()
        if claimed == Claim.FULL:
            break
        if claimed == Claim.WAIT:
            if not waiting:
                progress.message(
                    "waiting: the rest of the budget is running in other workers (a trial "
                    f"without heartbeat for {options.grace_period:g} s is retried here)"
                )
            waiting = True
            time.sleep(options.poll)
            continue
        waiting = False
        try:
            last = _run_claimed(study, claimed, objective, storage, claimer, options, progress)
        finally:
            claimer.release(claimer.trial_id(claimed))
        if last is None:  # a late result, discarded
            continue
        if last.user_attrs.get("status") == "no_time":  # not run: it would overrun the budget
            misfits += 1
            progress.message(f"trial {last.number} {last.user_attrs['reason']}")
            if refit_due and _refit_fits(study, wall_end, search_end=time.monotonic()):
                # the refit gets the search's time left too
                progress.message(
                    f"search: ends with {fmt_duration(search_end - time.monotonic())} of its "
                    "time left, which goes to training the best trial longer"
                )
                break
            cheapest = objective.cheapest_expected
            room = cheapest is not None and cheapest <= search_end - time.monotonic()
            if misfits >= (MAX_MISFITS_WITH_ROOM if room else MAX_MISFITS):
                progress.message(
                    f"budget: {misfits} configurations in a row cannot finish in the "
                    f"{fmt_duration(search_end - time.monotonic())} left; rerun with a new "
                    "--budget to go on"
                )
                break
            continue
        misfits = 0
        failures = failures + 1 if last.state == TrialState.FAIL else 0
        done = claimer.finished(claimer.counts())
        progress.trial_end(done, describe_trial(last), describe_best(study))
        _prune_checkpoints(study)
        if failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(
                f"{failures} trials in a row failed; last: {last.user_attrs.get('reason', '?')}"
            )
    if refit_due:
        _refit(study, objective, storage, claimer, options, progress, wall_end=wall_end)
    return study


def _search_on(objective: Objective, progress: Progress, wall_end: float) -> float:
    """No refit could train the best trial longer than it ran: the search goes on to the end
    of the wall clock, which it returns."""
    progress.message(
        "search: no refit longer than the best trial's run fits the refit's share of the "
        "budget; the search goes on to the end of it"
    )
    objective.deadline = wall_end
    return wall_end


def _refit_fits(study: optuna.Study, wall_end: float, *, search_end: float) -> bool:
    """Whether a refit of the best search trial, longer than it ran, fits the time from
    ``search_end`` (or now, if later) to ``wall_end``; True while no search trial is
    complete (the search goes on, and may yet find one)."""
    source = best_search_trial(study)
    if source is None:
        return time.monotonic() < search_end
    left = wall_end - max(search_end, time.monotonic())
    return refit_length(source, seconds_left=left) is not None


def refit_share(budget: dict[str, Any]) -> float:
    """``[budget] refit``: the share of the wall clock kept for the refit (0: none)."""
    return float(budget.get("refit", 0.0))


class _RefitObjective:
    """What ``_run_claimed`` calls for the refit: ``Objective.refit`` with its configuration."""

    def __init__(self, objective: Objective, cfg: trainer.TrainConfig, deadline: float) -> None:
        self.objective, self.cfg, self.deadline = objective, cfg, deadline
        self.checkpoint_dir = objective.checkpoint_dir

    def __call__(self, trial: optuna.Trial) -> float:
        return self.objective.refit(trial, self.cfg, deadline=self.deadline)


def refit_length(
    source: optuna.trial.FrozenTrial, *, seconds_left: float
) -> tuple[int, int, float] | None:
    """(epochs, patience, estimated seconds) of a refit of ``source`` that finishes in
    ``seconds_left``, at the seconds per epoch ``source`` itself took; None when that is no
    more epochs than ``source`` ran (training it again as long would only redraw its noise).

    At most ``REFIT_MAX_EPOCHS_FACTOR`` times its train.epochs: a refit is to reach the
    plateau that early stopping then detects, and the patience grows with it (a quarter of
    the epochs, as 8 of 30), or stays 0 (early stopping off) when the study turned it off."""
    attrs = source.user_attrs
    cfg = attrs.get("config") or {}
    run, secs = attrs.get("epochs_run"), attrs.get("train_seconds")
    if not (run and secs and cfg.get("train.epochs")):
        return None
    per_epoch = secs / run
    setup = float(attrs.get("setup_seconds") or 0.0)
    fits = math.floor((seconds_left * REFIT_TIME_SAFETY - setup) / per_epoch)
    epochs = min(REFIT_MAX_EPOCHS_FACTOR * int(cfg["train.epochs"]), fits)
    if epochs <= run:
        return None
    patience = int(cfg.get("train.patience", 0))
    if patience:
        patience = max(patience, math.ceil(epochs / 4))
    return epochs, patience, setup + epochs * per_epoch


def _refit(
    study: optuna.Study,
    objective: Objective,
    storage: Storage,
    claimer: SlotClaimer,
    options: WorkerOptions,
    progress: Progress,
    *,
    wall_end: float,
) -> optuna.trial.FrozenTrial | None:
    """Train the best search trial's configuration again, longer (``refit_length``), as a new
    trial marked ``refit_of = k``; one refit of k per study, whichever worker comes first."""
    source = best_search_trial(study)
    if source is None:
        progress.message("refit: no complete search trial to train longer")
        return None
    left = wall_end - time.monotonic()
    length = refit_length(source, seconds_left=left)
    if length is None:
        progress.message(
            f"refit: the {fmt_duration(max(0.0, left))} left hold no more epochs of trial "
            f"{source.number} than it ran; not refitted"
        )
        return None
    epochs, patience, seconds = length
    with storage.exclusive(f"refit:{study.study_name}"):
        taken = [
            t
            for t in study.get_trials(deepcopy=False)
            if refit_source(t) == source.number and t.state != TrialState.FAIL
        ]
        if taken:
            progress.message(f"refit: trial {source.number} is refitted in trial {taken[0].number}")
            return None
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.RUNNING,
                params=source.params,
                distributions=source.distributions,
                user_attrs={
                    REFIT_ATTR: source.number,
                    "estimated_seconds": round(seconds, 2),
                    "images_per_second": source.user_attrs.get("images_per_second"),
                },
            )
        )
        number = max(
            t.number
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if refit_source(t) == source.number
        )
        tid = claimer.rdb.get_trial_id_from_study_id_trial_number(claimer.study_id, number)
        storage.rdb.set_trial_system_attr(tid, WORKER_ATTR, this_process())
    trial = optuna.Trial(study, tid)
    cfg = trainer.TrainConfig.from_flat(source.user_attrs["config"]).replace(
        {"train.epochs": epochs, "train.patience": patience}
    )
    raw = source.user_attrs.get("raw_estimated_seconds")
    if raw:  # the same configuration's probe estimate, scaled: it calibrates later estimates
        trial.set_user_attr("raw_estimated_seconds", round(raw * epochs / _cfg_epochs(source), 2))
    progress.message(
        f"refit: trial {number} trains trial {source.number}'s configuration for up to "
        f"{epochs} epochs (patience {patience}), ~{fmt_duration(seconds)} of the "
        f"{fmt_duration(left)} left"
    )
    try:
        last = _run_claimed(
            study, trial, _RefitObjective(objective, cfg, wall_end), storage, claimer, options,
            progress,
        )  # fmt: skip
    finally:
        claimer.release(tid)
    if last is not None:
        done = claimer.finished(claimer.counts())
        progress.trial_end(done, describe_trial(last), describe_best(study))
        _prune_checkpoints(study)
    return last


def _cfg_epochs(trial: optuna.trial.FrozenTrial) -> int:
    """The train.epochs ``trial`` was configured with."""
    return int((trial.user_attrs.get("config") or {}).get("train.epochs") or 1)


def _run_claimed(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: Objective,
    storage: Storage,
    claimer: SlotClaimer,
    options: WorkerOptions,
    progress: Progress,
) -> optuna.trial.FrozenTrial | None:
    """Run one claimed trial with a heartbeat and tell its outcome. None: the trial had been
    failed by another worker meanwhile (this one was paused), and its result is dropped."""
    tid, number = claimer.trial_id(trial), trial.number
    resume_from = trial.user_attrs.get("resume_from")
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is not None:
        progress.message(
            f"trial {number} retries trial {retry_of}"
            + (" from its last finished epoch" if resume_from else "")
        )
    value: float | None = None
    with Heartbeat(storage, tid, options.heartbeat):
        try:
            trial.set_user_attr("worker", worker_name())
            where = os.environ.get(PLACEMENT_ENV)
            if where:
                trial.set_user_attr("placement", where)
                progress.message(f"trial {number} runs on {where}")
            value = objective(trial)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except optuna.exceptions.UpdateFinishedTrialError:
            return _discard(number, objective, options, progress)
        except NoTimeLeft:
            state = TrialState.FAIL  # not run; FAIL is what samplers ignore (neither good nor bad)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM, wherever in the trial it landed
            with signals_ignored():
                mark_interrupted(trial, exc)  # also after training, over its status and reason
                _tell(study, trial, TrialState.FAIL, None, storage, tid)
                if objective.checkpoint_dir is not None:  # a rerun starts new trials
                    (objective.checkpoint_dir / f"trial-{number}.last.safetensors").unlink(
                        missing_ok=True
                    )
            raise
        except Exception:
            state = TrialState.FAIL  # the objective stored the reason and traceback
    if state == TrialState.COMPLETE and (value is None or not math.isfinite(value)):
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            trial.set_user_attr("reason", f"non-finite objective value {value}")
        state, value = TrialState.PRUNED, None  # never a COMPLETE trial with a NaN value
    if not _tell(study, trial, state, value, storage, tid):
        return _discard(number, objective, options, progress)
    if resume_from and objective.checkpoint_dir is not None:
        path = artifacts.local_path(resume_from)
        if path.parent == objective.checkpoint_dir:  # the retry is done with it
            with contextlib.suppress(Exception):  # S3 away: a stray object, nothing lost
                artifacts.remove(resume_from)
    return storage.rdb.get_trial(tid)


def _tell(study, trial, state: TrialState, value: float | None, storage: Storage, tid: int) -> bool:
    """Store the outcome; False when the trial was already failed by a sweep."""
    try:
        if state == TrialState.COMPLETE:
            study.tell(trial, value)
        else:
            study.tell(trial, state=state)
        return True
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        stored = storage.rdb.get_trial(tid)
        if stored.state == state:  # our write had landed before a dropped connection
            return True
        if stored.state.is_finished():
            return False
        raise


def _discard(number: int, objective: Objective, options: WorkerOptions, progress: Progress):
    progress.message(
        f"trial {number}: this worker sent no heartbeat for over {options.grace_period:g} s "
        "(paused or cut off), so another worker marked the trial failed and retried it; "
        "the late result is discarded"
    )
    if objective.checkpoint_dir is not None:  # not moved aside for a retry: nobody needs it
        (objective.checkpoint_dir / f"trial-{number}.last.safetensors").unlink(missing_ok=True)
    return None


def _of(done: int, wanted: int | None) -> str:
    return f"{done} of {wanted}" if wanted is not None else str(done)


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
        best = best_trial(study)  # the refit of the best search trial, once there is one
    except ValueError:
        return "none yet"
    source = refit_source(best)
    refit = f", refit of trial {source}" if source is not None else ""
    return f"{best.value:.4f} (trial {best.number}{refit})"


def _prune_checkpoints(study: optuna.Study) -> None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(complete, key=lambda t: t.value, reverse=reverse)
    with contextlib.suppress(ValueError):  # the study's best keeps its weights, whatever rank
        keep = best_trial(study)
        ranked = [keep, *(t for t in ranked if t.number != keep.number)]
    for t in ranked[KEEP_CHECKPOINTS:]:
        ref = t.user_attrs.get("checkpoint")  # a path, or an S3 URL
        if ref and ref not in _REMOVED:  # one request per checkpoint, not one per trial end
            try:
                artifacts.remove(ref)  # another worker may have been first
            except Exception as exc:  # S3 away: the file stays, nothing is lost
                log.warning("could not remove the checkpoint %s: %s", ref, exc)
            else:
                _REMOVED.add(ref)


_REMOVED: set[str] = set()  # checkpoints this process removed


def dry_run(plan: Plan, n: int = 3) -> list[dict[str, Any]]:
    """The parameters of the first ``n`` trials of a fresh study (the queue first), drawn in
    memory: nothing is trained and no storage is touched."""
    optuna.logging.set_verbosity(logging.ERROR)
    study = optuna.create_study(
        sampler=create_sampler(plan.spec.sampler), direction=plan.spec.direction
    )
    for params in plan.enqueue:
        study.enqueue_trial(params, user_attrs={"enqueued": params})
    drawn = []
    for _ in range(n):
        trial = study.ask()
        _, params = spaces.build_config(plan.space, trial, base=plan.base, fixed=plan.fixed)
        enqueued = trial.user_attrs.get("enqueued", {})
        drawn.append({**params, **{k: v for k, v in enqueued.items() if k not in params}})
        study.tell(trial, state=TrialState.FAIL)
    return drawn
