"""Study files that define their own search space: ``[params]`` entries over a base space,
conditions, bad input, ``search space`` and ``search run --dry-run``."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import TINY_DIGITS
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

import spaces
from search.cli import main
from search.study.studyfile import load_study

# the tiny digits study without its [fixed] section: the space is the study file's own
BASE = TINY_DIGITS.split("[fixed]")[0]


def params_study(body: str, *, space: str | None = None) -> str:
    head = BASE.replace('space = "digits"\n', f'space = "{space}"\n' if space else "")
    return head + "\n[params]\n" + body


def draw_many(name: str, n: int = 40) -> list[dict]:
    spec = load_study(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(spaces.build_config(spec.search_space, trial, base=spec.base_config())[1])
        study.tell(trial, 0.0)
    return out


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_each_entry_form_becomes_its_distribution(write_study):
    write_study(
        "own",
        params_study(
            '"model.backbone" = ["small_cnn", "mlp"]\n'
            '"optim.lr" = { low = 1e-4, high = 1e-2, log = true }\n'
            '"model.dropout" = { low = 0.0, high = 0.5, step = 0.1 }\n'
            '"train.seed" = { low = 1, high = 3 }\n'
            '"optim.name" = ["adam"]\n'
        ),
    )
    spec = load_study("own")
    assert spec.space is None
    study = optuna.create_study()
    trial = study.ask()
    cfg, params = spaces.build_config(spec.search_space, trial, base=spec.base_config())
    d = trial.distributions
    assert d["model.backbone"] == CategoricalDistribution(["small_cnn", "mlp"])
    assert d["optim.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert d["model.dropout"] == FloatDistribution(0.0, 0.5, step=0.1)
    assert d["train.seed"] == IntDistribution(1, 3)
    # a one-element list pins the key: used, but never shown to the sampler
    assert "optim.name" not in d and params["optim.name"] == "adam" and cfg.optim.name == "adam"
    # without [params] for them, the rest keep their defaults: [params] is the whole space
    assert set(params) == {
        "model.backbone",
        "optim.lr",
        "model.dropout",
        "train.seed",
        "optim.name",
    }


def test_an_entry_narrows_the_base_space_and_keeps_its_conditions(write_study):
    write_study(
        "narrow",
        params_study(
            '"optim.name" = ["sgd", "adam"]\n'
            '"optim.momentum" = { low = 0.85, high = 0.95 }\n'
            '"data.batch_size" = [32, 64]\n'
            '"train.seed" = [0, 1, 2]\n',
            space="digits",
        ),
    )
    draws = draw_many("narrow")
    assert {d["optim.name"] for d in draws} == {"sgd", "adam"}
    assert {d["data.batch_size"] for d in draws} == {32, 64}
    for d in draws:
        # momentum is drawn where the base space draws it (SGD only), from the narrowed range
        assert ("optim.momentum" in d) == (d["optim.name"] == "sgd")
        if "optim.momentum" in d:
            assert 0.85 <= d["optim.momentum"] <= 0.95
        assert d["train.seed"] in (0, 1, 2)  # a key the base space does not draw is added
        assert "model.dropout" in d  # the base space's other parameters stay


def test_when_draws_a_parameter_only_where_its_condition_holds(write_study):
    write_study(
        "cond",
        params_study(
            '"optim.name" = ["sgd", "adam"]\n'
            '"optim.momentum" = { low = 0.8, high = 0.99, when = { "optim.name" = "sgd" } }\n'
            '"loss.name" = ["ce", "focal"]\n'
            '"loss.gamma" = { choices = [1.0, 2.0], when = { "loss.name" = ["focal"] } }\n'
        ),
    )
    draws = draw_many("cond")
    spec = load_study("cond")
    for d in draws:
        assert ("optim.momentum" in d) == (d["optim.name"] == "sgd")
        assert ("loss.gamma" in d) == (d["loss.name"] == "focal")
        cfg, _ = spaces.build_config(spec.search_space, optuna.trial.FixedTrial(d))
        if d["optim.name"] == "adam":
            assert cfg.optim.momentum == 0.9  # not drawn: the default
    assert {d["optim.name"] for d in draws} == {"sgd", "adam"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('"optim.lrr" = [0.1, 0.2]\n', ["optim.lrr", "optim.lr"]),
        ('"optim.lr" = []\n', ["optim.lr", "empty"]),
        ('"optim.lr" = { low = 0.1, high = 0.01 }\n', ["optim.lr", "low must be < high"]),
        ('"optim.lr" = { low = 0.0, high = 0.1, log = true }\n', ["optim.lr", "low > 0"]),
        ('"data.batch_size" = { low = 8.0, high = 64.5 }\n', ["data.batch_size", "integer"]),
        ('"model.backbone" = ["small_cnn", "resnet9000"]\n', ["resnet9000", "backbone"]),
        ('"loss.name" = ["ce", "focall"]\n', ["focall", "focal"]),
        ('"optim.name" = ["adamm"]\n', ["adamm", "optimizer"]),
        ('"data.batch_size" = [0, 32]\n', ["data.batch_size", ">= 1"]),
        ('"optim.lr" = { low = 1e-4, hihg = 1e-2 }\n', ["hihg", "high"]),
        (
            '"optim.momentum" = { low = 0.8, high = 0.9, when = { "optim.name" = "sgd" } }\n',
            ["optim.momentum", "optim.name", "never drawn"],
        ),
        (
            '"optim.momentum" = { low = 0.8, high = 0.9, when = { "optim.name" = "sgd" } }\n'
            '"optim.name" = ["sgd", "adam"]\n',
            ["optim.momentum", "optim.name", "drawn after"],
        ),
    ],
)
def test_bad_entries_are_one_line_errors_naming_file_and_key(
    write_study, storage_url, capsys, body, words
):
    path = write_study("bad", params_study(body))
    rc = main(["run", "--study", "bad", "--trials", "1", "-q", "--storage", storage_url])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and "\n" not in err
    assert str(path) in err
    for word in words:
        assert word in err
    assert not Path(storage_url.removeprefix("sqlite:///")).exists()  # nothing written


def test_params_and_fixed_on_one_key_is_refused(write_study):
    write_study("both", params_study('"optim.lr" = [0.1, 0.01]\n') + '[fixed]\n"optim.lr" = 0.1\n')
    with pytest.raises(ValueError, match="both in \\[params\\] and in \\[fixed\\]"):
        load_study("both")


def test_a_when_on_a_base_space_key_drawn_after_the_entry_is_refused(write_study):
    write_study(
        "late",
        params_study(
            '"optim.lr" = { low = 1e-3, high = 1e-2, when = { "model.backbone" = "mlp" } }\n',
            space="digits",
        ),
    )
    with pytest.raises(ValueError, match="model.backbone.*drawn after it"):
        load_study("late")


def test_search_space_prints_every_parameter_with_its_source(write_study, capsys):
    write_study(
        "show",
        params_study(
            '"optim.lr" = { low = 1e-3, high = 1e-2, log = true }\n'
            '"optim.momentum" = { low = 0.8, high = 0.99 }\n'
            '"train.seed" = { low = 0, high = 2 }\n',
            space="digits",
        )
        + '[fixed]\n"model.backbone" = "small_cnn"\n',
    )
    assert main(["space", "--study", "show", "--set", "data.batch_size=32"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "float [0.001, 0.01] log" in rows["optim.lr"] and "[params]" in rows["optim.lr"]
    assert "optim.name = sgd" in rows["optim.momentum"]  # the base space's condition
    assert "space 'digits'" in rows["model.dropout"]
    assert "int [0, 2]" in rows["train.seed"]
    assert "[fixed]" in rows["model.backbone"] and "fixed small_cnn" in rows["model.backbone"]
    assert "--set" in rows["data.batch_size"] and "fixed 32" in rows["data.batch_size"]
    assert "model.width" in rows  # drawn by the base space because the backbone is small_cnn
    assert "loss.gamma" in rows and "loss.name in [focal, ls_focal]" in rows["loss.gamma"]


@pytest.mark.parametrize(
    ("assignment", "match"),
    [
        ("model.backbone=resnt18", "unknown backbone 'resnt18'. Did you mean 'resnet18'?"),
        ("loss.name=focl", "unknown loss 'focl'"),
        ("model.backbone=resnet18.nope_in1k", "no pretrained tag 'nope_in1k' for resnet18"),
    ],
)
def test_search_space_refuses_a_set_value_that_search_run_would_refuse(
    write_study, capsys, assignment, match
):
    write_study("show", params_study('"optim.lr" = [0.001, 0.01]\n', space="digits"))
    assert main(["space", "--study", "show", "--set", assignment]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and match in err and "\n" not in err


def test_dry_run_prints_three_configurations_and_writes_nothing(write_study, tmp_path, capsys):
    write_study("dry", params_study('"model.backbone" = ["small_cnn", "mlp"]\n', space="digits"))
    db = tmp_path / "dry.db"
    assert main(["run", "--study", "dry", "--trials", "5", "--storage", f"sqlite:///{db}", "--dry-run"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("  trial ") == 3 and "model.backbone" in out
    assert not db.exists()
    assert not (tmp_path / "dry.db.artifacts").exists()


def test_changing_params_of_an_existing_study_is_refused_unless_forced(
    write_study, storage_url, capsys
):
    write_study("grow", params_study('"optim.lr" = { low = 1e-3, high = 1e-2, log = true }\n'))
    args = ["run", "--study", "grow", "-q", "--storage", storage_url]
    assert main([*args, "--trials", "1"]) == 0
    capsys.readouterr()
    write_study("grow", params_study('"optim.lr" = { low = 1e-4, high = 1e-2, log = true }\n'))
    assert main([*args, "--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "params" in err and "--force" in err and "new name" in err
    study = optuna.load_study(study_name="grow", storage=storage_url)
    assert len(study.trials) == 1  # nothing was added
    # --force-space (or --force) goes on, and the study remembers the change
    assert main([*args, "--trials", "2", "--force-space"]) == 0
    study = optuna.load_study(study_name="grow", storage=storage_url)
    assert len(study.trials) == 2
    (change,) = study.user_attrs["problem_changes"]
    assert change["from_trial"] == 1 and "params" in change["changes"][0]


def test_dry_run_shows_the_queue_then_the_draws_that_a_run_of_the_study_starts_with(
    write_study, tmp_path, fake_train
):
    from search.experiments.run import dry_run, plan_run

    body = (
        '"model.backbone" = ["small_cnn", "mlp"]\n'
        '"optim.lr" = { low = 1e-4, high = 1e-1, log = true }\n\n'
        '[[enqueue]]\n"optim.lr" = 0.003\n"model.backbone" = "mlp"\n"train.seed" = 5\n'
    )  # the queued trial pins a key the space does not draw
    write_study("dry", params_study(body, space="digits").replace("seed = 0", "seed = 11"))
    url = f"sqlite:///{tmp_path / 'dry.db'}"
    shown = dry_run(plan_run(load_study("dry"), storage=url), n=3)
    assert not (tmp_path / "dry.db").exists()  # drawn in memory: no storage touched
    queued = {"model.backbone": "mlp", "optim.lr": 0.003, "train.seed": 5}
    assert shown[0] == {**shown[0], **queued}  # the queue first, with its own keys
    assert main(["run", "--study", "dry", "--trials", "3", "--storage", url, "-q"]) == 0
    study = optuna.load_study(study_name="dry", storage=url)
    assert [{**t.params, **t.user_attrs.get("enqueued", {})} for t in study.trials] == shown
    assert len({t["optim.lr"] for t in shown}) == 3  # the two draws are the sampler's own
    assert dry_run(plan_run(load_study("dry"), storage=url, force=True), n=1) == shown[:1]
