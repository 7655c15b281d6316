"""Image-folder layouts, real-world files, bad-file handling and the decode cache."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import trainer.data
from trainer import DataConfig, TrainConfig, load_data, train
from trainer.data import decode as dec
from trainer.data import loaders as fo
from trainer.data.loaders import BadImageWarning, load_unlabeled


def _cfg(root: Path | str, name: str = "folder", **kw) -> DataConfig:
    return DataConfig(name=name, root=str(root), image_size=kw.pop("image_size", 8), **kw)


def _rows(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(r.numpy().tobytes()).hexdigest() for r in x}


def _load(cfg: DataConfig):
    trainer.data._load_cached.cache_clear()  # a fresh process: only the disk cache remains
    return load_data(cfg)


# ------------------------------------------------------------------------------ layouts


def test_folder_split_is_stratified_seeded_and_disjoint(tmp_path, make_classes):
    root = make_classes(tmp_path / "d", {"cat": 10, "dog": 10, "eel": 5})
    data = load_data(_cfg(root))
    assert data.class_names == ["cat", "dog", "eel"]
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape[1:] == (3, 8, 8)
    assert len(data.x_train) + len(data.x_val) == 25
    assert not _rows(data.x_train) & _rows(data.x_val)  # no image on both sides
    assert torch.bincount(data.y_val, minlength=3).tolist() == [2, 2, 1]  # 20 % per class
    assert torch.bincount(data.y_train, minlength=3).tolist() == [8, 8, 4]

    again = _load(_cfg(root))
    assert torch.equal(again.x_val, data.x_val) and torch.equal(again.y_val, data.y_val)
    other = _load(_cfg(root, split_seed=1))
    assert _rows(other.x_val) != _rows(data.x_val)


def test_folder_given_splits_and_train_only(tmp_path, make_classes):
    make_classes(tmp_path / "d" / "train", {"a": 4, "b": 3})
    make_classes(tmp_path / "d" / "valid", {"a": 2, "b": 1})
    (tmp_path / "d" / "test").mkdir()  # an unlabeled test folder is ignored
    (tmp_path / "d" / "test" / "x.png").write_bytes(b"")
    data = load_data(_cfg(tmp_path / "d"))
    assert (len(data.x_train), len(data.x_val)) == (7, 3)
    assert data.y_val.tolist() == [0, 0, 1]

    make_classes(tmp_path / "t" / "train", {"a": 5, "b": 5})  # train/ only: split it
    data = load_data(_cfg(tmp_path / "t"))
    assert (len(data.x_train), len(data.x_val)) == (8, 2)


def test_flat_layout_numeric_classes(tmp_path, write_img):
    for split, n in (("train", 3), ("validation", 1)):
        for label in (0, 2, 10):
            for i in range(n):
                name = f"{label}_{i}{split[0]}.png"
                write_img(tmp_path / "food" / split / name, seed=100 * label + 10 * n + i)
    data = load_data(_cfg(tmp_path / "food", "flat"))
    assert data.class_names == ["0", "2", "10"]  # numeric, not "10" before "2"
    assert sorted(data.y_train.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.y_val.tolist() == [0, 1, 2]


def test_flat_single_folder_is_split_and_names_are_checked(tmp_path, write_img):
    for label in (1, 3):
        for i in range(5):
            write_img(tmp_path / "f" / f"{label}_{i}.jpg", seed=10 * label + i)
    data = load_data(_cfg(tmp_path / "f", "flat"))
    assert data.class_names == ["1", "3"] and (len(data.x_train), len(data.x_val)) == (8, 2)

    write_img(tmp_path / "f" / "holiday.jpg")
    with pytest.raises(ValueError, match=r"holiday\.jpg .*<label>_<id>"):
        _load(_cfg(tmp_path / "f", "flat"))


def test_csv_manifest(tmp_path, write_img):
    rows = ["path,label,split"]
    for i in range(6):
        for label in ("red", "blue"):
            rel = f"imgs/{label}{i}.png"
            write_img(tmp_path / rel, seed=i + (100 if label == "red" else 0))
            rows.append(f"{rel},{label},{'val' if i == 0 else 'train'}")
    write_img(tmp_path / "imgs/t.png", seed=999)
    rows.append("imgs/t.png,red,test")  # test rows are the held-out test split
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    data = load_data(_cfg(tmp_path / "m.csv", "csv"))
    assert data.class_names == ["blue", "red"]
    assert (len(data.x_train), len(data.x_val)) == (10, 2)
    assert sorted(data.y_val.tolist()) == [0, 1]
    assert data.x_test is None and data.splits["test"]["count"] == 1
    x_test, y_test = trainer.data.load_test(_cfg(tmp_path / "m.csv", "csv"))
    assert x_test.shape[0] == 1 and y_test.tolist() == [1]


def test_csv_integer_labels_without_split(tmp_path, write_img):
    lines = ["path,label"]
    for i in range(10):
        write_img(tmp_path / f"{i}.png", seed=i)
        lines.append(f"{i}.png,{[2, 10][i % 2]}")
    (tmp_path / "m.csv").write_text("\n".join(lines))
    data = load_data(_cfg(tmp_path / "m.csv", "csv"))
    assert data.class_names == ["2", "10"] and len(data.x_val) == 2


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("file,label\na.png,0\n", "header row with columns path,label"),
        ("path,label\na.png,-1\n", "label -1 is out of range"),
        ("path,label\na.png,0\n./a.png,1\n", "already listed on line 2"),
        ("path,label,split\na.png,0,holdout\n", "split 'holdout' must be train, val or test"),
        (
            "path,label,split\na.png,0,train\nb.png,1,val\n",
            r"validation class\(es\) 1 .*no training",
        ),
    ],
)
def test_csv_errors(tmp_path, write_img, body, match):
    write_img(tmp_path / "a.png")
    write_img(tmp_path / "b.png", seed=1)
    (tmp_path / "m.csv").write_text(body)
    with pytest.raises(ValueError, match=match):
        load_data(_cfg(tmp_path / "m.csv", "csv"))


def test_layout_errors(tmp_path, make_classes, write_img):
    with pytest.raises(ValueError, match="does not exist"):
        load_data(_cfg(tmp_path / "missing"))
    with pytest.raises(ValueError, match="data.root is not set"):
        load_data(DataConfig(name="folder"))

    make_classes(tmp_path / "e", {"a": 3})
    (tmp_path / "e" / "b").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*b has no images"):
        load_data(_cfg(tmp_path / "e"))

    write_img(tmp_path / "loose" / "1_2.png")
    with pytest.raises(ValueError, match="no class subfolders.*data.name='flat'"):
        load_data(_cfg(tmp_path / "loose"))

    make_classes(tmp_path / "s" / "train", {"a": 3, "b": 3})
    make_classes(tmp_path / "s" / "val", {"a": 1, "c": 1})
    with pytest.raises(ValueError, match=r"validation class\(es\) c .*no training images"):
        load_data(_cfg(tmp_path / "s"))

    make_classes(tmp_path / "one", {"a": 5, "b": 1})
    with pytest.raises(ValueError, match="class 'b' has 1 distinct image"):
        load_data(_cfg(tmp_path / "one"))

    make_classes(tmp_path / "few", {"a": 2, "b": 2, "c": 2})
    with pytest.raises(ValueError, match="data.val_fraction=0.2 puts 2 of 6"):
        load_data(_cfg(tmp_path / "few"))


def test_duplicates_never_straddle_the_split(tmp_path, make_classes):
    root = make_classes(tmp_path / "d", {"a": 10, "b": 10})
    for i in range(5):  # five copies of one image, as seed 004's augmented copies
        (root / "a" / f"copy{i}.png").write_bytes((root / "a" / "img0.png").read_bytes())
    for seed in range(5):
        data = _load(_cfg(root, split_seed=seed))
        assert not _rows(data.x_train) & _rows(data.x_val)

    make_classes(tmp_path / "g" / "train", {"a": 2})
    make_classes(tmp_path / "g" / "val", {"a": 1})
    (tmp_path / "g" / "val" / "a" / "img0.png").write_bytes(
        (tmp_path / "g" / "train" / "a" / "img1.png").read_bytes()
    )
    with pytest.warns(BadImageWarning, match=r"1 validation image\(s\) are byte-identical"):
        load_data(_cfg(tmp_path / "g"))


# ------------------------------------------------------------------- real-world files


def test_real_world_formats_decode_to_rgb(tmp_path, write_img):
    d = tmp_path / "d" / "x"
    write_img(d / "rgb.jpg")
    write_img(d / "gray.jpg", mode="L")
    write_img(d / "rgba.png", mode="RGBA")
    write_img(d / "pal.png", mode="P")
    write_img(d / "pal.gif", mode="P")
    write_img(d / "lossy.webp")
    write_img(d / "cmyk.jpg", mode="CMYK")
    write_img(d / "odd.png", size=(1, 57))
    write_img(d / "big.jpg", size=(301, 299))
    Image.fromarray(np.full((9, 7), 65535, dtype=np.uint16)).save(d / "deep.png")  # 16 bit
    write_img(tmp_path / "d" / "y" / "UPPER.JPEG", seed=1)
    write_img(tmp_path / "d" / "y" / "b.png")
    (tmp_path / "d" / "y" / "notes.txt").write_text("ignored: not an image extension")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is skipped
        data = load_data(_cfg(tmp_path / "d", image_size=12, val_fraction=0.5))
    assert len(data.x_train) + len(data.x_val) == 12
    assert data.x_train.shape[1:] == (3, 12, 12)
    out, why, _ = dec._decode_file(str(d / "deep.png"), 4, fo.MAX_PIXELS)
    assert why is None and out.min() == 255  # 16-bit white stays white


def test_transparency_becomes_white_and_exif_rotation_applies(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "t.png")
    out, why, _ = dec._decode_file(str(tmp_path / "t.png"), 4, fo.MAX_PIXELS)
    assert why is None and out.min() == 255

    # Left half red, right half blue, stored with EXIF orientation 6 (rotate 90 clockwise):
    # shown upright, red is on top.
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out, why, _ = dec._decode_file(str(tmp_path / "r.jpg"), 8, fo.MAX_PIXELS)
    assert why is None and out.shape == (3, 8, 8)
    red = out[0].astype(int)
    assert red[:3].mean() > 200 and red[-3:].mean() < 50


def _bad_folder(tmp_path: Path, make_classes) -> Path:
    root = make_classes(tmp_path / "d", {"a": 5, "b": 5}, ext=".jpg")
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "garbage.png").write_bytes(b"certainly not a PNG")
    good = (root / "b" / "img0.jpg").read_bytes()
    (root / "b" / "cut.jpg").write_bytes(good[: len(good) // 2])
    Image.new("RGB", (64, 64)).save(root / "b" / "bomb.png")  # over the lowered pixel limit
    return root


def test_bad_files_are_skipped_with_one_warning(tmp_path, make_classes, monkeypatch):
    monkeypatch.setenv("HPSEARCH_MAX_PIXELS", "1000")
    root = _bad_folder(tmp_path, make_classes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_data(_cfg(root))
    bad = [w for w in caught if issubclass(w.category, BadImageWarning)]
    assert len(bad) == 1, [str(w.message) for w in caught]
    msg = str(bad[0].message)
    assert "skipping 4 unreadable" in msg
    for part in ("a/empty.jpg (zero-byte", "a/garbage.png (not an image", "b/cut.jpg (truncated"):
        assert part in msg
    assert "b/bomb.png (64x64 px is over the 1000 px limit" in msg
    assert len(data.x_train) + len(data.x_val) == 10  # only the good ones


def test_strict_refuses_to_start(tmp_path, make_classes, monkeypatch):
    monkeypatch.setenv("HPSEARCH_MAX_PIXELS", "1000")
    root = _bad_folder(tmp_path, make_classes)
    with pytest.raises(ValueError, match=r"4 unreadable image file\(s\) .*a/empty\.jpg"):
        load_data(_cfg(root, strict=True))


def test_pil_decompression_bomb_error_is_a_bad_file(tmp_path, monkeypatch):
    Image.new("L", (50, 50)).save(tmp_path / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL's own guard, below ours
    out, why, _ = dec._decode_file(str(tmp_path / "b.png"), 4, fo.MAX_PIXELS)
    assert out is None and "decompression bomb" in why


def test_a_class_with_only_bad_files_is_an_error(tmp_path, make_classes):
    root = make_classes(tmp_path / "d", {"a": 5, "b": 5})
    (root / "c").mkdir()
    (root / "c" / "x.png").write_bytes(b"")
    with pytest.warns(BadImageWarning), pytest.raises(ValueError, match="c have no readable"):
        load_data(_cfg(root))


# ----------------------------------------------------------------------- decode cache


def test_cache_is_reused_and_rebuilt_when_files_change(tmp_path, make_classes, monkeypatch):
    root = make_classes(tmp_path / "d", {"a": 5, "b": 5})
    first = load_data(_cfg(root))
    cached = list(fo.cache_dir().glob("folder-8px-*.npy"))
    assert cached

    calls = []
    real = dec._decode_file
    monkeypatch.setattr(dec, "_decode_file", lambda *a: calls.append(a) or real(*a))
    second = _load(_cfg(root))
    assert calls == []  # the second trial decodes nothing
    assert torch.equal(first.x_train, second.x_train)
    assert torch.equal(first.x_val, second.x_val)

    target = root / "a" / "img0.png"
    Image.new("RGB", (5, 5), (9, 9, 9)).save(target)
    os.utime(target, ns=(1, 10**18))  # a new mtime, even on coarse-clock file systems
    third = _load(_cfg(root))
    assert len(calls) == 10  # rebuilt
    assert any(bool((x == 9).all()) for x in torch.cat([third.x_train, third.x_val]))
    assert not [p for p in cached if p.exists()]  # the stale cache was removed

    calls.clear()
    _load(_cfg(root, image_size=6))  # another resolution is another cache
    assert len(calls) == 10


def test_cached_tensors_are_memory_mapped(tmp_path, make_classes):
    make_classes(tmp_path / "g" / "train", {"a": 3, "b": 3})
    make_classes(tmp_path / "g" / "val", {"a": 1, "b": 1})
    data = load_data(_cfg(tmp_path / "g"))
    (npy,) = fo.cache_dir().glob("folder-8px-*.npy")  # given splits, nothing skipped: no copy
    mapped = np.load(npy, mmap_mode="r")
    assert np.array_equal(mapped[:6], data.x_train.numpy())
    # Train and val are views of one mapping, not copies.
    assert data.x_val.untyped_storage().data_ptr() == data.x_train.untyped_storage().data_ptr()


def test_parallel_decoding(tmp_path, make_classes, monkeypatch):
    monkeypatch.setattr(dec, "PARALLEL_MIN_FILES", 1)
    monkeypatch.setenv("HPSEARCH_DECODE_WORKERS", "2")
    root = make_classes(tmp_path / "d", {"a": 6, "b": 6}, ext=".jpg")
    (root / "a" / "empty.jpg").write_bytes(b"")
    with pytest.warns(BadImageWarning, match="a/empty.jpg"):
        data = load_data(_cfg(root))
    monkeypatch.setenv("HPSEARCH_DECODE_WORKERS", "1")
    serial = dec.decode_cached("x", root, sorted(root.rglob("img*.jpg")), 8)
    parallel_rows = _rows(torch.cat([data.x_train, data.x_val]))
    assert parallel_rows == _rows(torch.from_numpy(np.load(serial.path)))


# ---------------------------------------------------------------------------- unlabeled


def test_load_unlabeled(tmp_path, write_img):
    for name in ("10.png", "2.jpg", "1.webp"):
        write_img(tmp_path / "test" / name, seed=len(name))
    (tmp_path / "test" / "3.png").write_bytes(b"")
    with pytest.warns(BadImageWarning, match=r"3\.png \(zero-byte"):
        x, names = load_unlabeled(tmp_path / "test", image_size=10)
    assert names == ["1.webp", "2.jpg", "10.png"]
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 10, 10)
    with pytest.raises(ValueError, match="3.png"):
        load_unlabeled(tmp_path / "test", image_size=10, strict=True)
    with pytest.raises(ValueError, match="no images"):
        load_unlabeled(tmp_path, image_size=10)


# ---------------------------------------------------------------------------- end to end


def test_train_on_a_folder_with_strong_augmentation(tmp_path, make_classes):
    root = make_classes(tmp_path / "d", {"a": 12, "b": 12}, ext=".jpg")
    cfg = TrainConfig.from_flat(
        {
            "data.name": "folder",
            "data.root": str(root),
            "data.image_size": 16,
            "data.batch_size": 8,
            "data.augment": "strong",
            "data.cutmix": 0.5,
            "data.mixup": 0.5,
            "model.backbone": "small_cnn",
            "model.width": 4,
            "train.epochs": 2,
        }
    )
    result = train(cfg)
    assert result.status == "complete" and len(result.history) == 2
    assert all(np.isfinite(h["train_loss"]) for h in result.history)


# ------------------------------------------------------------------ cached statistics


def test_channel_statistics_are_cached_with_the_decoded_images(tmp_path, make_classes, monkeypatch):
    root = make_classes(tmp_path / "d", {"a": 6, "b": 6})
    calls = []
    real = trainer.data.channel_stats
    monkeypatch.setattr(trainer.data, "channel_stats", lambda x: calls.append(len(x)) or real(x))
    first = _load(_cfg(root))
    assert len(calls) == 1 and calls[0] == len(first.y_train)
    assert (first.mean, first.std) == real(first.x_train)

    second = _load(_cfg(root))  # another trial, another process: only the disk cache is left
    assert len(calls) == 1  # read back, not computed
    assert second.mean == first.mean and second.std == first.std  # exactly the same floats
    assert len(list(fo.cache_dir().glob("folder-8px-*.stats.json"))) == 1

    other_split = _load(_cfg(root, split_seed=1))  # other training images: their own entry
    assert len(calls) == 2 and (other_split.mean, other_split.std) == real(other_split.x_train)
    _load(_cfg(root, split_seed=1))
    assert len(calls) == 2

    for i, target in enumerate(sorted((root / "a").glob("*.png"))):  # class a turns red
        Image.new("RGB", (5, 5), (250, i, 0)).save(target)
        os.utime(target, ns=(1, 10**18))
    changed = _load(_cfg(root))  # a changed folder is a new cache: computed again
    assert len(calls) == 3 and (changed.mean, changed.std) == real(changed.x_train)
    assert changed.mean[0] > first.mean[0] + 0.1
    assert len(list(fo.cache_dir().glob("folder-8px-*.stats.json"))) == 1  # the stale one pruned
