"""Study files: TOML in ``studies/`` naming the data, space, budget, sampler and pruner.

A study file is data only. ``load_study(name)`` finds ``<name>.toml`` in the study
directories (``./studies``, then the ones shipped with hpsearch, then ``SEARCH_STUDIES``),
checks every key and type, and returns a frozen ``StudySpec``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

import spaces
from trainer import DataConfig, check_key
from trainer._registry import unknown_name_error

PACKAGE_STUDIES = Path(__file__).resolve().parent.parent / "studies"

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
}
_BUDGET_KEYS = {
    "epochs": int,
    "patience": int,
    "max_trial_minutes": (int, float),
    "wall": (str, int, float),
}
# data keys beyond DataConfig's fields: an environment variable that overrides root
_DATA_EXTRA_KEYS = {"root_env": str}


@dataclass(frozen=True)
class StudySpec:
    name: str
    path: Path
    space: str | None  # a registered base space; None when [params] is the whole space
    description: str = ""
    metric: str = "val_acc"
    direction: str = "maximize"
    storage: str | None = None
    data: dict[str, Any] = field(default_factory=dict)  # data.* keys
    root_env: str | None = None
    budget: dict[str, int] = field(default_factory=dict)  # epochs, patience
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    fixed: dict[str, Any] = field(default_factory=dict)  # dotted keys pinned for every trial
    enqueue: tuple[dict[str, Any], ...] = ()  # baseline configurations run first
    ablation: dict[str, Any] = field(default_factory=dict)
    params: tuple[spaces.Param, ...] = ()  # the [params] table, in file order
    raw_params: dict[str, Any] = field(default_factory=dict)  # as written, for the record

    @property
    def search_space(self) -> spaces.SearchSpace:
        return spaces.SearchSpace(self.space, self.params)

    def base_config(self, *, data_root: str | None = None) -> dict[str, Any]:
        """The study's dotted settings: data section and budget (before the space draws)."""
        base = {f"data.{k}": v for k, v in self.data.items()}
        root = data_root or (os.environ.get(self.root_env) if self.root_env else None)
        if root:
            base["data.root"] = str(Path(root).expanduser().resolve())
        elif "data.root" in base:
            base["data.root"] = str(_resolve_relative(base["data.root"], self.path))
        if "data.classes" in base:
            base["data.classes"] = list(base["data.classes"])
        if "epochs" in self.budget:
            base["train.epochs"] = self.budget["epochs"]
        if "patience" in self.budget:
            base["train.patience"] = self.budget["patience"]
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


def load_study(name: str) -> StudySpec:
    path = find_study_file(name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: malformed TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the study file: {exc}") from None
    return parse_study(raw, path=path)


def parse_study(raw: dict[str, Any], *, path: Path) -> StudySpec:
    where = str(path)
    _check_keys(raw, _TOP_KEYS, where)
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
    direction = raw.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise unknown_name_error("direction", direction, ["maximize", "minimize"])
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
    return StudySpec(
        name=raw.get("name", path.stem),
        path=path,
        space=raw.get("space"),
        description=raw.get("description", ""),
        metric=raw.get("metric", "val_acc"),
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


_ABLATION_KEYS = {"repeats": int, "baseline": (str, dict), "fixed": dict, "factors": dict}


def _check_ablation(section: dict[str, Any], where: str) -> None:
    _check_keys(section, _ABLATION_KEYS, where)
    for key in section.get("fixed", {}):
        _in_file(where, "fixed", lambda k=key: check_key(k))
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
