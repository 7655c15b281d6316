"""The limits of a run, and the durations they are written in.

The study file's ``[budget]`` section holds two things, named apart in the code:

- ``RunLimits``: the wall clock of one ``search run`` (``--budget 30m``, ``budget.wall``) and
  the per-trial limit (``--max-trial-minutes``, ``budget.max_trial_minutes``), read here.
- The training length: ``budget.epochs`` and ``budget.patience`` become ``train.epochs`` and
  ``train.patience`` of every trial (``search.study.studyfile.TRAINING_LENGTH``).

How many trials a study holds is a third thing, the trial count (``--trials N``,
``n_trials``). What a trial costs is ``search.experiments.cost``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)")


def parse_duration(value: Any, *, key: str = "--budget") -> float:
    """``30m``, ``2h``, ``45s``, or a bare number of seconds -> seconds (> 0)."""
    seconds = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value.strip().lower())
        if m:
            seconds = float(m[1]) * _UNITS[m[2] or "s"]
    if seconds is None:
        raise ValueError(
            f"{key} must be a duration such as 30m, 2h, 45s or a number of seconds, "
            f"but got {value!r}"
        )
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{key} must be more than 0 seconds (e.g. 30m), but got {value!r}")
    return seconds


def parse_minutes(value: Any, *, key: str = "--max-trial-minutes") -> float:
    """A positive number of minutes (int or float) -> seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number of minutes such as 5 or 2.5, but got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{key} must be more than 0 minutes (e.g. 5), but got {value!r}")
    return float(value) * 60.0


@dataclass(frozen=True)
class RunLimits:
    """When a run stops starting trials, and which configurations it does not train."""

    wall_seconds: float | None = None  # this command's wall clock (--budget)
    max_trial_seconds: float | None = None  # a configuration estimated longer is not trained

    @property
    def costed(self) -> bool:
        """Whether trials need a cost estimate before they train."""
        return self.wall_seconds is not None or self.max_trial_seconds is not None


def resolve_run_limits(
    section: dict[str, Any],
    *,
    where: str,
    wall: str | float | None = None,
    max_trial_minutes: float | None = None,
) -> RunLimits:
    """The study file's ``[budget]`` wall / max_trial_minutes, overridden by the flags;
    ``where`` names the file in errors."""
    if wall is not None:
        wall_s = parse_duration(wall, key="--budget")
    elif "wall" in section:
        wall_s = parse_duration(section["wall"], key=f"{where} [budget] wall")
    else:
        wall_s = None
    if max_trial_minutes is not None:
        trial_s = parse_minutes(max_trial_minutes, key="--max-trial-minutes")
    elif "max_trial_minutes" in section:
        key = f"{where} [budget] max_trial_minutes"
        trial_s = parse_minutes(section["max_trial_minutes"], key=key)
    else:
        trial_s = None
    return RunLimits(wall_seconds=wall_s, max_trial_seconds=trial_s)


def fmt_duration(seconds: float) -> str:
    """45s, 2m05s, 1h02m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


__all__ = ["RunLimits", "fmt_duration", "parse_duration", "parse_minutes", "resolve_run_limits"]
