"""Resuming a study: a seeded sampler goes on instead of replaying its first draws, a study
refuses settings that change its problem (unless forced), and warnings are one line each."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import TINY_DIGITS, one_error_line
from optuna.trial import TrialState
from PIL import Image

from search.cli import main
from search.study.samplers import trial_seed

# The tiny digits study with the sampler's choices left free, so that draws can repeat.
FREE = (
    TINY_DIGITS.split("[fixed]")[0] + '[fixed]\n"model.backbone" = "small_cnn"\n"model.width" = 8\n'
)


def run(url: str, n: int, *extra: str, study: str = "free") -> int:
    return main(["run", "--study", study, "--trials", str(n), "-q", "--storage", url, *extra])


def params_of(url: str, study: str = "free") -> list[dict]:
    s = optuna.load_study(study_name=study, storage=url)
    return [t.params for t in sorted(s.trials, key=lambda t: t.number)]


def key(params: dict) -> tuple:
    return tuple(
        sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in params.items())
    )


# Grid: two listed parameters, everything else pinned; the grid is the six combinations.
GRID = """
description = "grid"

[data]
name = "digits"
image_size = 8

[budget]
epochs = 3

[sampler]
name = "grid"
seed = 0
search_space = { "optim.lr" = [0.001, 0.003, 0.01], "model.dropout" = [0.0, 0.5] }

[pruner]
name = "none"

[fixed]
"model.backbone" = "small_cnn"
"model.width" = 8
"optim.name" = "adam"
"data.batch_size" = 128

