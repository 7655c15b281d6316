"""The held-out test split: data.test_fraction (digits and folders), given test/ folders, and
the split record (counts and hashes) that later commands compare against."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trainer.data
from trainer import DataConfig, load_data
from trainer.data import load_test, split_record, stratified_split


def _rows(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in x}


def _fresh(cfg: DataConfig):
    trainer.data._load_cached.cache_clear()  # as a new process would load it
    return load_data(cfg)


def _digits(**kw) -> DataConfig:
    return DataConfig(name="digits", image_size=8, **kw)


def test_digits_test_fraction_is_disjoint_stratified_and_held_out_of_load_data():
    cfg = _digits(test_fraction=0.2)
    data = load_data(cfg)
    x_test, y_test = load_test(cfg)
    assert data.x_test is None and data.y_test is None  # training never gets it
    assert len(data.x_train) + len(data.x_val) + len(x_test) == 1797
    assert len(x_test) == 360 and len(data.x_val) == 360  # 20 % each, of all images
    train, val, test = _rows(data.x_train), _rows(data.x_val), _rows(x_test)
    assert not train & test and not val & test and not train & val
    per_class = torch.bincount(y_test, minlength=10)
    assert per_class.min() >= 35 and per_class.max() <= 37  # stratified: ~36 of each digit
    rec = data.splits
    assert {k: v["count"] for k, v in rec.items()} == {"train": 1077, "val": 360, "test": 360}
    assert rec["test"]["source"] == "data.test_fraction=0.2"


def test_split_is_stable_across_reruns_and_processes():
    cfg = _digits(test_fraction=0.2)
    first = split_record(cfg)
    x_first = load_test(cfg)[0].clone()
    again = _fresh(cfg)
    assert again.splits == first and torch.equal(load_test(cfg)[0], x_first)
    code = (
        "import json; from trainer import DataConfig; from trainer.data import split_record; "
        "print(json.dumps(split_record(DataConfig(name='digits', image_size=8, "
        "test_fraction=0.2))))"
    )
    repo = str(Path(trainer.data.__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo
    )
    assert json.loads(out.stdout) == first  # another worker process draws the same split
    assert split_record(_digits(test_fraction=0.2, split_seed=1))["test"] != first["test"]


def test_test_split_does_not_move_with_val_fraction_or_image_size():
    base = split_record(_digits(test_fraction=0.2))["test"]
    assert split_record(_digits(test_fraction=0.2, val_fraction=0.1))["test"] == base
    assert split_record(DataConfig(name="digits", image_size=16, test_fraction=0.2))["test"] == base


def test_no_test_fraction_leaves_the_existing_digits_split_unchanged():
    from sklearn.datasets import load_digits

    data = load_data(_digits())
    _, val_idx = stratified_split(load_digits().target, val_fraction=0.2, seed=0)
    assert torch.equal(data.y_val, torch.from_numpy(load_digits().target[val_idx]))
    assert "test" not in data.splits and not data.has_test
    with pytest.raises(ValueError, match="has no test split; set data.test_fraction"):
        load_test(_digits())


def test_fractions_must_leave_training_images():
    with pytest.raises(ValueError, match="val_fraction \\+ test_fraction < 1"):
        _digits(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="data.test_fraction must be in"):
        _digits(test_fraction=-0.1)


def _folder(root: Path | str, **kw) -> DataConfig:
    return DataConfig(name="folder", root=str(root), image_size=8, **kw)


def test_folder_test_fraction_keeps_identical_files_on_one_side(tmp_path, make_classes):
    root = make_classes(tmp_path / "d", {"a": 12, "b": 12, "c": 12})
    for i in range(4):  # copies of one image: all in one split, never straddling
        (root / "a" / f"copy{i}.png").write_bytes((root / "a" / "img0.png").read_bytes())
    for seed in range(4):
        cfg = _folder(root, test_fraction=0.25, split_seed=seed)
        data = _fresh(cfg)
        x_test, _ = load_test(cfg)
        test = _rows(x_test)
        assert not test & _rows(data.x_train) and not test & _rows(data.x_val)
        assert not _rows(data.x_train) & _rows(data.x_val)
        assert data.splits["test"]["count"] == len(x_test) > 0


def test_given_test_folder_is_the_test_split(tmp_path, make_classes):
    make_classes(tmp_path / "d" / "train", {"a": 6, "b": 6})
    make_classes(tmp_path / "d" / "test", {"a": 2, "b": 3})
    cfg = _folder(tmp_path / "d")
    data = load_data(cfg)
    x_test, y_test = load_test(cfg)
    assert (len(data.x_train), len(data.x_val)) == (9, 3)  # val still split from train/
    assert y_test.tolist() == [0, 0, 1, 1, 1]
    # the record is the hash of the sorted (file#content digest, label) list of test/'s
    # images, computed here from the files themselves
    files = sorted((tmp_path / "d" / "test").glob("*/*.png"))
    listed = sorted(
        (f"{f.relative_to(tmp_path / 'd').as_posix()}#"
         f"{hashlib.blake2b(f.read_bytes(), digest_size=16).hexdigest()}", f.parent.name)
        for f in files
    )  # fmt: skip
    expected = hashlib.sha256(json.dumps(listed).encode()).hexdigest()[:16]
    assert len(files) == 5
    assert data.splits["test"] == {"count": 5, "hash": expected, "source": "test/ folder"}
    with pytest.raises(ValueError, match="test/ folder and data.test_fraction=0.2"):
        _fresh(_folder(tmp_path / "d", test_fraction=0.2))

    # changing one test image changes the test hash, and only it
    before = split_record(cfg)
    (tmp_path / "d" / "test" / "a" / "img0.png").write_bytes(
        (tmp_path / "d" / "train" / "a" / "img0.png").read_bytes()
    )
    trainer.data._load_cached.cache_clear()
    with pytest.warns(UserWarning, match="test image\\(s\\) are byte-identical"):
        after = split_record(cfg)
    assert after["test"]["hash"] != before["test"]["hash"]
    assert after["train"] == before["train"] and after["val"] == before["val"]


def test_unlabeled_test_folder_is_ignored(tmp_path, make_classes, write_img):
    make_classes(tmp_path / "d" / "train", {"a": 5, "b": 5})
    write_img(tmp_path / "d" / "test" / "0001.png")  # seed 000's unlabeled test images
    data = load_data(_folder(tmp_path / "d"))
    assert "test" not in data.splits


def test_classes_selection_applies_to_the_test_split():
    cfg = _digits(test_fraction=0.2, classes=(5, 6, 7, 8, 9))
    x_test, y_test = load_test(cfg)
    assert sorted(set(y_test.tolist())) == [0, 1, 2, 3, 4]
    _, y_all = load_test(_digits(test_fraction=0.2))
    assert len(y_test) == int((y_all >= 5).sum())  # the same images, relabelled 0..4
    assert load_data(cfg).splits["test"]["count"] == len(y_test)
