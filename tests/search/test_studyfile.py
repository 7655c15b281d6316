"""Study files: every key and type checked, errors that say where and what is valid."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_DIGITS

from search.study.studyfile import PACKAGE_STUDIES, find_study_file, list_study_files, load_study

SHIPPED = sorted(p.stem for p in PACKAGE_STUDIES.glob("*.toml"))


def test_tiny_study_loads(write_study):
    path = write_study("tiny", TINY_DIGITS)
    spec = load_study("tiny")
    assert spec.name == "tiny" and spec.path == path
    assert spec.space == "digits"
    assert spec.data == {"name": "digits", "image_size": 8}
    assert spec.budget == {"epochs": 3, "patience": 2}
    assert spec.sampler == {"name": "random", "seed": 0}
    assert spec.pruner == {"name": "none"}
    assert spec.fixed["model.width"] == 8
    assert spec.base_config() == {
        "data.name": "digits",
        "data.image_size": 8,
        "train.epochs": 3,
        "train.patience": 2,
    }
    assert spec.metric == "val_acc" and spec.direction == "maximize"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_study_files_load(name):
    spec = load_study(name)
    assert spec.space or spec.params  # a named space, or [params] as the whole space
    assert spec.path == PACKAGE_STUDIES / f"{name}.toml"


def test_study_directories_take_precedence(write_study, tmp_path):
    write_study("digits", 'space = "default"\n')
    assert find_study_file("digits").parent == tmp_path / "studies"
    assert load_study("digits").space == "default"
    assert "digits" in list_study_files()


def test_unknown_study_lists_known_ones(write_study):
    write_study("tiny_digits", TINY_DIGITS)
    with pytest.raises(ValueError) as info:
        load_study("tiny_digit")
    msg = str(info.value)
    assert "unknown study 'tiny_digit'" in msg
    assert "Did you mean 'tiny_digits'" in msg
    for name in ["tiny_digits", *SHIPPED]:
        assert name in msg


def test_missing_study_path():
    with pytest.raises(ValueError, match="does not exist"):
        load_study("nowhere/else.toml")


def test_unknown_top_level_key_lists_valid_keys(write_study):
    path = write_study("bad", 'descripton = "typo"\n' + TINY_DIGITS)
    with pytest.raises(ValueError) as info:
        load_study("bad")
    msg = str(info.value)
    assert str(path) in msg
    assert "'descripton'" in msg and "Did you mean 'description'" in msg
    for key in ("space", "data", "budget", "sampler", "pruner", "fixed", "enqueue"):
        assert key in msg


def test_unknown_data_key_lists_valid_keys(write_study):
    path = write_study("bad", TINY_DIGITS.replace("image_size = 8", "imagesize = 8"))
    with pytest.raises(ValueError) as info:
        load_study("bad")
    msg = str(info.value)
    assert str(path) in msg and "[data]" in msg
    assert "'imagesize'" in msg and "Did you mean 'image_size'" in msg
    for key in ("batch_size", "val_fraction", "root", "root_env", "augment"):
        assert key in msg


def test_unknown_budget_key_lists_valid_keys(write_study):
    write_study("bad", TINY_DIGITS.replace("epochs = 3", "epoch = 3"))
    with pytest.raises(ValueError) as info:
        load_study("bad")
    msg = str(info.value)
    assert "[budget]" in msg and "Did you mean 'epochs'" in msg and "patience" in msg


def test_unknown_fixed_key_names_the_section(write_study):
    write_study("bad", TINY_DIGITS.replace('"model.width" = 8', '"model.widht" = 8'))
    with pytest.raises(ValueError) as info:
        load_study("bad")
    msg = str(info.value)
    assert "[fixed]" in msg and "Did you mean 'model.width'" in msg


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("epochs = 3", 'epochs = "3"', "epochs must be int, but got '3' (str)"),
        ("patience = 2", "patience = true", "patience must be int, but got True (bool)"),
        ('space = "digits"', "space = 3", "space must be str, but got 3 (int)"),
        ("[data]\n", "data = 5\n[dat]\n", "data must be dict, but got 5 (int)"),
    ],
)
def test_wrong_type_names_key_and_type(write_study, old, new, expected):
    assert old in TINY_DIGITS
    path = write_study("bad", TINY_DIGITS.replace(old, new, 1))
    with pytest.raises((TypeError, ValueError)) as info:
        load_study("bad")
    msg = str(info.value)
    assert str(path) in msg
    assert expected in msg


def test_wrong_type_in_fixed_is_refused_when_the_config_is_built(write_study):
    """[fixed] values are config values: the config's own type check names the key."""
    from trainer import TrainConfig

    write_study("bad", TINY_DIGITS.replace('"model.width" = 8', '"model.width" = "8"'))
    spec = load_study("bad")
    with pytest.raises(TypeError, match="model.width must be int, but got '8'"):
        TrainConfig.from_flat({**spec.base_config(), **spec.fixed})


def test_malformed_toml_names_file_and_line(write_study):
    text = 'space = "digits"\n\n[data\nname = "digits"\n'
    path = write_study("broken", text)
    with pytest.raises(ValueError) as info:
        load_study("broken")
    msg = str(info.value)
    assert msg.startswith(f"{path}: malformed TOML")
    assert "line 3" in msg


def test_missing_space_and_bad_tables(write_study):
    write_study("nospace", 'description = "x"\n')
    with pytest.raises(ValueError, match="needs a space"):
        load_study("nospace")
    write_study("nosampler", 'space = "digits"\n[sampler]\nseed = 1\n')
    with pytest.raises(ValueError, match=r"\[sampler\] needs a name"):
        load_study("nosampler")
    write_study("direction", 'space = "digits"\ndirection = "maximise"\n')
    with pytest.raises(ValueError, match="Did you mean 'maximize'"):
        load_study("direction")
    write_study("enqueue", 'space = "digits"\nenqueue = [1]\n')
    with pytest.raises(TypeError, match="entry 0 must be a table"):
        load_study("enqueue")


def test_ablation_section_is_checked(write_study):
    write_study("abl", TINY_DIGITS + '\n[ablation.factors]\n"optim.lr" = [0.1]\n')
    with pytest.raises(TypeError, match="needs a list of >= 2 values"):
        load_study("abl")
    write_study("abl2", TINY_DIGITS + "\n[ablation]\nrepeat = 3\n")
    with pytest.raises(ValueError, match="Did you mean 'repeats'"):
        load_study("abl2")


def test_relative_data_root_resolves_from_the_working_directory(write_study, tmp_path):
    write_study("folder", 'space = "default"\n[data]\nname = "folder"\nroot = "imgs"\n')
    base = load_study("folder").base_config()
    assert base["data.root"] == str((Path.cwd() / "imgs").resolve())
    assert load_study("folder").base_config(data_root=str(tmp_path))["data.root"] == str(
        tmp_path.resolve()
    )
