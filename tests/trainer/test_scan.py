"""Scanning a folder before training: layout detection, the listing training uses, header
sizes, and the decoding pass whose cache training then reads."""

from __future__ import annotations

import pytest

import trainer.data
from trainer import DataConfig, load_data
from trainer.data import decode as dec
from trainer.data import loaders as fo


def test_layouts_are_detected_with_the_data_root_that_reads_them(tmp_path, make_classes, write_img):
    make_classes(tmp_path / "a", {"cat": 2, "dog": 2})
    assert fo.detect_layout(tmp_path / "a") == ("folder", (tmp_path / "a").resolve())
    make_classes(tmp_path / "b" / "train", {"cat": 2, "dog": 2})
    make_classes(tmp_path / "b" / "val", {"cat": 1, "dog": 1})
    assert fo.detect_layout(tmp_path / "b")[0] == "folder"
    write_img(tmp_path / "c" / "3_001.png")
    write_img(tmp_path / "c" / "10_002.png")
    assert fo.detect_layout(tmp_path / "c")[0] == "flat"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "labels.csv").write_text("path,label\n")
    assert fo.detect_layout(tmp_path / "d") == ("csv", (tmp_path / "d" / "labels.csv").resolve())
    assert fo.detect_layout(tmp_path / "d" / "labels.csv")[0] == "csv"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p, w: p.mkdir(), "no images in"),
        (lambda p, w: w(p / "photo.png"), "carry no class"),
        (lambda p, w: None, "does not exist"),
        (lambda p, w: p.write_text("x"), "is a file; pass an image folder or a manifest .csv"),
    ],
)
def test_undetectable_folders_are_one_line_errors(tmp_path, write_img, setup, message):
    root = tmp_path / "x"
    setup(root, write_img)
    with pytest.raises(ValueError, match=message):
        fo.detect_layout(root)


def test_scan_lists_like_training_and_reads_header_sizes(tmp_path, make_classes, write_img):
    root = make_classes(tmp_path / "d", {"cat": 2, "dog": 3})
    write_img(root / "dog" / "wide.png", size=(40, 10))
    (root / "cat" / "zero.png").write_bytes(b"")
    scan = fo.scan_folder(root)
    assert scan.layout == "folder" and scan.is_val is None and scan.classes == ["cat", "dog"]
    names = [scan.name(i) for i in range(len(scan.files))]
    assert names == [
        "cat/img0.png",
        "cat/img1.png",
        "cat/zero.png",
        "dog/img0.png",
        "dog/img1.png",
        "dog/img2.png",
        "dog/wide.png",
    ]
    assert scan.sizes[names.index("dog/wide.png")] == (40, 10)
    assert scan.sizes[names.index("cat/zero.png")] is None
    assert scan.sizes[0] == (24, 20)


def test_unreadable_files_decode_into_the_cache_that_training_reads(
    tmp_path, make_classes, monkeypatch
):
    root = make_classes(tmp_path / "d", {"cat": 5, "dog": 5})
    good = (root / "cat" / "img0.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(good[:60])
    scan = fo.scan_folder(root)
    bad = fo.unreadable_files(scan, image_size=8)
    assert [(scan.name(i), why) for i, why in bad.items()] == [("dog/cut.png", "truncated")]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded twice")

    monkeypatch.setattr(dec, "_build", no_decoding)
    trainer.data._load_cached.cache_clear()
    with pytest.warns(fo.BadImageWarning, match="dog/cut.png"):
        data = load_data(DataConfig(name="folder", root=str(root), image_size=8))
    assert len(data.y_train) + len(data.y_val) == 10


def test_scan_refuses_a_layout_that_does_not_match_the_path(tmp_path, make_classes):
    root = make_classes(tmp_path / "d", {"cat": 2, "dog": 2})
    with pytest.raises(ValueError, match="layout csv needs the .csv"):
        fo.scan_folder(root, layout="csv")
    with pytest.raises(ValueError, match="layout must be folder, flat or csv"):
        fo.scan_folder(root, layout="zip")
