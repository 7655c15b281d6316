"""Study-file profiles: ``[profiles.NAME]`` overrides the top level, ``--profile NAME`` selects it,
and a profile's trials live in their own study ``FILE.NAME``."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import optuna
import pytest
from conftest import TINY_DIGITS, one_error_line
from optuna.trial import TrialState

from search.cli import main
from search.cli.run import child_argv
from search.study.studyfile import load_study, merge_profile

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# TINY_DIGITS plus a second image size and budget, a searched width, an enqueued baseline and
# an ablation, so that a profile has something of every kind to override.
WITH_PROFILES = (
    TINY_DIGITS
    + """
[params]
"model.dropout" = { low = 0.0, high = 0.5 }

[[enqueue]]
"model.dropout" = 0.1

[ablation]
repeats = 3
baseline = "defaults"

[ablation.fixed]
"optim.lr" = 0.001
"loss.name" = "ce"

[ablation.factors]
"model.dropout" = [0.0, 0.5]

[profiles.quick]
description = "tiny digits, quicker"

[profiles.quick.data]
image_size = 12

[profiles.quick.budget]
epochs = 1

[profiles.quick.fixed]
"model.dropout" = 0.2

[profiles.quick.params]
"model.width" = [4, 8]

[[profiles.quick.enqueue]]
"model.width" = 4

[profiles.quick.sampler]
seed = 1

[profiles.quick.pruner]
name = "median"
n_startup_trials = 1

[profiles.quick.ablation]
repeats = 1

[profiles.quick.ablation.fixed]
"optim.lr" = 0.01

[profiles.quick.ablation.factors]
"loss.name" = ["ce", "focal"]