[params]
"optim.lr" = [0.001, 0.003, 0.01]
"model.dropout" = [0.0, 0.5]
"""

SAMPLERS = {
    "random": FREE,
    # two random start-up draws, then TPE's own model-based draws, seeded per trial
    "tpe": FREE.replace('name = "random"', 'name = "tpe"\nn_startup_trials = 2'),
    "cmaes": FREE.replace('name = "random"', 'name = "cmaes"\nwarn_independent_sampling = false'),
    "grid": GRID,
}


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_three_plus_three_trials_draw_six_distinct_configurations(
    write_study, storage_url, sampler, fake_train
):
    write_study("free", SAMPLERS[sampler])
    assert run(storage_url, 3) == 0
    assert run(storage_url, 6) == 0
    drawn = params_of(storage_url)
    assert len(drawn) == 6
    assert len({key(p) for p in drawn}) == 6


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_in_one_go_and_in_two_runs_draws_the_same_six(
    write_study, tmp_path, sampler, fake_train
):
    # The results depend only on the configuration (fake training), so the finished trials
    # are the same either way, and a seeded sampler must then draw the same six.
    write_study("free", SAMPLERS[sampler])
    one, two = f"sqlite:///{tmp_path / 'one.db'}", f"sqlite:///{tmp_path / 'two.db'}"
    assert run(one, 6) == 0
    assert run(two, 3) == 0 and run(two, 6) == 0
    first, second = [key(p) for p in params_of(one)], [key(p) for p in params_of(two)]
    assert len(first) == 6 and first == second
    assert len(set(first)) == 6
    # and a third study with the same seed draws them again: the draws come from the seed
    three = f"sqlite:///{tmp_path / 'three.db'}"
    assert run(three, 2) == 0 and run(three, 6) == 0
    assert [key(p) for p in params_of(three)] == first


def test_more_trials_than_grid_points_is_refused_and_nothing_is_written(
    write_study, storage_url, capsys
):
    write_study("free", GRID)
    assert run(storage_url, 7) == 2
    one_error_line(capsys, "--trials 7 is more than the 6 points of the study's grid",
                   "use --trials 6")  # fmt: skip
    assert optuna.get_all_study_names(storage_url) == []


def test_a_budget_without_trials_runs_each_grid_point_once(write_study, storage_url, fake_train):
    write_study("free", GRID)
    assert main(["run", "--study", "free", "--budget", "10m", "-q", "--storage", storage_url]) == 0
    drawn = [key(p) for p in params_of(storage_url)]
    assert len(drawn) == 6 and len(set(drawn)) == 6


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_another_study_seed_draws_other_configurations(write_study, tmp_path, sampler, fake_train):
    # what makes the test above able to fail: unseeded or differently seeded, draws differ
    write_study("free", SAMPLERS[sampler])
    write_study("other", SAMPLERS[sampler].replace("seed = 0", "seed = 1"))
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert run(url, 6) == 0 and run(url, 6, study="other") == 0
    assert [key(p) for p in params_of(url)] != [key(p) for p in params_of(url, "other")]


def test_trial_seeds_differ_by_trial_and_by_study_seed():
    seeds = {trial_seed(s, n) for s in range(3) for n in range(50)}
    assert len(seeds) == 150
    assert all(0 <= s < 2**32 for s in seeds)
    # pinned values: the seed of a trial must not change between versions, or a resumed
    # study would draw other configurations than its first run promised
    assert trial_seed(0, 7) == int(np.random.SeedSequence([0, 7]).generate_state(1)[0])
    assert trial_seed(0, 7) != trial_seed(7, 0)


# -- a study keeps its problem -----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("image_size = 8", "image_size = 10"), ["data.image_size: 8 -> 10"]),
        (("epochs = 3", "epochs = 2"), ["train.epochs: 3 -> 2"]),
    ],
)
def test_a_changed_setting_is_refused_then_accepted_with_force(
    write_study, storage_url, capsys, change, words
):
    write_study("free", FREE)
    assert run(storage_url, 1) == 0
    write_study("free", FREE.replace(*change))
    capsys.readouterr()
    assert run(storage_url, 2) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    for word in words:
        assert word in err
    assert "--force" in err and "new name" in err
    assert len(params_of(storage_url)) == 1  # nothing was written

    assert run(storage_url, 2, "--force") == 0
    study = optuna.load_study(study_name="free", storage=storage_url)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2
    (record,) = study.user_attrs["problem_changes"]
    assert record["from_trial"] == 1 and words[0] in record["changes"]
    # the new settings are the study's now: the next run goes on without --force
    assert run(storage_url, 3) == 0


def test_pinning_a_searched_parameter_is_not_a_change(write_study, storage_url):
    write_study("free", FREE)
    assert run(storage_url, 1) == 0
    assert run(storage_url, 2, "--set", "optim.lr=0.003") == 0
    study = optuna.load_study(study_name="free", storage=storage_url)
    assert study.trials[1].user_attrs["config"]["optim.lr"] == 0.003


def _photo_folder(root: Path, *, n: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in ("cats", "dogs"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


FOLDER = """
space = "digits"
[data]
name = "folder"
image_size = 8
[budget]
epochs = 1
[sampler]
name = "random"
seed = 0
[pruner]
name = "none"
[fixed]
"model.backbone" = "small_cnn"
"model.width" = 4
"data.batch_size" = 4
"""


def test_a_changed_data_folder_is_refused_and_a_moved_one_is_not(
    write_study, storage_url, tmp_path, capsys
):
    write_study("pets", FOLDER)
    a = _photo_folder(tmp_path / "a")
    assert main(["run", "--study", "pets", "--trials", "1", "-q", "--storage", storage_url, "--data", str(a)]) == 0  # fmt: skip
    moved = a.rename(tmp_path / "moved")  # the same images elsewhere: the same problem
    assert main(["run", "--study", "pets", "--trials", "2", "-q", "--storage", storage_url, "--data", str(moved)]) == 0  # fmt: skip
    other = _photo_folder(tmp_path / "other", seed=1)
    capsys.readouterr()
    assert main(["run", "--study", "pets", "--trials", "3", "-q", "--storage", storage_url, "--data", str(other)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "data.root" in err and "--force" in err
    assert len(params_of(storage_url, "pets")) == 2


# -- warnings ----------------------------------------------------------------------------

SOURCE_LINE = re.compile(r"\.py:\d+")


def test_warnings_are_one_line_without_source_paths(write_study, storage_url, tmp_path, capsys):
    write_study("pets", FOLDER)
    root = _photo_folder(tmp_path / "pets", n=10)
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG not really")
    rc = main(["run", "--study", "pets", "--trials", "1", "-q", "--storage", storage_url, "--data", str(root)])  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "broken.png" in line]
    assert lines and all(line.startswith("warning: ") for line in lines)
    assert not SOURCE_LINE.search(err)


def test_an_unsafe_checkpoint_is_one_error_line(write_study, storage_url, tmp_path, capsys):
    import pickle

    bad = tmp_path / "weights.pth"
    bad.write_bytes(pickle.dumps({"w": object()}, protocol=4))
    write_study("free", FREE + f'"model.pretrained" = "{bad}"\n')
    assert run(storage_url, 1) == 2
    captured = capsys.readouterr()
    (line,) = [x for x in (captured.out + captured.err).splitlines() if x.strip()]
    assert line.startswith("error: ") and "could not be loaded safely" in line
    assert not SOURCE_LINE.search(line)
