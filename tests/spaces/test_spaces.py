"""Search spaces: fixed trials, conditional parameters, fixed values and defaults."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import FixedTrial

import spaces
from trainer import TrainConfig

# Every parameter any built-in space may draw, so a FixedTrial can answer them all.
ALL = {
    "data.batch_size": 32,
    "optim.name": "sgd",
    "optim.lr": 0.01,
    "optim.weight_decay": 1e-4,
    "optim.momentum": 0.85,
    "optim.nesterov": True,
    "optim.rho": 0.03,
    "model.dropout": 0.2,
    "loss.name": "ls_focal",
    "loss.smoothing": 0.07,
    "loss.gamma": 1.5,
    "sched.name": "none",
    "model.backbone": "small_cnn",
    "model.width": 16,
    "model.strategy": "partial",
    "model.freeze_stages": 2,
}
OPTIM_ONLY = {"optim.momentum", "optim.nesterov", "optim.rho"}
LOSS_ONLY = {"loss.smoothing", "loss.gamma"}


# ... with values each space offers (FixedTrial checks them against the choices)
PER_SPACE = {
    "resnets": {"model.backbone": "resnet18", "sched.name": "cosine"},
    "transfer": {"model.backbone": "resnet18", "loss.name": "focal"},
}


def draw(space: str, **values) -> tuple[TrainConfig, dict]:
    return spaces.build_config(space, FixedTrial({**ALL, **PER_SPACE.get(space, {}), **values}))


@pytest.fixture
def quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    yield
    optuna.logging.set_verbosity(level)


def test_builtin_spaces_are_registered():
    assert {"default", "digits", "transfer", "resnets"} <= set(spaces.list_spaces())


def test_fixed_trial_builds_the_config():
    cfg, params = draw("digits", **{"optim.name": "sgd", "loss.name": "focal"})
    assert cfg.data.batch_size == 32
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("sgd", 0.01, 1e-4)
    assert (cfg.optim.momentum, cfg.optim.nesterov) == (0.85, True)
    assert cfg.model.dropout == 0.2
    assert (cfg.loss.name, cfg.loss.gamma) == ("focal", 1.5)
    assert cfg.loss.smoothing == TrainConfig().loss.smoothing  # not drawn for focal
    assert cfg.sched.name == "none"
    assert (cfg.model.backbone, cfg.model.width) == ("small_cnn", 16)
    assert params == {
        "data.batch_size": 32,
        "optim.name": "sgd",
        "optim.lr": 0.01,
        "optim.weight_decay": 1e-4,
        "optim.momentum": 0.85,
        "optim.nesterov": True,
        "model.dropout": 0.2,
        "loss.name": "focal",
        "loss.gamma": 1.5,
        "sched.name": "none",
        "model.backbone": "small_cnn",
        "model.width": 16,
    }


def test_base_settings_reach_the_config_and_fixed_wins():
    cfg, params = spaces.build_config(
        "digits",
        FixedTrial(ALL),
        base={"data.image_size": 8, "train.epochs": 2, "optim.lr": 0.5},
        fixed={"data.batch_size": 16},
    )
    assert (cfg.data.image_size, cfg.train.epochs) == (8, 2)
    assert cfg.optim.lr == 0.01  # the space draws over the study's base value
    assert cfg.data.batch_size == 16 and params["data.batch_size"] == 16


@pytest.mark.parametrize(
    ("space", "optim", "expected"),
    [
        ("default", "sgd", {"optim.momentum", "optim.nesterov"}),
        ("default", "adam", set()),
        ("default", "adamw", set()),
        ("default", "sam_sgd", {"optim.momentum", "optim.nesterov", "optim.rho"}),
        ("default", "sam_adam", {"optim.rho"}),
        ("digits", "sgd", {"optim.momentum", "optim.nesterov"}),
        ("digits", "sam_adam", {"optim.rho"}),
        ("resnets", "sam_sgd", {"optim.momentum", "optim.nesterov", "optim.rho"}),
        ("transfer", "adamw", set()),
    ],
)
def test_optimizer_parameters_only_where_they_apply(space, optim, expected):
    cfg, params = draw(space, **{"optim.name": optim})
    assert set(params) & OPTIM_ONLY == expected
    assert cfg.optim.name == optim
    if "optim.rho" in expected:
        assert cfg.optim.rho == 0.03
    else:
        assert cfg.optim.rho == TrainConfig().optim.rho


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        ("ce", set()),
        ("label_smoothing", {"loss.smoothing"}),
        ("focal", {"loss.gamma"}),
        ("ls_focal", {"loss.smoothing", "loss.gamma"}),
    ],
)
@pytest.mark.parametrize("space", ["default", "digits", "resnets"])
def test_loss_parameters_only_where_they_apply(space, loss, expected):
    cfg, params = draw(space, **{"loss.name": loss})
    assert set(params) & LOSS_ONLY == expected
    assert cfg.loss.name == loss


@pytest.mark.parametrize(
    ("backbone", "has_width"), [("small_cnn", True), ("seed_cnn", False), ("mlp", False)]
)
def test_width_only_for_small_cnn_in_digits(backbone, has_width):
    cfg, params = draw("digits", **{"model.backbone": backbone})
    assert ("model.width" in params) is has_width
    assert cfg.model.width == (16 if has_width else TrainConfig().model.width)


@pytest.mark.parametrize(
    ("strategy", "has_freeze"), [("partial", True), ("full", False), ("linear_probe", False)]
)
def test_freeze_stages_only_for_partial_in_transfer(strategy, has_freeze):
    cfg, params = draw("transfer", **{"model.strategy": strategy})
    assert ("model.freeze_stages" in params) is has_freeze
    assert cfg.model.freeze_stages == (2 if has_freeze else 0)


def _conditions_hold(params: dict) -> None:
    optim, loss = params["optim.name"], params["loss.name"]
    assert ("optim.momentum" in params) == (optim in ("sgd", "sam_sgd"))
    assert ("optim.nesterov" in params) == (optim in ("sgd", "sam_sgd"))
    assert ("optim.rho" in params) == optim.startswith("sam_")
    assert ("loss.gamma" in params) == (loss in ("focal", "ls_focal"))
    assert ("loss.smoothing" in params) == (loss in ("label_smoothing", "ls_focal"))
    if "model.width" in params or params.get("model.backbone") == "small_cnn":
        assert params["model.backbone"] == "small_cnn"
    if "model.strategy" in params:
        assert ("model.freeze_stages" in params) == (params["model.strategy"] == "partial")


@pytest.mark.parametrize("space", ["default", "digits", "transfer", "resnets"])
def test_sampled_trials_respect_the_conditions(space, quiet_optuna):
    """Real trials from an in-memory study: what the sampler saw is what the space used."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_optims, seen_losses = set(), set()
    for _ in range(40):
        trial = study.ask()
        cfg, params = spaces.build_config(space, trial)
        assert trial.params == params
        _conditions_hold(params)
        flat = cfg.to_flat()
        assert all(flat[k] == v for k, v in params.items())
        seen_optims.add(params["optim.name"])
        seen_losses.add(params["loss.name"])
        study.tell(trial, 0.5)
    assert len(seen_optims) >= 3 and len(seen_losses) >= 3  # the branches were exercised


