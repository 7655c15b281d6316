"""Study files: TOML in ``studies/`` naming the data, space, budget, sampler and pruner.

A study file is data only. ``load_study(name)`` finds ``<name>.toml`` in the study
directories (``SEARCH_STUDIES``, then ``./studies``, then the ones shipped with hpsearch; the
first match wins),
checks every key and type, and returns a frozen ``StudySpec``.

Profiles: ``[profiles.quick]`` holds sections that override the top level when the study is
loaded with ``profile="quick"`` (``--profile quick``): ``data``, ``budget``, ``fixed``,
``params`` and ``ablation`` merge key by key (``ablation.factors`` is replaced whole),
``sampler`` and ``pruner`` merge unless the profile names another algorithm, and ``space``,
``enqueue`` and ``description`` are replaced. A key the profile pins in ``[fixed]`` leaves the
top level's ``[params]`` and vice versa. A profile's trials live in the study
``NAME.PROFILE``, never mixed with the full recipe's.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import spaces
from trainer import DataConfig, TrainConfig, check_key
from trainer._registry import unknown_name_error
from trainer.config import MONITORS

# The shipped studies, as package data: found the same way from a source checkout, an
# editable install and a wheel.
PACKAGE_STUDIES = Path(str(importlib.resources.files("studies")))

_TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "description": str,
    "space": str,
    "metric": str,
    "direction": str,
    "storage": str,
    "data": dict,
    "budget": dict,
    "sampler": dict,
    "pruner": dict,
    "fixed": dict,
    "params": dict,
    "enqueue": list,
    "ablation": dict,
    "profiles": dict,
}
# what a [profiles.NAME] table may override; name, metric, direction and storage stay the file's
_PROFILE_KEYS = {
    k: _TOP_KEYS[k]
    for k in (
        "description", "space", "data", "budget", "sampler", "pruner", "fixed", "params",
        "enqueue", "ablation",
    )
}  # fmt: skip
_PROFILE_NAME = re.compile(r"[A-Za-z0-9_-]+")
# companion studies are NAME.ablation and NAME.confirm: a profile must not take their names
_RESERVED_PROFILES = ("ablation", "confirm")
_BUDGET_KEYS = {
    "epochs": int,
    "patience": int,
    "max_trial_minutes": (int, float),
    "wall": (str, int, float),
    "refit": (int, float),  # the share of the wall clock that trains the winner longer
}
# The [budget] keys that set how long every trial trains (the training length), and the
# settings they become; wall and max_trial_minutes are the run's limits (search.study.budget).
TRAINING_LENGTH = {"epochs": "train.epochs", "patience": "train.patience"}
# data keys beyond DataConfig's fields: an environment variable that overrides root
_DATA_EXTRA_KEYS = {"root_env": str}


@dataclass(frozen=True)
class StudySpec:
    name: str
    path: Path
    space: str | None  # a registered base space; None when [params] is the whole space
    description: str = ""
    metric: str = "val_acc"  # a trainer.config.MONITORS name: reported, pruned on, optimised
    direction: str = "maximize"  # the metric's: MONITORS[metric]
    storage: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # data.* keys
    root_env: str | None = None
    # the [budget] section as written: the training length and the run limits
    budget: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    fixed: dict[str, Any] = field(default_factory=dict)  # dotted keys pinned for every trial
    enqueue: tuple[dict[str, Any], ...] = ()  # baseline configurations run first
    ablation: dict[str, Any] = field(default_factory=dict)
    params: tuple[spaces.Param, ...] = ()  # the [params] table, in file order
    raw_params: dict[str, Any] = field(default_factory=dict)  # as written, for the record
    profile: str | None = None  # the [profiles.NAME] applied; name is then "FILE.NAME"
    profiles: tuple[str, ...] = ()  # every profile the file defines

    @property
    def search_space(self) -> spaces.SearchSpace:
        return spaces.SearchSpace(self.space, self.params)

    def base_config(self, *, data_root: str | None = None) -> dict[str, Any]:
        """The study's dotted settings: the data section and the training length (before the
        space draws)."""
        base = {f"data.{k}": v for k, v in self.data.items()}
        root = data_root or (os.environ.get(self.root_env) if self.root_env else None)
        if root:
            base["data.root"] = str(Path(root).expanduser().resolve())
        elif "data.root" in base:
            base["data.root"] = str(_resolve_relative(base["data.root"], self.path))
        if "data.classes" in base:
            base["data.classes"] = list(base["data.classes"])
        for key, setting in TRAINING_LENGTH.items():
            if key in self.budget:
                base[setting] = self.budget[key]
        if self.metric != "val_acc":  # train.monitor's default
            # the study's metric also picks each trial's kept epoch (a --set may change that)
            base["train.monitor"] = self.metric
        return base

    def check_data_root(self, base: dict[str, Any]) -> None:
        """A missing data folder is named with where to put it, before anything runs."""
        root = base.get("data.root")
        if root is None or Path(root).exists():
            return
        how = "pass --data DIR" + (f" or set {self.root_env}" if self.root_env else "")
        raise ValueError(
            f"data for study {self.name!r} not found at {root}: put the images there "
            f"(one subfolder per class), or {how}"
        )


def study_dirs() -> list[Path]:
    dirs = [Path.cwd() / "studies", PACKAGE_STUDIES]
    extra = os.environ.get("SEARCH_STUDIES")
    if extra:
        dirs = [Path(p) for p in extra.split(os.pathsep) if p] + dirs
    seen, out = set(), []
    for d in dirs:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def list_study_files() -> dict[str, Path]:
    """Study name -> file, the first directory winning."""
    found: dict[str, Path] = {}
    for d in reversed(study_dirs()):
        if d.is_dir():
            found.update({p.stem: p for p in sorted(d.glob("*.toml"))})
    return dict(sorted(found.items()))


def find_study_file(name: str) -> Path:
    if name.endswith(".toml") or os.sep in name:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"study file {name!r} does not exist")
        return path
    files = list_study_files()
    if name not in files:
        raise unknown_name_error("study", name, files)
    return files[name]


def load_study(name: str, *, profile: str | None = None) -> StudySpec:
    """The study file ``name`` (a name from ``list_study_files`` or a path), checked, with
    ``[profiles.PROFILE]`` applied when ``profile`` is given."""
    path = find_study_file(name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: malformed TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the study file: {exc}") from None
    return parse_study(raw, path=path, profile=profile)


def parse_study(raw: dict[str, Any], *, path: Path, profile: str | None = None) -> StudySpec:
    """Check a parsed study file (every profile too) and return its spec, with ``profile``
    applied when given. Raises ValueError/TypeError with a one-line message."""
    where = str(path)
    _check_keys(raw, _TOP_KEYS, where)
    profiles = raw.get("profiles", {})
    top = {k: v for k, v in raw.items() if k != "profiles"}
    spec = _parse(top, path=path, where=where)
    names = tuple(profiles)
    chosen = None
    for pname, table in profiles.items():
        pwhere = f"{where} [profiles.{pname}]"
        _check_profile(pname, table, pwhere)
        merged = _parse(merge_profile(top, table), path=path, where=pwhere)
        if pname == profile:
            chosen = merged
    if profile is None:
        return replace(spec, profiles=names)
    if chosen is None:
        listed = ", ".join(names) if names else "none"
        raise ValueError(
            f"{where} has no profile {profile!r}; its profiles: {listed} "
            "(add a [profiles.NAME] table, or leave out --profile for the full recipe)"
        )
    name = f"{chosen.name}.{profile}"
    return replace(chosen, name=name, profile=profile, profiles=names)


def _check_profile(name: str, table: Any, where: str) -> None:
    if not _PROFILE_NAME.fullmatch(name) or name in _RESERVED_PROFILES:
        raise ValueError(
            f"{where}: a profile name is letters, digits, _ and - (not "
            f"{' or '.join(_RESERVED_PROFILES)}), but got {name!r}"
        )
    if not isinstance(table, dict):
        raise TypeError(f"{where} must be a table of sections, but got {table!r}")
    _check_keys(table, _PROFILE_KEYS, where)


def merge_profile(top: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """The study file as the profile sees it: the top level with the profile's sections on
    top (see the module docstring for which sections merge and which are replaced)."""
    out = dict(top)
    for key, value in profile.items():
        if key in ("data", "budget"):
            out[key] = {**top.get(key, {}), **value}
        elif key in ("sampler", "pruner"):
            old = top.get(key, {})
            same = value.get("name", old.get("name")) == old.get("name")
            out[key] = {**old, **value} if same else dict(value)
        elif key == "ablation":
            old = top.get(key, {})
            merged = {**old, **value}
            if "fixed" in value and isinstance(value["fixed"], dict):
                merged["fixed"] = {**old.get("fixed", {}), **value["fixed"]}
            out[key] = merged
        elif key not in ("fixed", "params"):
            out[key] = value  # space, enqueue, description: replaced
    fixed, params = profile.get("fixed", {}), profile.get("params", {})
    if "fixed" in profile or "params" in profile:
        # the profile's word on a key wins: pinned there, it leaves the top level's [params];
        # searched there, it leaves the top level's [fixed]
        out["fixed"] = {k: v for k, v in top.get("fixed", {}).items() if k not in params}
        out["fixed"].update(fixed)
        out["params"] = {k: v for k, v in top.get("params", {}).items() if k not in fixed}
        out["params"].update(params)
        if not out["params"]:
            del out["params"]
    return out


def _parse(raw: dict[str, Any], *, path: Path, where: str) -> StudySpec:
    data = dict(raw.get("data", {}))
    root_env = data.pop("root_env", None)
    if root_env is not None and not isinstance(root_env, str):
        raise TypeError(f"{where}: [data] root_env must be a string, but got {root_env!r}")
    data_keys = {f.name for f in DataConfig.__dataclass_fields__.values()}
    bad = [k for k in data if k not in data_keys]
    if bad:
        raise unknown_name_error(f"key in {where} [data]", bad[0], [*data_keys, *_DATA_EXTRA_KEYS])
    budget = raw.get("budget", {})
    _check_keys(budget, _BUDGET_KEYS, f"{where} [budget]")
    _check_refit(budget.get("refit", 0), f"{where} [budget]")
    fixed = raw.get("fixed", {})
    for key in fixed:
        _in_file(where, "[fixed]", lambda k=key: check_key(k))
    enqueue = raw.get("enqueue", [])
    for i, item in enumerate(enqueue):
        if not isinstance(item, dict):
            raise TypeError(f"{where}: [[enqueue]] entry {i} must be a table of dotted keys")
        for key in item:
            _in_file(where, f"[[enqueue]] entry {i}", lambda k=key: check_key(k))
    for section in ("sampler", "pruner"):
        if section in raw and not isinstance(raw[section].get("name"), str):
            raise ValueError(f'{where}: [{section}] needs a name, e.g. name = "tpe"')
    _check_ablation(raw.get("ablation", {}), f"{where} [ablation]")
    metric, direction = _metric_and_direction(raw, where)
    if "space" not in raw and "params" not in raw:
        raise ValueError(
            f'{where}: the study file needs a space (e.g. space = "default") or a [params] table'
        )
    params = _in_file(where, "", lambda: spaces.parse_params(raw.get("params", {})))
    for p in params:
        if p.key in fixed:
            raise ValueError(
                f"{where}: {p.key!r} is both in [params] and in [fixed]; keep one of them"
            )
    space = spaces.SearchSpace(raw.get("space"), params)
    _in_file(where, "", lambda: spaces.resolve_space(space))
    settings = {f"data.{k}": v for k, v in data.items()}
    _in_file(where, "", lambda: spaces.check_space(space, fixed=dict(fixed), base=settings))
    _check_enqueue(space, enqueue, fixed=dict(fixed), base=settings, where=where)
    return StudySpec(
        name=raw.get("name", path.stem),
        path=path,
        space=raw.get("space"),
        description=raw.get("description", ""),
        metric=metric,
        direction=direction,
        storage=raw.get("storage"),
        data=data,
        root_env=root_env,
        budget=dict(budget),
        sampler=dict(raw.get("sampler", {"name": "tpe"})),
        pruner=dict(raw.get("pruner", {"name": "median"})),
        fixed=dict(fixed),
        enqueue=tuple(dict(e) for e in enqueue),
        ablation=dict(raw.get("ablation", {})),
        params=params,
        raw_params=dict(raw.get("params", {})),
    )


def _metric_and_direction(raw: dict[str, Any], where: str) -> tuple[str, str]:
    """The study's metric (one the trainer measures every epoch) and its direction, which
    follows from it: a direction against the metric would optimise the wrong way."""
    metric = raw.get("metric", "val_acc")
    if metric not in MONITORS:
        raise unknown_name_error(f"metric in {where}", metric, MONITORS)
    best = MONITORS[metric]
    direction = raw.get("direction", best)
    if direction not in ("maximize", "minimize"):
        raise unknown_name_error("direction", direction, ["maximize", "minimize"])
    if direction != best:
        better = "higher" if best == "maximize" else "lower"
        raise ValueError(
            f"{where}: direction = {direction!r} contradicts metric = {metric!r} ({better} is "
            f"better); leave out direction, it follows the metric"
        )
    return metric, direction


def _check_refit(share: float, where: str) -> None:
    """``refit``: a share of the wall clock, at least 0 (no refit) and below 1 (some search)."""
    if not (math.isfinite(share) and 0 <= share < 1):
        raise ValueError(
            f"{where}: refit must be a share of the wall clock from 0 (no refit) to below 1, "
            f"e.g. 0.25, but got {share!r}"
        )


def _check_enqueue(
    space: spaces.SearchSpace,
    enqueue: list[dict[str, Any]],
    *,
    fixed: dict[str, Any],
    base: dict[str, Any],
    where: str,
) -> None:
    """An enqueued configuration must be one the space can draw: Optuna refuses a value outside
    a categorical's choices only when the trial starts, and a pinned key would be ignored."""
    if not enqueue:
        return
    seen: dict[str, spaces.Traced] = {}
    spaces.trace(space, fixed=fixed, base=base, seen=seen)
    for i, item in enumerate(enqueue):
        at = f"{where} [[enqueue]] entry {i}"
        _in_file(at, "", lambda it=item: TrainConfig.from_flat({**fixed, **it}))
        for key, value in item.items():
            if key in fixed:
                if fixed[key] != value:
                    raise ValueError(
                        f"{at}: {key} = {value!r}, but [fixed] pins it to {fixed[key]!r}; "
                        "drop it from the entry or from [fixed]"
                    )
                continue
            t = seen.get(key)
            pinned = space.overrides.get(key)
            if pinned is not None and pinned.kind == "fixed":  # a one-element list: never drawn
                t = spaces.Traced("choice", pinned.choices)
            if t is None:
                continue  # a key the space does not draw is set on the trial as it is
            if t.kind == "choice":
                ok = value in t.choices
            else:
                ok = not isinstance(value, bool) and isinstance(value, int | float)
                ok = ok and t.low <= value <= t.high
                if ok and t.kind == "int":
                    ok = float(value).is_integer()
                if ok and t.step:  # Optuna would warn and use a value off its grid
                    ok = math.isclose(round((value - t.low) / t.step) * t.step, value - t.low)
            if not ok:
                raise ValueError(
                    f"{at}: {key} = {value!r} is outside what the space draws "
                    f"({_describe(t)}); widen [params] {key!r} or change the entry"
                )


