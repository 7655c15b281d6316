"""Named search spaces that turn an Optuna trial (or fixed values) into a TrainConfig.

Optuna is only a type here: ``import spaces`` does not import it.
"""

from spaces import _builtin  # noqa: F401  (registers the built-in spaces)
from spaces._space import ParamDraw, build_config, get_space, list_spaces, register_space

__all__ = ["ParamDraw", "build_config", "get_space", "list_spaces", "register_space"]
