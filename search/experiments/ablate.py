"""``search ablate``: one-factor-at-a-time ablations with repeats, stored as an Optuna study.

Arms: a baseline configuration, and for each factor each value with everything else held at
the baseline. Repeat r of every arm trains with seed r, so arms share initial weights and batch
order per repeat (a paired design). Every run is a trial of the companion study
``<study>.ablation`` in the same storage, tagged with factor, value and repeat: the dashboard
shows them, an interrupted ablation resumes with only the missing runs, and tables are
recomputed from storage alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import optuna

import spaces
import trainer
from search.experiments import companion
from search.experiments.transfer import resolve_pretrained
from search.report.progress import Progress
from search.report.runs import companion_name, config_key
from search.store import FINISHED, Storage
from search.store.lookup import stored_user_attrs
from search.study.metrics import DEFAULT_LOSS_METRIC
from search.study.refit import best_trial
from search.study.splits import check_splits
from search.study.studyfile import StudySpec
from search.study.values import parse_value


@dataclass(frozen=True)
class Arm:
    factor: str  # dotted key, or "baseline"
    value: Any
    config: dict[str, Any]  # the full flat TrainConfig

    @property
    def key(self) -> str:
        """Identical configurations share runs (a factor value equal to the baseline's)."""
        return config_key(self.config)


@dataclass
class AblationPlan:
    spec: StudySpec
    storage: Storage
    baseline: dict[str, Any]
    arms: list[Arm]
    repeats: int
    baseline_source: str
    test: bool = False  # also evaluate every run once on the test split (--test)
    # --test --tta: each run on the test split also with these test-time views (a key of
    # trainer.evaluate.tta_key), its TTA's share as a table of its own
    tta: bool | str = False


def parse_factor(text: str) -> tuple[str, list[Any]]:
    """``optim.lr=1e-5,1e-4`` -> ("optim.lr", [1e-05, 0.0001])."""
    if "=" not in text:
        raise ValueError(f"--factor expects KEY=V1,V2,..., e.g. optim.lr=1e-4,1e-3, got {text!r}")
    key, raw = (p.strip() for p in text.split("=", 1))
    trainer.check_key(key)
    values = [parse_value(v.strip()) for v in raw.split(",") if v.strip()]
    if len(values) < 2:
        raise ValueError(f"--factor {key} needs at least two values, but got {raw!r}")
    return key, values


def plan_ablation(
    spec: StudySpec,
    *,
    factors: dict[str, list[Any]] | None = None,
    repeats: int | None = None,
    baseline: str | dict[str, Any] | None = None,
    storage: Storage | str | None = None,
    data_root: str | None = None,
    fixed: dict[str, Any] | None = None,
    test: bool = False,
    tta: bool | str = False,
) -> AblationPlan:
    """Resolve factors, repeats and the baseline (CLI first, then the study's [ablation]).
    ``storage``: a ``Storage``, or the URL ``--storage`` (resolved here once)."""
    section = spec.ablation
    factors = factors or {k: list(v) for k, v in section.get("factors", {}).items()}
    if not factors:
        raise ValueError(
            f"no ablation factors: pass --factor KEY=V1,V2 or add [ablation.factors] to {spec.path}"
        )
    repeats = repeats if repeats is not None else int(section.get("repeats", 3))
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, but got {repeats}")
    store = Storage.open(storage, study_url=spec.storage)
    store.check()
    base = spec.base_config(data_root=data_root)
    spec.check_data_root(base)
    pinned = {**spec.fixed, **section.get("fixed", {}), **(fixed or {})}
    pinned = resolve_pretrained(pinned, store)
    baseline = baseline if baseline is not None else section.get("baseline", "defaults")
    source = baseline if isinstance(baseline, str) else "given values"
    if baseline == "best":
        cfg = _best_config(spec.name, store)
        asked = {**section.get("fixed", {}), **(fixed or {})}
        cfg = cfg.replace(_on_best(base, pinned, asked=asked, moved=data_root is not None))
    else:
        given = baseline if isinstance(baseline, dict) else {}
        if isinstance(baseline, str) and baseline != "defaults":
            raise ValueError(
                f"--baseline must be best, defaults or KEY=VALUE pairs, but got {baseline!r}"
            )
        cfg, _ = spaces.build_config(spec.search_space, None, base=base, fixed={**pinned, **given})
    trainer.check_backbone(cfg.model.backbone)
    flat = cfg.to_flat()
    arms = [Arm("baseline", "baseline", flat)]
    for key, values in factors.items():
        trainer.check_key(key)
        for value in values:
            arm_cfg = cfg.replace({key: value})  # validates the value
            if key == "model.backbone":
                trainer.check_backbone(value)
            arms.append(Arm(key, value, arm_cfg.to_flat()))
    trainer.load_data(cfg.data)
    if test:  # no test split, or one that changed since an earlier --test: refuse now
        earlier = _earlier_splits(spec.name, store)
        check_splits(earlier, cfg.data, study=companion_name(spec.name), need_test=True)
    if tta and not test:
        raise ValueError("an ablation's --tta is measured on the test split: add --test")
    from trainer.evaluate import tta_key

    return AblationPlan(spec, store, flat, arms, repeats, source, test, tta_key(tta))


def _on_best(
    base: dict[str, Any], pinned: dict[str, Any], *, asked: dict[str, Any], moved: bool
) -> dict[str, Any]:
    """What changes on the best trial's configuration for ``--baseline best``: the study's
    training settings as the file says now (``train.*`` of the budget and ``[fixed]``), the
    data folder when ``--data`` moved it, and every key the ablation pins (``--set``,
    ``[ablation.fixed]``), in any section: a pin is what the user asked for, never dropped."""
    out = {k: v for k, v in {**base, **pinned}.items() if k.startswith("train.")}
    if moved:
        out["data.root"] = base["data.root"]
    out.update({k: pinned[k] for k in asked})  # resolved (study:NAME weights -> a file)
    return out


def _earlier_splits(name: str, storage: Storage) -> dict[str, Any] | None:
    """The split recorded by the search study, else by an earlier ``--test`` ablation."""
    for study in (name, companion_name(name)):
        splits = (stored_user_attrs(storage, study) or {}).get("data_splits")
        if splits:
            return splits
    return None


def _best_config(study_name: str, storage: Storage) -> trainer.TrainConfig:
    from search.study.lookup import load_stored

    study, _ = load_stored(study_name, storage)
    try:
        best = best_trial(study)  # the refit of the best search trial, once there is one
    except ValueError:
        raise ValueError(
            f"study {study_name!r} has no complete trial to use as the baseline; "
            "run it first or pass --baseline defaults"
        ) from None
    return trainer.TrainConfig.from_flat(best.user_attrs["config"])


def open_companion(plan: AblationPlan) -> optuna.Study:
    attrs = {
        "ablation_of": plan.spec.name,
        "baseline": plan.baseline,
        "baseline_source": plan.baseline_source,
        "repeats": plan.repeats,
        "arms": [{"factor": a.factor, "value": a.value, "arm": a.key} for a in plan.arms],
        # which accuracy the loss table reports (seed 003 reported the best epoch's)
        "loss_metric": plan.spec.ablation.get("loss_metric", DEFAULT_LOSS_METRIC),
    }
    if plan.test:
        attrs["data_splits"] = trainer.data.split_record(
            trainer.TrainConfig.from_flat(plan.baseline).data
        )
    return companion.open_companion(companion_name(plan.spec.name), plan.storage, attrs)


def run_ablation(plan: AblationPlan, *, progress: Progress | None = None) -> optuna.Study:
    """Train every missing (arm, repeat); finished runs are never redone."""
    optuna.logging.set_verbosity(logging.ERROR)
    progress = progress or Progress()
    study = open_companion(plan)
    done = {
        (t.user_attrs.get("arm"), t.user_attrs.get("repeat"))
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if t.value is None or _evaluated_as_asked(t, plan)
    }
    unique: dict[str, Arm] = {}
    for arm in plan.arms:
        unique.setdefault(arm.key, arm)
    todo = [
        (arm, r) for arm in unique.values() for r in range(plan.repeats) if (arm.key, r) not in done
    ]
    total = len(unique) * plan.repeats
    progress.wanted = total
    progress.message(
        f"ablation {companion_name(plan.spec.name)!r}: {len(unique)} configurations x "
        f"{plan.repeats} repeats, {total - len(todo)} already done; "
        f"storage {plan.storage.masked}"
    )
    finished = total - len(todo)
    for arm, repeat in todo:
        last = _run_one(study, arm, repeat, progress, plan.storage, test=plan.test, tta=plan.tta)
        finished += 1
        value = f"{last.value:.4f}" if last.value is not None else last.state.name.lower()
        progress.trial_end(finished, f"{_label(arm)} repeat {repeat}: {value}", "")
    return study


def _evaluated_as_asked(trial: optuna.trial.FrozenTrial, plan: AblationPlan) -> bool:
    """Whether a finished run holds what this ablation reports: with ``--test`` its test
    accuracy, with ``--tta`` that with the same views too. A run from before is run again."""
    attrs = trial.user_attrs
    if plan.test and "test_acc" not in attrs:
        return False
    return not plan.tta or attrs.get("tta_views") == plan.tta


def _label(arm: Arm) -> str:
    return "baseline" if arm.factor == "baseline" else f"{arm.factor}={arm.value}"


def _run_one(
    study: optuna.Study,
    arm: Arm,
    repeat: int,
    progress: Progress,
    storage: Storage,
    *,
    test: bool = False,
    tta: bool | str = False,
) -> optuna.trial.FrozenTrial:
    cfg = trainer.TrainConfig.from_flat({**arm.config, "train.seed": repeat})
    tags = {"arm": arm.key, "factor": arm.factor, "value": arm.value, "repeat": repeat}
    return companion.run_fixed(
        study, cfg, tags=tags, label=_label(arm), progress=progress, storage=storage,
        after=companion.split_evaluator(cfg.data, also_tta=tta) if test else None,
    )  # fmt: skip
