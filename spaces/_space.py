"""Search spaces: named functions that draw dotted config parameters from a trial.

A space is a function ``space(s: ParamDraw) -> None`` registered with ``@register_space``. It
calls ``s.float("optim.lr", 1e-5, 1e-1, log=True)``, ``s.choice("loss.name", [...])`` and so
on, with plain Python ``if`` for conditional parameters. ``build_config`` runs it against an
Optuna trial, or against nothing at all (then every parameter takes its fixed or default
value), and returns a frozen ``TrainConfig``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

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
    ``params`` records every value the space used, fixed or drawn.
    """

    def __init__(self, trial: optuna.Trial | None = None, fixed: dict[str, Any] | None = None):
        self.trial = trial
        self.fixed = dict(fixed or {})
        self.params: dict[str, Any] = {}
        self._defaults = TrainConfig().to_flat()

    def _take(self, name: str, draw: Callable[[], Any]) -> Any:
        check_key(name)
        if name in self.fixed:
            value = self.fixed[name]
        elif self.trial is None:
            value = self._defaults[name]
        else:
            value = draw()
        self.params[name] = value
        return value

    def float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self._take(name, lambda: self.trial.suggest_float(name, low, high, log=log))

    def int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return self._take(name, lambda: self.trial.suggest_int(name, low, high, log=log))

    def choice(self, name: str, options: Sequence[Any]) -> Any:
        return self._take(name, lambda: self.trial.suggest_categorical(name, list(options)))


def build_config(
    space: str,
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
    draw = ParamDraw(trial, fixed)
    get_space(space)(draw)
    flat = {**(base or {}), **draw.params, **fixed}
    return TrainConfig.from_flat(flat), draw.params
