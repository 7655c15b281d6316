"""Named search spaces that turn an Optuna trial (or fixed values) into a TrainConfig.

Optuna is only a type here: ``import spaces`` does not import it.
"""

from spaces import _builtin  # noqa: F401  (registers the built-in spaces)
from spaces._params import Param, describe_distribution, parse_params
from spaces._space import (
    ParamDraw,
    SearchSpace,
    Traced,
    TracedPath,
    build_config,
    check_names,
    check_space,
    get_space,
    list_spaces,
    register_space,
    resolve_space,
    trace,
)

__all__ = [
    "Param",
    "ParamDraw",
    "SearchSpace",
    "Traced",
    "TracedPath",
    "build_config",
    "check_names",
    "check_space",
    "describe_distribution",
    "get_space",
    "list_spaces",
    "parse_params",
    "register_space",
    "resolve_space",
    "trace",
]
