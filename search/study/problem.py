"""The settings that define a study's problem, recorded when it is created and checked later.

Trials of one study are compared with each other and fed to one sampler, so they must measure
the same thing: the same data (a digest of the decoded pixels and labels), image size, split,
epoch budget, metric and search space. ``search run`` refuses to add trials to a study whose
recorded problem differs from the study file's, naming each difference and the fixes; with
``--force`` it goes on and records the change in the study's note. Pinning a searched parameter
(``--set optim.lr=...``) is not a change of problem: it is recorded per trial.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna

import trainer
from search.store import FINISHED, Storage
from search.store.lookup import stored_user_attrs

PROBLEM_ATTR = "problem"
CHANGES_ATTR = "problem_changes"
# data.* keys that decide which images are trained and validated on, and how big
_DATA_KEYS = ("data.name", "data.root", "data.image_size", "data.val_fraction", "data.split_seed", "data.classes")  # fmt: skip


def data_digest(data: trainer.ImageData) -> str:
    """A digest of the images and labels of every split (``ImageData.splits``: per split the
    count and a hash of its (file name and content, label) list), not of where they lie."""
    record = {k: (v["count"], v["hash"]) for k, v in sorted(data.splits.items())}
    return hashlib.sha256(json.dumps(record).encode()).hexdigest()[:16]


def describe_problem(
    cfg: trainer.TrainConfig,
    data: trainer.ImageData,
    *,
    metric: str,
    direction: str,
    space: str | None,
    params: dict[str, Any],
) -> dict[str, Any]:
    """The problem as a JSON-friendly dict (stored as a study user attribute)."""
    flat = cfg.to_flat()
    keys = [*_DATA_KEYS, *(k for k in flat if k.startswith("data.test"))]
    out: dict[str, Any] = {k: flat[k] for k in keys if k in flat}
    out["data.digest"] = data_digest(data)
    out["data.images"] = {k: v["count"] for k, v in data.splits.items()}
    out["train.epochs"] = flat["train.epochs"]
    if flat.get("data.epoch_repeats", 1) != 1:  # k passes an epoch: as long as k x the epochs
        # recorded only where set, so a study from before the setting is the same problem
        out["data.epoch_repeats"] = flat["data.epoch_repeats"]
    out["metric"] = f"{metric} ({direction})"
    out["space"] = space
    out["params"] = json.loads(json.dumps(params, default=str))
    return out


def differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each setting that changed. A moved data folder with the same
    images is not a change."""
    same_images = recorded.get("data.digest") == current.get("data.digest")
    out = []
    for key in sorted(set(recorded) | set(current)):
        if key in ("data.digest", "data.images") or (key == "data.root" and same_images):
            continue
        old, new = recorded.get(key), current.get(key)
        if old != new:
            out.append(f"{key}: {_short(old)} -> {_short(new)}")
    if not same_images and "data.root" not in {d.split(":")[0] for d in out}:
        before, after = recorded.get("data.images", {}), current.get("data.images", {})
        out.append(
            f"data: the images changed ({_counts(before)} -> {_counts(after)} train/val/test images)"
        )
    return out


def _counts(images: dict[str, int]) -> str:
    return "/".join(str(images.get(k, 0)) for k in ("train", "val", "test"))


def _short(value: Any) -> str:
    text = (
        json.dumps(value, sort_keys=True, default=str)
        if isinstance(value, dict | list)
        else repr(value)
    )
    return text if len(text) <= 80 else text[:77] + "..."


def check_problem(
    recorded: dict[str, Any] | None, current: dict[str, Any], *, study: str
) -> list[str]:
    """Raise a one-line ValueError when ``current`` differs from the recorded problem; the
    differences otherwise (empty when none, or when nothing was recorded)."""
    if not recorded:
        return []
    diff = differences(recorded, current)
    if diff:
        raise ValueError(
            f"study {study!r} was created with other settings ({'; '.join(diff)}); its trials "
            'would not be comparable. Give the study a new name (name = "..." in the study '
            "file), restore the settings, or pass --force to go on with the change recorded"
        )
    return diff


def stored_problem(storage: Storage, name: str) -> dict[str, Any] | None:
    """The problem recorded on study ``name`` in ``storage``; None when there is no such study
    (a missing SQLite file is not created)."""
    return (stored_user_attrs(storage, name) or {}).get(PROBLEM_ATTR)


def record_problem(
    study: optuna.Study, current: dict[str, Any], *, forced: bool
) -> list[dict[str, Any]] | None:
    """Store the problem on a new study; with ``forced``, store the new one and record the
    change. Returns every change recorded so far when this call added one, else None."""
    recorded = study.user_attrs.get(PROBLEM_ATTR)
    if recorded is None:
        study.set_user_attr(PROBLEM_ATTR, current)
        return None
    diff = differences(recorded, current)
    if not diff:
        return None
    if not forced:  # checked before anything was written; a race with another worker's run
        check_problem(recorded, current, study=study.study_name)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    changes = [*study.user_attrs.get(CHANGES_ATTR, []), {"from_trial": finished, "changes": diff}]
    study.set_user_attr(CHANGES_ATTR, changes)
    study.set_user_attr(PROBLEM_ATTR, current)
    return changes


__all__ = [
    "check_problem",
    "data_digest",
    "describe_problem",
    "differences",
    "record_problem",
    "stored_problem",
]
