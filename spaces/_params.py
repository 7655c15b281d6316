"""Search spaces written as data: a study file's ``[params]`` table, on top of a named space.

Each entry of the table is one dotted config key::

    "model.backbone" = ["small_cnn", "resnet18"]                  # categorical
    "optim.lr"       = { low = 1e-4, high = 1e-2, log = true }    # float range
    "model.freeze_stages" = { low = 1, high = 3 }                 # int range (int bounds)
    "optim.momentum" = { low = 0.8, high = 0.99, when = { "optim.name" = ["sgd"] } }
    "loss.name"      = { choices = ["ce", "focal"], when = { ... } }

An entry replaces the distribution that the base space draws for its key, keeping the base
space's own conditions; a key the base space never draws is drawn after it, in file order.
``when`` makes an entry conditional on values drawn (or pinned) before it; where it is false the
key is not drawn and keeps its default. A one-element list pins the key, like ``[fixed]``.

Pure data to draws: no Optuna at import time (a trial is only duck-typed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer import TrainConfig, check_backbone, check_key, list_losses, list_optimizers
from trainer._registry import unknown_name_error

_RANGE_KEYS = ("low", "high", "log", "step", "when")
_CHOICE_KEYS = ("choices", "when")


@dataclass(frozen=True)
class Param:
    """One ``[params]`` entry: a distribution over a dotted key, optionally conditional."""

    key: str
    kind: str  # "choice", "float", "int" or "fixed" (a one-element list)
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def applies(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) in allowed for k, allowed in self.when)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "fixed":
            return self.choices[0]
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        return describe_distribution(
            self.kind, self.choices, self.low, self.high, self.log, self.step
        )

    def describe_when(self) -> str:
        return " and ".join(
            f"{k} in [{', '.join(map(_show, allowed))}]" if len(allowed) > 1 else f"{k} = {_show(allowed[0])}"
            for k, allowed in self.when
        )  # fmt: skip


def describe_distribution(
    kind: str,
    choices: tuple[Any, ...] = (),
    low: float | None = None,
    high: float | None = None,
    log: bool = False,
    step: float | None = None,
) -> str:
    if kind == "fixed":
        return f"fixed {_show(choices[0])}"
    if kind == "choice":
        return f"categorical [{', '.join(map(_show, choices))}]"
    text = f"{kind} [{_show(low)}, {_show(high)}]"
    return text + (" log" if log else "") + (f" step {_show(step)}" if step else "")


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# -- parsing ------------------------------------------------------------------------------


def parse_params(table: dict[str, Any]) -> tuple[Param, ...]:
    """Check a ``[params]`` table and turn it into ``Param`` entries, in file order.

    Raises ValueError/TypeError with a one-line message that names the key and the fix.
    """
    if not isinstance(table, dict):
        raise TypeError(f"[params] must be a table of dotted keys, but got {table!r}")
    return tuple(_parse_entry(key, value) for key, value in table.items())


def _parse_entry(key: str, value: Any) -> Param:
    try:
        check_key(key)
    except ValueError as exc:
        raise ValueError(f"[params]: {exc}") from None
    where = f"[params] {key!r}"
    if isinstance(value, list):
        return _choice_param(key, value, (), where)
    if not isinstance(value, dict):
        raise TypeError(
            f"{where} must be a list of choices or a table {{ low = ..., high = ... }}, "
            f"but got {value!r}; to pin one value use [{value!r}] or [fixed]"
        )
    when = _parse_when(value.get("when", {}), where)
    if "choices" in value:
        _allowed(value, _CHOICE_KEYS, where)
        if not isinstance(value["choices"], list):
            raise TypeError(f"{where}: choices must be a list, but got {value['choices']!r}")
        return _choice_param(key, value["choices"], when, where)
    _allowed(value, _RANGE_KEYS, where)
    if "low" not in value or "high" not in value:
        raise ValueError(
            f"{where} needs low and high (e.g. {{ low = 1e-4, high = 1e-2 }}) or a list of choices"
        )
    low, high = value["low"], value["high"]
    log, step = value.get("log", False), value.get("step")
    for name, v in (("low", low), ("high", high), ("step", step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise TypeError(f"{where}: {name} must be a number, but got {v!r}")
    if not isinstance(log, bool):
        raise TypeError(f"{where}: log must be true or false, but got {log!r}")
    if not low < high:
        raise ValueError(f"{where}: low must be < high, but got low={low} high={high}; swap them")
    if log and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0, but got low={low}; raise low")
    if step is not None and not step > 0:
        raise ValueError(f"{where}: step must be > 0, but got {step}")
    if log and step is not None:
        raise ValueError(f"{where}: a log range cannot have a step; drop one of them")
    default = TrainConfig().to_flat()[key]
    takes_float = isinstance(default, float)
    if not takes_float and (isinstance(default, bool) or not isinstance(default, int)):
        raise TypeError(f"{where}: {key} is not a number; give a list of choices instead")
    ints = all(isinstance(v, int) for v in (low, high, step) if v is not None)
    if not takes_float and not ints:
        raise TypeError(
            f"{where}: {key} takes integers, so it cannot draw from a float range "
            f"(low={low}, high={high}); give integer low and high"
        )
    for v in (low, high):
        _check_value(key, v, where)
    kind = "float" if takes_float else "int"
    cast = float if kind == "float" else int
    return Param(
        key, kind, low=cast(low), high=cast(high), log=log,
        step=None if step is None else cast(step), when=when,
    )  # fmt: skip


def _choice_param(key: str, values: list[Any], when: tuple, where: str) -> Param:
    if not values:
        raise ValueError(f"{where}: the list of choices is empty; give at least one value")
    for v in values:
        if isinstance(v, dict | list):
            raise TypeError(f"{where}: choices must be plain values, but got {v!r}")
        _check_value(key, v, where)
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"{where}: the choices {values} repeat a value; list each once")
    return Param(key, "fixed" if len(values) == 1 else "choice", choices=tuple(values), when=when)


def _check_value(key: str, value: Any, where: str) -> None:
    """A value the config (or a registry of names) would refuse fails here, not in a trial."""
    try:
        TrainConfig.from_flat({key: value})
        if key == "model.backbone":
            check_backbone(value)
        elif key == "loss.name" and value not in list_losses():
            raise unknown_name_error("loss", value, list_losses())
        elif key == "optim.name" and value not in list_optimizers():
            raise unknown_name_error("optimizer", value, list_optimizers())
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from None


def _parse_when(when: Any, where: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(when, dict):
        raise TypeError(f'{where}: when must be a table, e.g. when = {{ "optim.name" = ["sgd"] }}')
    out = []
    for key, allowed in when.items():
        try:
            check_key(key)
        except ValueError as exc:
            raise ValueError(f"{where} when: {exc}") from None
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if not allowed:
            raise ValueError(f"{where} when {key!r}: the list of values is empty")
        out.append((key, tuple(allowed)))
    return tuple(out)


def _allowed(table: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    for k in table:
        if k not in keys:
            raise unknown_name_error(f"key in {where}", k, keys)


# -- drawing ------------------------------------------------------------------------------
