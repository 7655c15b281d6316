"""Values typed on the command line: ``optim.lr=1e-3``, ``--factor optim.lr=1e-4,1e-3``."""

from __future__ import annotations

import ast
from typing import Any


def parse_value(raw: str) -> Any:
    """``1e-3`` -> 0.001, ``true`` -> True, ``none`` -> None, ``adam`` -> "adam"."""
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # a bare word such as adam or resnet18


def parse_assignment(text: str) -> tuple[str, Any]:
    """``optim.lr=1e-3`` -> ("optim.lr", 0.001); values are Python/TOML-like literals."""
    if "=" not in text:
        raise ValueError(f"--set expects KEY=VALUE, e.g. optim.lr=1e-3, but got {text!r}")
    from trainer import check_key  # torch loads with it: not for `search --help`

    key, raw = (part.strip() for part in text.split("=", 1))
    check_key(key)
    return key, parse_value(raw)


def parse_assignments(items: list[str] | None) -> dict[str, Any]:
    return dict(parse_assignment(item) for item in items or [])