[profiles.other]
space = "default"
"""
)


def test_profiles_are_listed_and_the_top_level_is_the_default(write_study):
    write_study("tiny", WITH_PROFILES)
    spec = load_study("tiny")
    assert spec.name == "tiny" and spec.profile is None
    assert spec.profiles == ("quick", "other")
    assert spec.data["image_size"] == 8 and spec.budget["epochs"] == 3
    assert spec.fixed["model.width"] == 8 and "model.dropout" not in spec.fixed


def test_profile_sections_merge_key_by_key(write_study):
    write_study("tiny", WITH_PROFILES)
    spec = load_study("tiny", profile="quick")
    assert spec.name == "tiny.quick" and spec.profile == "quick"
    assert spec.description == "tiny digits, quicker"
    assert spec.data == {"name": "digits", "image_size": 12}  # name kept, size overridden
    assert spec.budget == {"epochs": 1, "patience": 2}
    assert spec.base_config()["data.image_size"] == 12
    assert spec.base_config()["train.epochs"] == 1
    # sampler: no other algorithm named, so it merges; the pruner is another one: replaced
    assert spec.sampler == {"name": "random", "seed": 1}
    assert spec.pruner == {"name": "median", "n_startup_trials": 1}
    # ablation: repeats replaced, fixed merged key by key, factors replaced whole
    assert spec.ablation["repeats"] == 1 and spec.ablation["baseline"] == "defaults"
    assert spec.ablation["fixed"] == {"optim.lr": 0.01, "loss.name": "ce"}
    assert spec.ablation["factors"] == {"loss.name": ["ce", "focal"]}


def test_a_profile_pin_leaves_params_and_a_profile_param_leaves_fixed(write_study):
    write_study("tiny", WITH_PROFILES)
    spec = load_study("tiny", profile="quick")
    # model.dropout was searched at the top level and is pinned by the profile
    assert spec.fixed["model.dropout"] == 0.2
    assert "model.dropout" not in {p.key for p in spec.params}
    # model.width was pinned at the top level and is searched by the profile
    assert "model.width" not in spec.fixed
    assert [p.key for p in spec.params] == ["model.width"]
    assert spec.params[0].choices == (4, 8)


def test_enqueue_and_space_are_replaced_not_merged(write_study):
    write_study("tiny", WITH_PROFILES)
    assert load_study("tiny").enqueue == ({"model.dropout": 0.1},)
    assert load_study("tiny", profile="quick").enqueue == ({"model.width": 4},)
    other = load_study("tiny", profile="other")
    assert other.space == "default" and other.name == "tiny.other"
    assert other.enqueue == ({"model.dropout": 0.1},)  # not named by the profile: inherited


def test_merge_profile_keeps_the_top_level_untouched():
    top = {"space": "digits", "data": {"name": "digits"}, "fixed": {"a.b": 1}}
    merged = merge_profile(top, {"data": {"image_size": 4}, "fixed": {"c.d": 2}})
    assert merged["data"] == {"name": "digits", "image_size": 4}
    assert merged["fixed"] == {"a.b": 1, "c.d": 2}
    assert top == {"space": "digits", "data": {"name": "digits"}, "fixed": {"a.b": 1}}


@pytest.mark.parametrize(
    "command",
    [
        ["space", "--study", "tiny"],
        ["run", "--study", "tiny", "--trials", "1"],
        ["ablate", "--study", "tiny"],
        ["best", "--study", "tiny"],
        ["export", "--study", "tiny", "--out", "out"],
        ["confirm", "--study", "tiny"],
        ["evaluate", "--study", "tiny"],
        ["predict", "--study", "tiny", "--data", "x", "--out", "y.csv"],
        ["dashboard", "--study", "tiny"],
    ],
)
def test_unknown_profile_is_one_error_line_listing_the_profiles(
    command, write_study, storage_url, tmp_path, capsys
):
    write_study("tiny", WITH_PROFILES)
    args = [*command, "--profile", "quik"]
    if command[0] != "space":
        args += ["--storage", storage_url]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "tiny.toml has no profile 'quik'" in line
    assert "its profiles: quick, other" in line
    assert not (tmp_path / "studies.db").exists()


def test_a_file_without_profiles_says_so(write_study, capsys):
    write_study("plain", TINY_DIGITS)
    assert main(["space", "--study", "plain", "--profile", "quick"]) == 2
    assert "its profiles: none" in one_error_line(capsys)


BAD_PROFILES = {
    "unknown section": (
        '[profiles.quick]\nmetric = "val_loss"\n',
        ["[profiles.quick]", "unknown key", "'metric'"],
    ),
    "unknown data key": (
        "[profiles.quick.data]\nimage_sise = 4\n",
        ["[profiles.quick] [data]", "'image_sise'", "image_size"],
    ),
    "bad budget type": (
        '[profiles.quick.budget]\nepochs = "one"\n',
        ["[profiles.quick] [budget]", "epochs must be int"],
    ),
    "unknown fixed key": (
        '[profiles.quick.fixed]\n"optim.lrr" = 0.1\n',
        ["[profiles.quick] [fixed]", "'optim.lrr'"],
    ),
    "bad params range": (
        '[profiles.quick.params]\n"optim.lr" = { low = 1.0, high = 0.1 }\n',
        ["[profiles.quick]", "low must be < high"],
    ),
    "section not a table": ("[profiles]\nquick = 3\n", ["[profiles.quick]", "must be a table"]),
    "reserved name": ("[profiles.confirm]\n", ["[profiles.confirm]", "profile name"]),
    "enqueue outside the space": (
        '[[profiles.quick.enqueue]]\n"model.width" = 5\n',
        ["[profiles.quick] [[enqueue]] entry 0", "model.width = 5", "categorical [4, 8]"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_PROFILES))
def test_bad_profile_is_one_error_line_naming_file_and_profile(case, write_study, capsys):
    text, expected = BAD_PROFILES[case]
    if case == "enqueue outside the space":
        text = '[profiles.quick.params]\n"model.width" = [4, 8]\n' + text
    write_study("tiny", TINY_DIGITS + "\n" + text)
    # the top level alone is refused too: a broken profile is a broken study file
    assert main(["space", "--study", "tiny"]) == 2
    line = one_error_line(capsys)
    assert "tiny.toml" in line
    for part in expected:
        assert part in line, line


def test_enqueue_outside_the_top_level_space_is_refused(write_study, capsys):
    write_study("tiny", TINY_DIGITS + '\n[[enqueue]]\n"model.dropout" = 0.9\n"optim.lr" = 1.0\n')
    assert main(["space", "--study", "tiny"]) == 2
    line = one_error_line(capsys)
    assert "[[enqueue]] entry 0" in line and "outside what the space draws" in line


@pytest.mark.parametrize(
    ("key", "params", "value", "message"),
    [
        ("model.width", "{ low = 8, high = 32 }", "16.5", "model.width must be int, but got 16.5"),
        (
            "model.width",
            "{ low = 8, high = 32, step = 8 }",
            "12",
            "model.width = 12 is outside what the space draws (int [8, 32] step 8)",
        ),
        (
            "model.dropout",
            "{ low = 0.0, high = 0.5, step = 0.1 }",
            "0.25",
            "model.dropout = 0.25 is outside what the space draws",
        ),
    ],
)
def test_enqueue_between_the_steps_of_a_range_is_refused(
    write_study, capsys, key, params, value, message
):
    study = TINY_DIGITS.replace('"model.width" = 8\n', "")
    write_study("tiny", f'{study}\n[params]\n"{key}" = {params}\n[[enqueue]]\n"{key}" = {value}\n')
    assert main(["space", "--study", "tiny"]) == 2
    assert message in one_error_line(capsys)


def test_enqueue_on_the_steps_of_a_range_is_accepted(write_study, capsys, fake_train, tmp_path):
    study = TINY_DIGITS.replace('"model.width" = 8\n', "")
    write_study(
        "tiny",
        study + '\n[params]\n"model.dropout" = { low = 0.0, high = 0.5, step = 0.1 }\n'
        '"model.width" = { low = 8, high = 32, step = 8 }\n'
        '[[enqueue]]\n"model.dropout" = 0.3\n"model.width" = 24\n',
    )
    assert main(["space", "--study", "tiny"]) == 0
    url = f"sqlite:///{tmp_path / 'steps.db'}"
    assert main(["run", "--study", "tiny", "--trials", "1", "-q", "--storage", url]) == 0
    assert "warning" not in capsys.readouterr().err  # Optuna warns of a value off the grid
    (trial,) = optuna.load_study(study_name="tiny", storage=url).trials
    # the first trial is the enqueued configuration, drawn as written
    assert trial.params["model.dropout"] == 0.3 and trial.params["model.width"] == 24
    assert fake_train.calls[0].model.dropout == 0.3 and fake_train.calls[0].model.width == 24


def test_enqueue_outside_a_one_value_params_entry_is_refused(write_study, capsys):
    write_study(
        "tiny",
        TINY_DIGITS + '\n[params]\n"model.dropout" = [0.2]\n[[enqueue]]\n"model.dropout" = 0.3\n',
    )
    assert main(["space", "--study", "tiny"]) == 2
    assert "model.dropout = 0.3 is outside" in one_error_line(capsys)


def test_enqueue_contradicting_fixed_is_refused(write_study, capsys):
    write_study("tiny", TINY_DIGITS + '\n[[enqueue]]\n"model.width" = 16\n')
    assert main(["space", "--study", "tiny"]) == 2
    assert "[fixed] pins it to 8" in one_error_line(capsys)


def test_space_shows_the_profiles_space(write_study, capsys):
    write_study("tiny", WITH_PROFILES)
    assert main(["space", "--study", "tiny", "--profile", "quick"]) == 0
    out = capsys.readouterr().out
    assert "study 'tiny.quick'" in out
    assert "model.width" in out and "categorical [4, 8]" in out
    assert main(["space", "--study", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "model.width" in out and "fixed 8" in out


def test_a_profile_run_has_its_own_study_and_never_mixes_with_the_full_one(
    write_study, storage_url, capsys
):
    write_study("tiny", WITH_PROFILES)
    base = ["--trials", "2", "-q", "--storage", storage_url]
    assert main(["run", "--study", "tiny", *base]) == 0
    # a different image size and epoch budget: not a space change, another study
    assert main(["run", "--study", "tiny", "--profile", "quick", *base]) == 0
    full = optuna.load_study(study_name="tiny", storage=storage_url)
    quick = optuna.load_study(study_name="tiny.quick", storage=storage_url)
    assert len(full.get_trials(states=FINISHED)) == 2
    assert len(quick.get_trials(states=FINISHED)) == 2
    assert {t.user_attrs["config"]["data.image_size"] for t in full.trials} == {8}
    assert {t.user_attrs["config"]["data.image_size"] for t in quick.trials} == {12}
    assert all(t.user_attrs["config"]["train.epochs"] == 1 for t in quick.trials)
    assert quick.trials[0].params["model.width"] == 4  # the profile's enqueued baseline
    assert full.trials[0].params["model.dropout"] == 0.1  # the top level's
    assert full.user_attrs["problem"]["data.image_size"] == 8
    assert quick.user_attrs["problem"]["data.image_size"] == 12
    # and the full recipe resumes afterwards without a space-change refusal
    assert main(["run", "--study", "tiny", "--trials", "3", "-q", "--storage", storage_url]) == 0
    assert len(full.get_trials(states=FINISHED)) == 3
    capsys.readouterr()
    best = ["best", "--study", "tiny", "--profile", "quick", "--json", "--storage", storage_url]
    assert main(best) == 0
    assert '"study": "tiny.quick"' in capsys.readouterr().out
    # the stored name works as well, and finds the study file's storage by its file name
    assert main(["best", "--study", "tiny.quick", "--storage", storage_url]) == 0


def test_list_shows_each_files_profiles(write_study, capsys):
    write_study("tiny", WITH_PROFILES)
    write_study("plain", TINY_DIGITS)
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(out) if line.strip().startswith("tiny "))
    assert "profiles: quick, other" in out[at + 1]
    plain = next(i for i, line in enumerate(out) if line.strip().startswith("plain "))
    assert "profiles:" not in out[plain + 1]


def test_worker_processes_get_the_profile():
    args = Namespace(
        study="tiny", profile="quick", trials=2, timeout=None, budget=None,
        max_trial_minutes=None, set=None, enqueue=None, data=None, quiet=True,
        heartbeat=30.0, retries=2, grace=None,
    )  # fmt: skip
    argv = child_argv(args, threads=1)
    assert argv[argv.index("--profile") + 1] == "quick"
    args.profile = None
    assert "--profile" not in child_argv(args, threads=1)


def test_a_profile_study_is_found_in_the_study_files_storage(write_study, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'own.db'}"
    write_study("tiny", f'storage = "{url}"\n' + WITH_PROFILES)
    assert main(["run", "--study", "tiny", "--profile", "quick", "--trials", "1", "-q"]) == 0
    assert (tmp_path / "own.db").exists()
    assert not (Path.cwd() / "hpsearch.db").exists()  # not the default storage
    capsys.readouterr()
    for args in (["--study", "tiny", "--profile", "quick"], ["--study", "tiny.quick"]):
        assert main(["best", *args, "--json"]) == 0
        assert '"study": "tiny.quick"' in capsys.readouterr().out


def test_a_study_file_given_by_path_or_renamed_is_found_where_run_put_it(tmp_path, capsys):
    """``--study`` as a path outside the study folders, with ``name`` unlike the file's stem
    and a storage of its own: every reading command finds what ``search run`` wrote."""
    url = f"sqlite:///{tmp_path / 'own.db'}"
    path = tmp_path / "elsewhere" / "file_stem.toml"
    path.parent.mkdir()
    path.write_text(f'name = "renamed"\nstorage = "{url}"\n' + WITH_PROFILES)
    for profile in ([], ["--profile", "quick"]):
        args = ["--study", str(path), *profile]
        assert main(["run", *args, "--trials", "1", "-q"]) == 0
        capsys.readouterr()
        assert main(["best", *args, "--json"]) == 0
        stored = "renamed.quick" if profile else "renamed"
        assert f'"study": "{stored}"' in capsys.readouterr().out
        assert main(["export", *args, "--out", str(tmp_path / stored)]) == 0
        assert (tmp_path / stored / f"{stored}-trials.csv").is_file()
    assert not (Path.cwd() / "hpsearch.db").exists()  # nothing went to the default storage
