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
from typing import TYPE_CHECKING, Any

from spaces._params import Param, SearchSpace
from trainer import TrainConfig, check_key
from trainer._registry import Registry

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
