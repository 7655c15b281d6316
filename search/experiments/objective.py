"""The Optuna objective: draw a config, train it, store everything the tables need."""

from __future__ import annotations

import logging
import math
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna

import spaces
import trainer
from search.experiments.cost import CostModel, DoesNotFit
from search.report.notes import annotate_trial, note_failure
from search.report.progress import Progress
from search.store import Storage, artifacts
from search.store.workers import interruption_reason
from search.study.budget import RunLimits, fmt_duration

log = logging.getLogger(__name__)


class NoTimeLeft(Exception):
    """The drawn configuration cannot finish in what is left of the wall-clock budget."""


class OptunaReporter:
    """trainer.Reporter that reports ``metric`` (the study's: val_acc, val_loss or val_f1)
    per epoch to the trial and asks about pruning (the pruner reads it in the study's
    direction); after every step it moves the progress bar and stops the run once
    ``deadline`` (``time.monotonic()``) has passed."""

    def __init__(
        self,
        trial: optuna.Trial,
        progress: Progress | None,
        epochs: int,
        *,
        deadline: float | None = None,
        metric: str = "val_acc",
        prune: bool = True,
    ) -> None:
        self.trial, self.progress, self.epochs = trial, progress, epochs
        self.deadline, self.metric = deadline, metric
        self.prune = prune  # False: the pruner is never asked (a refit runs to its end)
        self.last_epoch = 0
        self.state_upload: StateUpload | None = None  # resume states into S3, when there

    def step(self, epoch: int, step: int, steps_per_epoch: int, images: int) -> bool:
        if self.state_upload is not None:
            self.state_upload.step()
        if self.progress:
            self.progress.step(self.trial.number, epoch, self.epochs, step, steps_per_epoch, images)
        return self.deadline is not None and time.monotonic() >= self.deadline

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        self.trial.report(metrics[self.metric], epoch)
        self.last_epoch = max(self.last_epoch, epoch)
        if self.state_upload is not None:
            self.state_upload.epoch_done()
        if self.progress:
            self.progress.epoch(self.trial.number, epoch, self.epochs, metrics)

    def should_stop(self) -> bool:
        # After the last epoch there is nothing left to save: the trial is complete. Asked
        # there, a bracket pruner whose top rung is train.epochs would mark most of the few
        # trials that reached it pruned, and leave the study without complete trials.
        if not self.prune or self.last_epoch >= self.epochs:
            return False
        return self.trial.should_prune()


