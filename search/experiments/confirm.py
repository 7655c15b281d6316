"""``search confirm``: retrain the search's top configurations with fresh seeds and report them
once on the held-out test split.

The best of N trials on one validation set is an optimistic number, and one run of it says
nothing of its spread. Confirmation retrains the top K distinct configurations R times each
with seeds the search never used (weight init, batch order, augmentation), on the same train
split with the same training length and early stopping on validation, then evaluates each run
once on validation and once on test. Seed r is shared by every configuration (a paired design, as in
``search ablate``).

Every run is a trial of the companion study ``<study>.confirm`` in the same storage, tagged
with its source trial and seed: the dashboard shows them, an interrupted confirmation resumes
with only the missing runs, and the final-results table is recomputed from storage alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

import trainer
from search.experiments import companion
from search.report.progress import Progress, fmt_params
from search.report.runs import ABLATION_SUFFIX, CONFIRM_SUFFIX, config_key, confirm_name
from search.store import Storage, artifacts
from search.store.lookup import stored_user_attrs
from search.study.refit import refit_of, refit_source
from search.study.splits import ATTR as SPLITS_ATTR
from search.study.splits import check_splits

DEFAULT_TOP = 3
DEFAULT_REPEATS = 5


@dataclass(frozen=True)
class Candidate:
    rank: int  # 1 = the search's best
    trial: int  # source trial number in the search study
    search_value: float  # its validation accuracy in the search (selected on that data)
    params: dict[str, Any]  # the searched parameters
    config: dict[str, Any]  # the full flat TrainConfig
    key: str

    def label(self, shown: list[str] | None = None) -> str:
        params = {k: v for k, v in self.params.items() if shown is None or k in shown}
        text = f"#{self.rank} trial {self.trial}"
        return f"{text}: {' '.join(fmt_params(params))}" if params else text


@dataclass
class ConfirmPlan:
    source: str
    storage: Storage
    candidates: list[Candidate]
    seeds: list[int]
    tta: bool | str  # False, True (seed 000's six views) or the views, comma-separated
    splits: dict[str, Any]
    search_trials: int  # complete trials the top K were selected from


def _check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be >= 1, but got {value}")


def plan_confirm(
    name: str,
    *,
    storage: Storage | str | None = None,
    top: int = DEFAULT_TOP,
    repeats: int | None = None,
    seeds: list[int] | None = None,
    tta: bool | str = False,
    data_root: str | None = None,
) -> ConfirmPlan:
    """Check everything (study, counts, seeds, data and its test split) before any run.
    ``storage``: a ``Storage``, or the URL ``--storage`` (resolved here once)."""
    from search.study.lookup import load_stored
    from trainer.evaluate import tta_key

    _check_count("--top", top)
    _check_count("--repeats", repeats)
    tta = tta_key(tta)  # the same views in any spelling are the same runs
    if seeds is not None:
        if not seeds:
            raise ValueError("--seeds needs at least one seed, e.g. --seeds 11 12 13")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"--seeds must be distinct, but got {seeds}")
        if repeats is not None and repeats != len(seeds):
            raise ValueError(
                f"--repeats {repeats} and {len(seeds)} --seeds disagree; give one of them"
            )
    for suffix in (CONFIRM_SUFFIX, ABLATION_SUFFIX):
        if name.endswith(suffix):
            raise ValueError(
                f"{name!r} is a companion study; confirm the search study "
                f"{name[: -len(suffix)]!r} instead"
            )
    study, store = load_stored(name, storage)
    candidates, n_complete = _top_configs(study, top)
    if data_root:
        root = str(trainer.TrainConfig.from_flat(candidates[0].config).data.root or "")
        override = {"data.root": data_root} if root else {}
        candidates = [
            Candidate(c.rank, c.trial, c.search_value, c.params, {**c.config, **override}, c.key)
            for c in candidates
        ]
    earlier = stored_user_attrs(store, confirm_name(name))
    recorded = study.user_attrs.get(SPLITS_ATTR) or (earlier or {}).get(SPLITS_ATTR)
    data = trainer.TrainConfig.from_flat(candidates[0].config).data
    splits = check_splits(recorded, data, study=name, need_test=True)
    for c in candidates:  # a transfer study's source checkpoint must still be there
        source = c.config.get("model.pretrained")
        if isinstance(source, str) and source != "imagenet":
            trainer.read_checkpoint(artifacts.local_copy(source))
    used = {int(c.config.get("train.seed", 0)) for c in candidates}
    if seeds is not None:
        clash = sorted(set(seeds) & used)
        if clash:
            raise ValueError(
                f"seed(s) {clash} trained the search's trials; confirmation needs fresh seeds: "
                "pick others"
            )
    else:
        stored = [s for s in (earlier or {}).get("seeds", []) if s not in used]
        seeds = _fresh_seeds(repeats or len(stored) or DEFAULT_REPEATS, used, stored)
    return ConfirmPlan(name, store, candidates, list(seeds), tta, splits, n_complete)


def _fresh_seeds(n: int, used: set[int], stored: list[int]) -> list[int]:
    """``stored`` (an earlier confirmation's, so a rerun keeps its runs) extended with the
    smallest positive seeds no search trial of the candidates trained with."""
    seeds = list(stored[:n])
    candidate = 1
    while len(seeds) < n:
        if candidate not in used and candidate not in seeds:
            seeds.append(candidate)
        candidate += 1
    return seeds


def _top_configs(study: optuna.Study, top: int) -> tuple[list[Candidate], int]:
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and "config" in t.user_attrs
    ]
    if not complete:
        raise ValueError(
            f"study {study.study_name!r} has no complete trial to confirm; run the search first"
        )
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(complete, key=lambda t: (-t.value if reverse else t.value, t.number))
    # A refit stands in for its search trial, in that trial's rank (search.study.refit).
    ranked = [refit_of(study, t.number) or t for t in ranked if refit_source(t) is None]
    out: list[Candidate] = []
    seen: set[str] = set()
    for t in ranked:
        key = config_key(t.user_attrs["config"])
        if key in seen:  # the same configuration twice (an enqueued one, a repeated draw)
            continue
        seen.add(key)
        out.append(
            Candidate(
                len(out) + 1, t.number, float(t.value), dict(t.params), t.user_attrs["config"], key
            )
        )
        if len(out) == top:
            break
    return out, len(complete)


def open_confirm(plan: ConfirmPlan) -> optuna.Study:
    shown = varying_params([c.params for c in plan.candidates])
    attrs = {
        "confirm_of": plan.source,
        "seeds": plan.seeds,
        "top": len(plan.candidates),
        "tta": plan.tta,
        "search_trials": plan.search_trials,
        SPLITS_ATTR: plan.splits,
        "candidates": [{**asdict(c), "label": c.label(shown)} for c in plan.candidates],
    }
    return companion.open_companion(confirm_name(plan.source), plan.storage, attrs)


def varying_params(params: list[dict[str, Any]]) -> list[str] | None:
    """The parameters whose values differ between configurations (None: show all)."""
    if len(params) < 2:
        return None
    keys = list(dict.fromkeys(k for p in params for k in p))
    varying = [k for k in keys if len({json.dumps(p.get(k)) for p in params}) > 1]
    return varying or None


def run_confirm(plan: ConfirmPlan, *, progress: Progress | None = None) -> optuna.Study:
    """Train every missing (configuration, seed); finished runs are never redone."""
    optuna.logging.set_verbosity(logging.ERROR)
    progress = progress or Progress()
    study = open_confirm(plan)
    done = companion.done_runs(study, "config_key", "seed", "tta")
    # seed-major: an interrupted confirmation has whole pairs for the paired differences
    todo = [
        (r, seed, c)
        for r, seed in enumerate(plan.seeds)
        for c in plan.candidates
        if (c.key, seed, plan.tta) not in done
    ]
    total = len(plan.candidates) * len(plan.seeds)
    progress.wanted = total
    progress.message(
        f"confirm {confirm_name(plan.source)!r}: top {len(plan.candidates)} configurations x "
        f"{len(plan.seeds)} seeds {plan.seeds}, {total - len(todo)} already done; "
        f"storage {plan.storage.masked}"
    )
    finished = total - len(todo)
    for repeat, seed, c in todo:
        cfg = trainer.TrainConfig.from_flat({**c.config, "train.seed": seed})
        tags = {
            "config_key": c.key,
            "source_trial": c.trial,
            "rank": c.rank,
            "seed": seed,
            "repeat": repeat,
            "tta": plan.tta,
        }
        last = companion.run_fixed(
            study, cfg, tags=tags, label=f"#{c.rank} trial {c.trial} seed {seed}",
            progress=progress, storage=plan.storage,
            after=companion.split_evaluator(cfg.data, tta=plan.tta),
        )  # fmt: skip
        finished += 1
        attrs = last.user_attrs
        if "test_acc" in attrs:
            text = f"val {attrs['eval_val_acc']:.4f} test {attrs['test_acc']:.4f}"
        else:
            text = f"{last.state.name.lower()}: {attrs.get('reason', '')}"
        progress.trial_end(finished, f"#{c.rank} trial {c.trial} seed {seed}: {text}", "")
    return study


__all__ = [
    "DEFAULT_REPEATS",
    "DEFAULT_TOP",
    "Candidate",
    "ConfirmPlan",
    "open_confirm",
    "plan_confirm",
    "run_confirm",
]