def _describe(t: spaces.Traced) -> str:
    from spaces import describe_distribution

    return describe_distribution(t.kind, t.choices, t.low, t.high, t.log, t.step)


_ABLATION_KEYS = {
    "repeats": int,
    "baseline": (str, dict),
    "fixed": dict,
    "factors": dict,
    "loss_metric": str,
}


def _check_ablation(section: dict[str, Any], where: str) -> None:
    _check_keys(section, _ABLATION_KEYS, where)
    for key in section.get("fixed", {}):
        _in_file(where, "fixed", lambda k=key: check_key(k))
    metric = section.get("loss_metric")
    if metric is not None:
        from search.study.metrics import LOSS_METRICS

        if metric not in LOSS_METRICS:
            raise unknown_name_error(f"loss_metric in {where}", metric, LOSS_METRICS)
    baseline = section.get("baseline")
    if isinstance(baseline, dict):
        for key in baseline:
            _in_file(where, "baseline", lambda k=key: check_key(k))
    elif baseline is not None and baseline not in ("best", "defaults"):
        raise ValueError(
            f"{where}: baseline must be best, defaults or a table, but got {baseline!r}"
        )
    for key, values in section.get("factors", {}).items():
        _in_file(where, "factors", lambda k=key: check_key(k))
        if not isinstance(values, list) or len(values) < 2:
            raise TypeError(
                f"{where}: factor {key} needs a list of >= 2 values, but got {values!r}"
            )


def _check_keys(table: dict[str, Any], schema: dict[str, type], where: str) -> None:
    if not isinstance(table, dict):
        raise TypeError(f"{where} must be a table, but got {table!r}")
    for key, value in table.items():
        if key not in schema:
            raise unknown_name_error(f"key in {where}", key, schema)
        want = schema[key]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise TypeError(
                f"{where}: {key} must be {names}, but got {value!r} ({type(value).__name__})"
            )


def _in_file(where: str, section: str, check):
    try:
        return check()
    except (ValueError, TypeError) as exc:
        prefix = f"{where} {section}:" if section else f"{where}:"
        raise type(exc)(f"{prefix} {exc}") from None


def _resolve_relative(root: str, study_path: Path) -> Path:
    p = Path(root).expanduser()
    return p if p.is_absolute() else (Path.cwd() / p).resolve()
