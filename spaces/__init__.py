"""Named search spaces that turn an Optuna trial (or fixed values) into a TrainConfig.

Optuna is only a type here: ``import spaces`` does not import it.
"""

from spaces import _builtin  # noqa: F401  (registers the built-in spaces)
from spaces._params import Param, SearchSpace, Traced, check_space, parse_params, trace
from spaces._space import (
    ParamDraw,
    build_config,
    get_space,
    list_spaces,
    register_space,
    resolve_space,
)

__all__ = [
    "Param",
    "ParamDraw",
    "SearchSpace",
    "Traced",
    "build_config",
    "check_space",
    "get_space",
    "list_spaces",
    "parse_params",
    "register_space",
    "resolve_space",
    "trace",
]