class Objective:
    """Train a drawn configuration; its value is the study's metric at the kept epoch. The
    metric is ``base["train.monitor"]`` (``StudySpec.base_config`` puts the study's there),
    so by default the kept epoch is also the one with the best value."""

    def __init__(
        self,
        *,
        space: str,
        base: dict[str, Any],
        fixed: dict[str, Any],
        checkpoint_dir: Path | None,
        progress: Progress | None = None,
        storage: Storage | None = None,
        limits: RunLimits | None = None,
        cost: CostModel | None = None,
        deadline: float | None = None,
    ) -> None:
        self.space, self.base, self.fixed = space, base, fixed
        self.metric = base.get("train.monitor", "val_acc")
        self.checkpoint_dir = checkpoint_dir
        self.storage = storage  # its artifact store gets each trial's dashboard artifacts
        self.progress = progress
        self.limits = limits or RunLimits()
        self.cost = cost  # needed when the limits are costed
        self.deadline = deadline  # time.monotonic() at which the wall-clock budget runs out
        # the least uncalibrated seconds of any configuration estimated so far (``raw``)
        self._cheapest_raw: float | None = None

    @property
    def cheapest_expected(self) -> float | None:
        """The expected seconds of the cheapest configuration estimated so far, at the study's
        calibration now: while it fits in the time left, a drawn configuration that does not is
        no reason to end the run. (At the calibration of its own draw it would go stale: the
        first draws are estimated by the probe alone, often far below what trials then take.)"""
        if self._cheapest_raw is None or self.cost is None:
            return None
        factor, share = self.cost.calibration()
        return self._cheapest_raw * factor * share

    def __call__(self, trial: optuna.Trial) -> float:
        cfg, params = spaces.build_config(self.space, trial, base=self.base, fixed=self.fixed)
        # An enqueued baseline may pin keys the space does not draw (e.g. train.seed).
        enqueued = trial.user_attrs.get("enqueued", {})
        extra = {k: v for k, v in enqueued.items() if k not in params and k not in self.fixed}
        if extra:
            cfg = cfg.replace(extra)
        trial.set_user_attr("config", cfg.to_flat())
        estimate = None
        if self.cost is not None:
            try:
                estimate = self._check_cost(trial, cfg, params, self.cost)
            except (optuna.TrialPruned, NoTimeLeft, KeyboardInterrupt):
                raise
            except Exception as exc:  # the throughput measurement failed
                _store_error(trial, cfg, exc)
                raise
        if self.progress:
            self.progress.trial_start(trial.number, params, pinned=self.fixed, estimate=estimate)
        return self._train(trial, cfg, deadline=self.deadline)

    def refit(
        self, trial: optuna.Trial, cfg: trainer.TrainConfig, *, deadline: float | None
    ) -> float:
        """Train ``cfg`` (a search trial's configuration, trained longer: see
        ``search.experiments.run``) on ``trial`` to its last epoch or early stop: the pruner is
        not asked, and ``deadline`` (the end of the wall clock, not of the search) stops it."""
        trial.set_user_attr("config", cfg.to_flat())
        if self.progress:
            self.progress.trial_start(
                trial.number, dict(trial.params), pinned=self.fixed,
                estimate=trial.user_attrs.get("estimated_seconds"),
            )  # fmt: skip
        return self._train(trial, cfg, prune=False, deadline=deadline)

    def _train(
        self,
        trial: optuna.Trial,
        cfg: trainer.TrainConfig,
        *,
        prune: bool = True,
        deadline: float | None = None,
    ) -> float:
        """Train ``cfg`` as ``trial``, store the result, and return the value (or raise
        TrialPruned for a trial that stopped early without a value to keep); ``prune``: ask
        the pruner after each epoch; ``deadline``: a ``time.monotonic()`` that stops it."""
        ckpt = last = None
        if self.checkpoint_dir is not None:
            ckpt = self.checkpoint_dir / f"trial-{trial.number}.safetensors"
            # state after each epoch: a retry of this trial (its worker died) resumes there
            last = self.checkpoint_dir / f"trial-{trial.number}.last.safetensors"
        remote = self.storage is not None and self.storage.remote_artifacts is not None
        reporter = OptunaReporter(
            trial, self.progress, cfg.train.epochs, deadline=deadline, metric=self.metric,
            prune=prune,
        )  # fmt: skip
        if remote and last is not None:
            reporter.state_upload = StateUpload(last)
        ended = False
        try:
            result = trainer.train(
                with_local_pretrained(cfg),
                reporter=reporter,
                checkpoint_path=ckpt,
                resume_from=_local_resume(trial.user_attrs.get("resume_from")),
                last_checkpoint_path=last,
            )
            ended = True
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (search.cli.Terminated)
            set_status(trial, "interrupted", interruption_reason(exc))
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            raise  # another worker failed this trial meanwhile: nothing of ours to store
        except Exception as exc:
            _store_error(trial, cfg, exc)
            raise
        finally:
            if reporter.state_upload is not None:  # a run that ended needs no resume state
                reporter.state_upload.close(keep=not ended)
        # A refit the clock stopped is a shorter run of a configuration already chosen, not
        # a judged one: it keeps its best epoch, weights and value (the trainer keeps no
        # weights of a stopped trial, right for a search trial cut at random).
        kept = not prune and result.status == "budget" and bool(result.history)
        if kept and ckpt is not None and result.model is not None:
            data = trainer.load_data(cfg.data)
            path = trainer.save_checkpoint(
                result.model, ckpt, cfg=cfg, data=data, summary=result.summary()
            )
            result.checkpoint = str(path)
        if remote and result.checkpoint:  # into the bucket; the trial records its URL
            local = Path(result.checkpoint)
            try:
                result.checkpoint = artifacts.upload(local)
            except Exception as exc:  # the trial and its weights stay, on this node only
                log.warning("could not put %s into S3 (%s); it stays here", local, exc)
            else:
                local.unlink(missing_ok=True)
        record_result(trial, result)
        annotate_trial(trial, cfg, result, storage=self.storage)
        if result.status in ("pruned", "nonfinite_loss", "oom", "budget") and not kept:
            # A diverged configuration is a finished, bad trial: pruned, never COMPLETE/NaN;
            # so is one that does not fit in memory even at the smallest micro-batch. One
            # stopped by the wall-clock budget keeps its finished epochs as intermediate values.
            raise optuna.TrialPruned(result.reason)
        value = result.best_metric(self.metric)  # the kept weights' score
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"non-finite objective value {value}")
        return value

    def _check_cost(
        self, trial: optuna.Trial, cfg: trainer.TrainConfig, params: dict[str, Any], cost: CostModel
    ) -> float:
        """Estimate the trial's seconds; prune it (over_budget, or oom when the speed probe
        ran out of memory) or refuse it (NoTimeLeft)."""
        try:
            est = cost.estimate(cfg, trainer.load_data(cfg.data))
        except DoesNotFit as exc:
            # PRUNED, as a trained trial that runs out of memory: samplers learn to avoid it
            reason = str(exc)
            set_status(trial, "oom", reason)
            if self.progress:
                self.progress.trial_start(trial.number, params, pinned=self.fixed, estimate=None)
            note_failure(trial, cfg, status="oom", reason=reason)
            raise optuna.TrialPruned(reason) from None
        if est.measured and self.progress and not self.progress.quiet:
            self.progress.message(
                f"measured {est.key.removeprefix('throughput:')}: "
                f"{est.images_per_second:.0f} training images/s"
            )
        trial.set_user_attr("estimated_seconds", round(est.seconds, 2))
        trial.set_user_attr("raw_estimated_seconds", round(est.raw_seconds, 2))
        trial.set_user_attr("images_per_second", round(est.images_per_second, 2))
        limit = self.limits.max_trial_seconds
        # Under a bracket pruner most trials stop at a low rung: the limit applies to what a
        # trial is expected to cost (search init keeps backbones by the same measure).
        per_trial = est.expected_seconds if cost.prior_share < 1.0 else est.seconds
        if limit is not None and per_trial > limit:
            reason = (
                f"over_budget: estimated {fmt_duration(per_trial)} per trial here "
                f"({est.images_per_second:.0f} images/s), over the {limit / 60:g} min limit"
            )
            set_status(trial, "over_budget", reason)
            if self.progress:
                self.progress.trial_start(
                    trial.number, params, pinned=self.fixed, estimate=est.seconds
                )
            note_failure(trial, cfg, status="over_budget", reason=reason)
            # PRUNED without intermediate values: samplers rank it below every trained trial.
            raise optuna.TrialPruned(reason)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            # pruning and early stopping end most trials early: what earlier trials ran
            # (under a bracket pruner, its expected share until trials have run)
            expected = est.expected_seconds
            if self._cheapest_raw is None or est.raw_seconds < self._cheapest_raw:
                self._cheapest_raw = est.raw_seconds
            if expected > left:
                reason = (
                    f"no_time: not run, estimated {fmt_duration(expected)} with "
                    f"{fmt_duration(left)} of the wall-clock budget left"
                )
                set_status(trial, "no_time", reason)
                raise NoTimeLeft(reason)
        return est.seconds


