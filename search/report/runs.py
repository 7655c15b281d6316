"""The runs of the companion studies, read from storage alone: ``<study>.ablation`` (the arms
of ``search ablate``) and ``<study>.confirm`` (the runs of ``search confirm``). Tables and
exports are computed from these records; the commands that make the runs name their studies
with the same functions.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna
from optuna.trial import TrialState

from search.store import FINISHED

ABLATION_SUFFIX = ".ablation"


def companion_name(study: str) -> str:
    return study + ABLATION_SUFFIX


CONFIRM_SUFFIX = ".confirm"


def confirm_name(study: str) -> str:
    return study + CONFIRM_SUFFIX


def config_key(config: dict[str, Any]) -> str:
    """The key runs are stored under (an ablation's ``arm``, a confirmation's ``config_key``):
    flat configurations equal up to ``train.seed`` are one configuration and share runs."""
    blob = json.dumps({k: v for k, v in config.items() if k != "train.seed"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def collect_runs(study: optuna.Study) -> list[dict[str, Any]]:
    """From storage only: one record per arm with its per-repeat runs, in plan order."""
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        a = t.user_attrs
        by_arm.setdefault(a["arm"], {})[a["repeat"]] = {
            "repeat": a["repeat"],
            "max_train_acc": a.get("max_train_acc"),
            "max_val_acc": a.get("best_val_acc"),
            "final_val_acc": a.get("final_val_acc"),
            "train_seconds": a.get("train_seconds"),
            "epochs_run": a.get("epochs_run"),
            "status": a.get("status"),
            "curves": a.get("curves", {}),
            "test_acc": a.get("test_acc"),
            "test_acc_tta": a.get("test_acc_tta"),  # --test --tta: the same model, with views
            "tta_views": a.get("tta_views"),
            "param_count": a.get("param_count"),
            "trainable_param_count": a.get("trainable_param_count"),
            "val_images": a.get("val_images"),  # None for runs stored before it was kept
        }
    return [
        {**arm, "runs": [by_arm.get(arm["arm"], {})[r] for r in sorted(by_arm.get(arm["arm"], {}))]}
        for arm in study.user_attrs.get("arms", [])
    ]


def collect_confirm(study: optuna.Study) -> list[dict[str, Any]]:
    """From storage only: per candidate (in search rank order) its label, search value, and
    runs ``{"seed", "val_acc", "test_acc"}`` of the current TTA setting, by seed."""
    attrs = study.user_attrs
    tta = attrs.get("tta", False)
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    diverged: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        a = t.user_attrs
        if a.get("tta", False) != tta:
            continue
        if t.state == TrialState.PRUNED or "test_acc" not in a:
            diverged[a.get("config_key")] = diverged.get(a.get("config_key"), 0) + 1
            continue
        runs.setdefault(a["config_key"], {})[a["seed"]] = {
            "seed": a["seed"],
            "repeat": a.get("repeat"),
            "val_acc": a["eval_val_acc"],
            "test_acc": a["test_acc"],
            "best_val_acc": a.get("best_val_acc"),
            "epochs_run": a.get("epochs_run"),
            "train_seconds": a.get("train_seconds"),
        }
    seeds = attrs.get("seeds", [])
    out = []
    for c in attrs.get("candidates", []):
        by_seed = runs.get(c["key"], {})
        out.append(
            {
                "rank": c["rank"],
                "trial": c["trial"],
                "name": f"#{c['rank']} trial {c['trial']}",
                "label": c.get("label", f"#{c['rank']} trial {c['trial']}"),
                "search_value": c["search_value"],
                "runs": [by_seed[s] for s in seeds if s in by_seed],
                "diverged": diverged.get(c["key"], 0),
            }
        )
    return out