def test_fixed_values_are_not_suggested(quiet_optuna):
    study = optuna.create_study()
    trial = study.ask()
    fixed = {"optim.lr": 0.0123, "model.backbone": "mlp", "optim.name": "sgd", "train.seed": 4}
    cfg, params = spaces.build_config("digits", trial, fixed=fixed)
    for key in ("optim.lr", "model.backbone", "optim.name"):
        assert key not in trial.params
        assert key not in trial.distributions
        assert params[key] == fixed[key]
    assert "model.width" not in trial.params and "model.width" not in params  # mlp
    assert "optim.momentum" in trial.params  # still drawn: the fixed optimizer is sgd
    assert "loss.name" in trial.params and "model.dropout" in trial.params
    assert (cfg.optim.lr, cfg.model.backbone, cfg.optim.name) == (0.0123, "mlp", "sgd")
    assert cfg.train.seed == 4  # fixed keys the space never draws still apply
    assert set(trial.params) == set(params) - set(fixed)


def test_no_trial_gives_the_defaults():
    defaults = TrainConfig()
    cfg, params = spaces.build_config("digits")
    assert cfg == defaults
    flat = defaults.to_flat()
    assert params and all(flat[k] == v for k, v in params.items())
    cfg, params = spaces.build_config("digits", None, base={"data.image_size": 8})
    assert cfg == defaults.replace({"data.image_size": 8})
    cfg, params = spaces.build_config("digits", None, fixed={"loss.name": "focal"})
    assert params["loss.name"] == "focal" and "loss.gamma" in params
    assert cfg.loss.gamma == defaults.loss.gamma


def test_unknown_space_lists_options():
    with pytest.raises(ValueError) as info:
        spaces.build_config("digit")
    msg = str(info.value)
    assert "Did you mean 'digits'" in msg
    for name in spaces.list_spaces():
        assert name in msg


@pytest.mark.parametrize("where", ["base", "fixed"])
def test_unknown_key_is_refused_before_drawing(where):
    with pytest.raises(ValueError, match="Did you mean 'optim.lr'"):
        spaces.build_config("digits", FixedTrial(ALL), **{where: {"optim.lrr": 0.1}})


def test_bad_fixed_value_is_a_value_error():
    with pytest.raises(ValueError, match="model.dropout must be in \\[0, 1\\), but got 1.5"):
        spaces.build_config("digits", fixed={"model.dropout": 1.5})


def test_custom_space_registration():
    name = "test_only_space"
    if name not in spaces.list_spaces():

        @spaces.register_space(name)
        def _space(s: spaces.ParamDraw) -> None:
            if s.choice("optim.name", ["sgd", "adam"]) == "sgd":
                s.float("optim.momentum", 0.5, 0.9)
            s.int("train.epochs", 1, 3)

    cfg, params = spaces.build_config(name, FixedTrial({"optim.name": "adam", "train.epochs": 2}))
    assert params == {"optim.name": "adam", "train.epochs": 2}
    assert cfg.train.epochs == 2
    with pytest.raises(ValueError, match="registered twice"):
        spaces.register_space(name)(lambda s: None)