def with_local_pretrained(cfg: trainer.TrainConfig) -> trainer.TrainConfig:
    """``cfg`` with an S3 ``model.pretrained`` (a transfer from a study whose checkpoints are
    in a bucket) replaced by its local copy, for the trainer, which reads files."""
    source = cfg.model.pretrained
    if not artifacts.is_remote(source):
        return cfg
    return cfg.replace({"model.pretrained": str(artifacts.local_copy(source))})


def _local_resume(ref: str | None) -> str | None:
    """A retried trial's resume state as a local file: an S3 one is downloaded first. One that
    is not there any more is passed on as its local path: the trainer notes it and starts
    from epoch 1."""
    if not artifacts.is_remote(ref):
        return ref
    try:
        return str(artifacts.download(ref))
    except FileNotFoundError:
        return str(artifacts.S3Url.parse(ref).local)


class StateUpload:
    """Puts a trial's resume state (``trainer.train``'s ``last_checkpoint_path``) into the
    bucket after every epoch, on a background thread, so that a retry on another node resumes
    there. The state of epoch e is written after the reporter heard of epoch e; it is sent at
    the first step after it (with a state still being written, the older file is the one on
    disk: the trainer writes atomically)."""

    def __init__(self, local: Path) -> None:
        self.local = local
        self.pending = False
        self.sent: int | None = None  # st_mtime_ns of the last state sent
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="state-upload")
        self.future: Future | None = None

    def epoch_done(self) -> None:
        self.pending = True

    def step(self) -> None:
        if not self.pending or (self.future is not None and not self.future.done()):
            return
        try:
            mtime = self.local.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self.sent:
            return  # this epoch's state is not written yet
        self.pending, self.sent = False, mtime
        self.future = self.pool.submit(self._upload)

    def _upload(self) -> None:
        try:
            artifacts.upload(self.local)
        except FileNotFoundError:
            pass  # the run ended meanwhile
        except Exception as exc:  # a retry would resume from an older state, or epoch 1
            log.warning("could not put the resume state %s into S3: %s", self.local.name, exc)

    def close(self, *, keep: bool) -> None:
        """Wait for the last upload; remove the state from the bucket unless ``keep`` (the run
        did not end: a retry resumes from it)."""
        self.pool.shutdown(wait=True)
        if not keep:
            try:
                artifacts.remove(str(artifacts.S3Url.of_local(self.local)))
            except Exception as exc:
                log.warning(
                    "could not remove the resume state %s from S3: %s", self.local.name, exc
                )


def record_result(trial: optuna.Trial, result: trainer.TrainResult) -> None:
    """Everything later tables need, as JSON user attributes (tables never re-train)."""
    for key, value in result.summary().items():
        trial.set_user_attr(key, _finite_or_none(value))
    trial.set_user_attr(
        "curves", {k: [_finite_or_none(x) for x in v] for k, v in result.curves().items()}
    )
    trial.set_user_attr("setup_seconds", result.setup_seconds)
    for key, value in result.adjustments.items():
        trial.set_user_attr(key, value)  # oom_retries, micro_batch, resumed_from_epoch, ...
    if result.checkpoint:
        trial.set_user_attr("checkpoint", result.checkpoint)
    if result.val_predictions is not None:  # how precisely one run measures its accuracy
        trial.set_user_attr("val_images", len(result.val_predictions))


def _store_error(trial: optuna.Trial, cfg: trainer.TrainConfig, exc: Exception) -> None:
    reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    set_status(trial, "error", reason)
    trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
    note_failure(trial, cfg, status="error", reason=reason)


def set_status(trial: optuna.Trial, status: str, reason: str) -> None:
    trial.set_user_attr("status", status)
    trial.set_user_attr("reason", reason)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
