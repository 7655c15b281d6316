"""``search space --study NAME``: every parameter of a study's resolved search space, its
distribution, its condition, and where it comes from (base space, ``[params]``, ``[fixed]``,
``--set``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import spaces
from search.study.studyfile import StudySpec
from spaces import TracedPath, describe_distribution


@dataclass(frozen=True)
class SpaceRow:
    key: str
    distribution: str
    condition: str  # "" when always drawn
    source: str


def space_rows(spec: StudySpec, cli_fixed: dict[str, Any] | None = None) -> list[SpaceRow]:
    """The resolved space, in the order a trial draws it; pins last."""
    space = spaces.resolve_space(spec.search_space)
    fixed = {**spec.fixed, **(cli_fixed or {})}
    base = spec.base_config()
    spaces.check_names(space, base=base, fixed=fixed, queue=spec.enqueue)
    seen: dict[str, spaces.Traced] = {}
    paths = spaces.trace(space, fixed=fixed, base=base, seen=seen)
    overrides = space.overrides
    order = list(dict.fromkeys(k for p in paths for k in p.order))
    rows = []
    for key in order:
        if key in fixed:
            continue
        p = overrides.get(key)
        if p is not None:
            dist = p.describe()
            cond = p.describe_when()
            source = "[params]"
        else:
            t = seen[key]
            dist = describe_distribution(t.kind, t.choices, t.low, t.high, t.log, t.step)
            cond = ""
            source = f"space {spec.space!r}"
        drawn_on = [path for path in paths if key in path.order]
        if not cond and len(drawn_on) < len(paths):
            cond = _explain(key, paths) or "on some branches (in the space's code)"
        rows.append(SpaceRow(key, dist, cond, source))
    for key, value in fixed.items():
        source = "--set" if key in (cli_fixed or {}) else "[fixed]"
        rows.append(SpaceRow(key, describe_distribution("fixed", (value,)), "", source))
    return rows


def _explain(key: str, paths: list[TracedPath]) -> str:
    """A condition of the form ``K in [values]`` that separates the branches drawing ``key``
    from the others, if one earlier choice does."""
    with_key = [p for p in paths if key in p.values]
    without = [p for p in paths if key not in p.values]
    for k in with_key[0].order[: with_key[0].order.index(key)]:
        yes = {_hashable(p.values.get(k)) for p in with_key}
        no = {_hashable(p.values.get(k)) for p in without}
        if yes and not yes & no:
            shown = ", ".join(str(v) for v in sorted(yes, key=str))
            return f"{k} in [{shown}]" if len(yes) > 1 else f"{k} = {shown}"
    return ""


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def format_space(spec: StudySpec, rows: list[SpaceRow]) -> str:
    title = f"search space of study {spec.name!r}: {spaces.resolve_space(spec.search_space).name}"
    width = max([len(r.key) for r in rows] + [9])
    dist_w = min(48, max([len(r.distribution) for r in rows] + [12]))
    lines = [
        title,
        f"{'parameter':<{width}}  {'distribution':<{dist_w}}  {'source':<14}  condition",
    ]
    for r in rows:
        lines.append(
            f"{r.key:<{width}}  {r.distribution:<{dist_w}}  {r.source:<14}  {r.condition}".rstrip()
        )
    return "\n".join(lines)
