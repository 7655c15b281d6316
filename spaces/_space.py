"""Search spaces: named functions that draw dotted config parameters from a trial.

A space is a function ``space(s: ParamDraw) -> None`` registered with ``@register_space``. It
calls ``s.float("optim.lr", 1e-5, 1e-1, log=True)``, ``s.choice("loss.name", [...])`` and so
on, with plain Python ``if`` for conditional parameters. ``build_config`` runs it against an
Optuna trial, or against nothing at all (then every parameter takes its fixed or default
value), and returns a frozen ``TrainConfig``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spaces._params import Param
from trainer import TrainConfig, check_key
from trainer import check_names as check_config_names
from trainer._registry import Registry

MAX_TRACE_PATHS = 20_000  # branches of a space explored to find what it draws, and in what order

if TYPE_CHECKING:
    import optuna

_SPACES: Registry[Callable[[ParamDraw], None]] = Registry("search space")
register_space = _SPACES.register


def list_spaces() -> list[str]:
    return _SPACES.names()


def get_space(name: str) -> Callable[[ParamDraw], None]:
    return _SPACES.get(name)


class ParamDraw:
    """What a space function draws from: a trial, with fixed values taking precedence.

    Fixed values (``--set``, the study file, an ablation arm) are returned as they are and never
    shown to the sampler; without a trial, an unfixed parameter takes the TrainConfig default.
    ``overrides`` (a study file's ``[params]``) replace the distribution the space asks for.
    ``params`` records every value the space used, fixed or drawn; ``base`` holds the study's
    settings, which conditions (``when``) may read.
    """

    def __init__(
        self,
        trial: optuna.Trial | None = None,
        fixed: dict[str, Any] | None = None,
        *,
        base: dict[str, Any] | None = None,
        overrides: dict[str, Param] | None = None,
    ):
        self.trial = trial
        self.fixed = dict(fixed or {})
        self.base = dict(base or {})
        self.overrides = dict(overrides or {})
        self.params: dict[str, Any] = {}
        self.unseen_when: list[tuple[str, str]] = []  # (key, when-key not yet drawn)
        self._defaults = _defaults()

    def value(self, name: str) -> Any:
        """The value ``name`` has so far: drawn, fixed, a study setting, or the default."""
        for source in (self.params, self.fixed, self.base):
            if name in source:
                return source[name]
        return self._defaults[name]

    def _take(self, name: str, draw: Callable[[], Any]) -> Any:
        check_key(name)
        if name in self.overrides:
            return self.draw_param(self.overrides[name])
        if name in self.fixed:
            value = self.fixed[name]
        elif self.trial is None:
            value = self._defaults[name]
        else:
            value = draw()
        self.params[name] = value
        return value

    def draw_param(self, p: Param) -> Any:
        """Draw a ``[params]`` entry; where its ``when`` is false it keeps its default."""
        for key, _ in p.when:
            if key not in self.params and key not in self.fixed and key not in self.base:
                self.unseen_when.append((p.key, key))
        if not all(self.value(k) in allowed for k, allowed in p.when):
            return self.value(p.key)
        if p.key in self.fixed:
            value = self.fixed[p.key]
        elif self.trial is None and p.kind != "fixed":
            value = self._defaults[p.key]
        else:
            value = p.suggest(self.trial)
        self.params[p.key] = value
        return value

    def float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self._take(name, lambda: self.trial.suggest_float(name, low, high, log=log))

    def int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return self._take(name, lambda: self.trial.suggest_int(name, low, high, log=log))

    def choice(self, name: str, options: Sequence[Any]) -> Any:
        return self._take(name, lambda: self.trial.suggest_categorical(name, list(options)))


@functools.cache
def _defaults() -> dict[str, Any]:
    return TrainConfig().to_flat()


def resolve_space(space: str | SearchSpace) -> SearchSpace:
    """A registered space's name, or a SearchSpace (a study file's base + [params])."""
    if isinstance(space, SearchSpace):
        if space.base:
            get_space(space.base)
        return space
    get_space(space)  # unknown names fail here, with the options
    return SearchSpace(space)


def build_config(
    space: str | SearchSpace,
    trial: optuna.Trial | None = None,
    *,
    base: dict[str, Any] | None = None,
    fixed: dict[str, Any] | None = None,
) -> tuple[TrainConfig, dict[str, Any]]:
    """Draw a configuration from ``space``.

    ``base`` holds the study's settings (dataset, image size, epochs) that a space may search
    over; ``fixed`` pins parameters whatever the space says (``--set``, ablation arms).
    Returns the config and the parameters the space used.
    """
    fixed = dict(fixed or {})
    for key in [*(base or {}), *fixed]:
        check_key(key)
    space = resolve_space(space)
    draw = ParamDraw(trial, fixed, base=base, overrides=space.overrides)
    space(draw)
    flat = {**(base or {}), **draw.params, **fixed}
    return TrainConfig.from_flat(flat), draw.params


@dataclass(frozen=True)
class SearchSpace:
    """A named base space (or none) with ``[params]`` entries on top."""

    base: str | None = None
    params: tuple[Param, ...] = ()
    name: str = field(default="", compare=False)  # how to show it, e.g. "default + [params]"

    def __post_init__(self) -> None:
        if not self.name:
            label = self.base or ""
            if self.params:
                label = f"{label} + [params]" if label else "[params]"
            object.__setattr__(self, "name", label)

    @property
    def overrides(self) -> dict[str, Param]:
        return {p.key: p for p in self.params}

    def base_function(self) -> Callable[[Any], None] | None:
        return get_space(self.base) if self.base else None

    def __call__(self, s: Any) -> None:
        base = self.base_function()
        if base is not None:
            base(s)
        if not self.params:
            return
        drawn_by_base = base_keys(self.base) if self.base else frozenset()
        for p in self.params:
            if p.key not in drawn_by_base:
                s.draw_param(p)


def base_keys(space: str) -> frozenset[str]:
    """Every key a named space can draw, on any branch."""
    return _base_keys(space)


@functools.cache
def _base_keys(space: str) -> frozenset[str]:
    keys: set[str] = set()
    for path in trace(SearchSpace(space)):
        keys.update(path.order)
    return frozenset(keys)


@dataclass
class TracedPath:
    values: dict[str, Any]  # what one branch of the space drew, in order
    late_when: list[tuple[str, str]]  # (entry, when-key) evaluated before the when-key was drawn

    @property
    def order(self) -> list[str]:
        return list(self.values)


@dataclass
class Traced:
    """What a space draws for one key, over all branches."""

    kind: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    paths: int = 0  # branches that draw it


class _PathTrial:
    """Answers a space's suggestions along one branch: choice i takes option ``path[i]``
    (0 beyond the path); ranges take their low end. Records every distribution seen."""

    def __init__(self, path: list[int], seen: dict[str, Traced]) -> None:
        self.path, self.sizes, self.seen = path, [], seen

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        i = len(self.sizes)
        self.sizes.append(len(choices))
        self.seen.setdefault(name, Traced("choice", tuple(choices)))
        return choices[self.path[i] if i < len(self.path) else 0]

    def suggest_float(self, name, low, high, *, step=None, log=False):
        self.seen.setdefault(name, Traced("float", low=low, high=high, log=log, step=step))
        return low

    def suggest_int(self, name, low, high, *, step=1, log=False):
        self.seen.setdefault(name, Traced("int", low=low, high=high, log=log, step=step))
        return low


def trace(
    space: SearchSpace,
    *,
    fixed: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    seen: dict[str, Traced] | None = None,
) -> list[TracedPath]:
    """Run ``space`` along every branch of its categorical choices (up to MAX_TRACE_PATHS)."""
    seen = {} if seen is None else seen
    paths: list[TracedPath] = []
    stack: list[list[int]] = [[]]
    while stack and len(paths) < MAX_TRACE_PATHS:
        prefix = stack.pop()
        trial = _PathTrial(prefix, seen)
        draw = ParamDraw(trial, fixed, base=base, overrides=space.overrides)
        space(draw)
        for key in draw.params:
            if key in seen and key not in (fixed or {}):
                seen[key].paths += 1
        late = [(e, k) for e, k in draw.unseen_when if k in draw.params]
        paths.append(TracedPath(dict(draw.params), late))
        taken = [*prefix, *[0] * (len(trial.sizes) - len(prefix))]
        for i in range(len(trial.sizes) - 1, len(prefix) - 1, -1):
            for j in range(trial.sizes[i] - 1, 0, -1):
                stack.append([*taken[:i], j])
    return paths


def check_space(
    space: SearchSpace, *, fixed: dict[str, Any] | None = None, base: dict[str, Any] | None = None
) -> list[TracedPath]:
    """Refuse a ``when`` on a key that is never drawn before its entry."""
    paths = trace(space, fixed=fixed, base=base)
    known = set(fixed or {}) | set(base or {})
    drawn = {k for p in paths for k in p.order}
    for p in space.params:
        for key, _ in p.when:
            if key not in drawn and key not in known:
                raise ValueError(
                    f"[params] {p.key!r}: when names {key!r}, which is never drawn; "
                    f"add {key!r} to [params] before {p.key!r}, or pin it in [fixed]"
                )
    for path in paths:
        for entry, key in path.late_when:
            raise ValueError(
                f"[params] {entry!r}: when names {key!r}, which is drawn after it; list "
                f"{key!r} before {entry!r} in [params] (entries the base space does not draw "
                "come after it, in file order)"
            )
    return paths


def check_names(
    space: SearchSpace,
    *,
    base: dict[str, Any],
    fixed: dict[str, Any],
    queue: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
) -> TrainConfig:
    """Backbone, loss and optimizer names the space never draws: pinned ones and those of
    enqueued configurations (a drawn name is one of the space's own). ``search run`` and
    ``search space`` check them here; returns the configuration with only the pins."""
    cfg = build_config(space, None, base=base, fixed=fixed)[0]
    check_config_names(cfg)
    for item in queue:
        check_config_names(build_config(space, None, base=base, fixed={**fixed, **item})[0])
    return cfg
