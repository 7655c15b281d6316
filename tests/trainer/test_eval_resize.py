"""data.eval_resize: squash (the default) or short side to size/0.875 then a centre crop."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from PIL import Image

import trainer.data
from trainer import DataConfig, TrainConfig, load_data, read_checkpoint, train
from trainer.data import decode as dec
from trainer.data import load_test
from trainer.data import loaders as fo
from trainer.data.loaders import load_unlabeled
from trainer.data.resize import resize_pil, resize_uint8
from trainer.evaluate import accuracy

# (width, height, size): landscape, portrait, odd margins on both sides, a square
SHAPES = [(40, 25, 16), (25, 41, 16), (30, 17, 12), (100, 37, 32), (13, 9, 8), (20, 20, 8)]


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _torchvision_center_crop(im: Image.Image, size: int) -> np.ndarray:
    ref = T.Compose([T.Resize(math.floor(size / 0.875)), T.CenterCrop(size)])(im)
    return np.asarray(ref).transpose(2, 0, 1)


def _rows(x: torch.Tensor | np.ndarray) -> set[str]:
    a = x.numpy() if isinstance(x, torch.Tensor) else x
    return {hashlib.sha1(np.ascontiguousarray(r).tobytes()).hexdigest() for r in a}


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="folder", root=str(root), image_size=kw.pop("image_size", 8), **kw)


def _fresh(cfg: DataConfig):
    trainer.data._load_cached.cache_clear()  # a new process: only the disk cache remains
    return load_data(cfg)


@pytest.mark.parametrize(("w", "h", "size"), SHAPES)
def test_center_crop_on_pil_equals_torchvision_resize_short_side_then_center_crop(w, h, size):
    im = _image(w, h)
    got = np.asarray(resize_pil(im, size, "center_crop")).transpose(2, 0, 1)
    assert got.shape == (3, size, size)
    assert np.array_equal(got, _torchvision_center_crop(im, size))


@pytest.mark.parametrize(("w", "h", "size"), SHAPES)
def test_center_crop_on_uint8_tensors_equals_torchvision_geometry(w, h, size):
    x = torch.from_numpy(np.asarray(_image(w, h)).copy()).permute(2, 0, 1)[None]
    short = math.floor(size / 0.875)
    ref = TF.center_crop(TF.resize(x.float(), [short], antialias=True), [size])
    ref = ref.round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(resize_uint8(x, size, "center_crop"), ref)


def test_squash_is_the_default_and_unknown_protocols_are_refused():
    im = _image(30, 17)
    assert DataConfig().eval_resize == "squash"
    squashed = np.asarray(resize_pil(im, 8))
    assert np.array_equal(squashed, np.asarray(im.resize((8, 8), Image.Resampling.BILINEAR)))
    with pytest.raises(
        ValueError, match="unknown data.eval_resize .crop.. Did you mean .center_crop."
    ):
        DataConfig(eval_resize="crop")
    with pytest.raises(ValueError, match="data.eval_resize"):
        resize_pil(im, 8, "crop")


def test_decoding_a_file_with_center_crop_gives_torchvision_pixels(tmp_path):
    im = _image(40, 25, seed=3)
    im.save(tmp_path / "a.png")
    img, why, _ = dec._decode_file(str(tmp_path / "a.png"), 16, fo.MAX_PIXELS, "center_crop")
    assert why is None
    assert np.array_equal(img, _torchvision_center_crop(im, 16))


def _split_folder(root: Path) -> dict[str, list[Image.Image]]:
    """train/ and val/ given, non-square images of several shapes."""
    made: dict[str, list[Image.Image]] = {"train": [], "val": []}
    seed = 0
    for split, n in (("train", 4), ("val", 2)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                seed += 1
                im = _image(20 + 7 * (seed % 3), 13 + 5 * (seed % 4), seed=seed)
                im.save(root / split / cls / f"{i}.png")
                made[split].append(im)
    return made


def test_center_crop_changes_only_the_validation_images(tmp_path):
    made = _split_folder(tmp_path / "d")
    squash = load_data(_cfg(tmp_path / "d"))
    crop = _fresh(_cfg(tmp_path / "d", eval_resize="center_crop"))
    assert torch.equal(squash.x_train, crop.x_train)
    assert torch.equal(squash.y_val, crop.y_val) and squash.splits == crop.splits
    assert squash.mean == crop.mean and squash.std == crop.std  # from the training images
    assert _rows(crop.x_val) == _rows(
        np.stack([_torchvision_center_crop(im, 8) for im in made["val"]])
    )
    assert _rows(crop.x_val).isdisjoint(_rows(squash.x_val))
    # training images stay a view of the shared squash mapping (all 12 rows, nothing copied);
    # the cropped validation images are a mapping of their own (4 rows)
    row = 3 * 8 * 8
    assert crop.x_train.untyped_storage().nbytes() == 12 * row
    assert crop.x_val.untyped_storage().nbytes() == 4 * row


def test_each_protocol_has_its_own_cache_and_reuses_it(tmp_path, monkeypatch):
    _split_folder(tmp_path / "d")
    calls = []
    real = dec._decode_file
    monkeypatch.setattr(dec, "_decode_file", lambda *a: calls.append(a) or real(*a))
    squash = load_data(_cfg(tmp_path / "d"))
    assert len(calls) == 12 and {a[3] for a in calls} == {"squash"}
    calls.clear()
    crop = _fresh(_cfg(tmp_path / "d", eval_resize="center_crop"))
    assert len(calls) == 4 and {a[3] for a in calls} == {"center_crop"}  # the val files only
    calls.clear()
    again = _fresh(_cfg(tmp_path / "d", eval_resize="center_crop"))
    back = _fresh(_cfg(tmp_path / "d"))
    assert calls == []  # both protocols come from their caches, neither evicted the other
    assert torch.equal(again.x_val, crop.x_val) and torch.equal(back.x_val, squash.x_val)
    assert len(list(fo.cache_dir().glob("folder-8px-centercrop-*.npy"))) == 1
    _fresh(_cfg(tmp_path / "d", eval_resize="center_crop", image_size=6))  # another size
    assert {a[1] for a in calls} == {6}


def test_test_split_and_unlabeled_images_use_the_protocol(tmp_path):
    root = tmp_path / "d"
    images = {}
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            im = _image(31, 18, seed=len(images))
            im.save(root / cls / f"{i}.png")
            images[f"{cls}/{i}.png"] = im
    cfg = _cfg(root, eval_resize="center_crop", test_fraction=0.2)
    x_test, _ = load_test(cfg)
    expected = _rows(np.stack([_torchvision_center_crop(im, 8) for im in images.values()]))
    assert len(x_test) == 4 and _rows(x_test) <= expected
    x, names = load_unlabeled(root / "a", image_size=8, eval_resize="center_crop")
    assert names == [f"{i}.png" for i in range(10)]
    for row, name in zip(x, names, strict=True):
        assert np.array_equal(row.numpy(), _torchvision_center_crop(images[f"a/{name}"], 8))


def test_digits_center_crop_changes_validation_not_training():
    squash = load_data(DataConfig(image_size=16))
    crop = load_data(DataConfig(image_size=16, eval_resize="center_crop"))
    assert torch.equal(squash.x_train, crop.x_train) and torch.equal(squash.y_val, crop.y_val)
    assert crop.x_val.shape == squash.x_val.shape and not torch.equal(crop.x_val, squash.x_val)


def test_a_center_crop_run_validates_on_the_crops_end_to_end(tmp_path):
    """The class shows only in the left and right edges, which the centre crop cuts off:
    the model learns the squashed training images while validation, on the crops, stays at
    chance (on squashed images it reaches 1.0)."""
    root = tmp_path / "d"
    for c, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for i in range(30):
            rng = np.random.default_rng(100 * c + i)
            a = np.full((18, 30, 3), 128, dtype=np.int16) + rng.integers(-20, 21, (18, 30, 3))
            a[:, :5] = a[:, -5:] = 30 + 190 * c  # dark or bright edges; the middle is alike
            Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(root / cls / f"{i}.png")
    cfg = TrainConfig.from_flat(
        {
            "data.name": "folder",
            "data.root": str(root),
            "data.image_size": 12,
            "data.batch_size": 8,
            "data.test_fraction": 0.25,
            "data.eval_resize": "center_crop",
            "model.backbone": "small_cnn",
            "model.width": 4,
            "optim.lr": 0.01,
            "train.epochs": 6,
        }
    )
    result = train(cfg, checkpoint_path=tmp_path / "best.safetensors")
    history = result.history
    # the training images (squashed, edges in view) are learned; the cropped validation
    # images stay at chance, as they would not if validation saw the edges
    assert history[-1]["train_acc"] >= 0.9, history
    best = max(h["val_acc"] for h in history)
    assert best <= 0.6, history
    data = load_data(cfg.data)
    kw = {"mean": data.mean, "std": data.std}
    # the best epoch's weights are restored: its validation accuracy is the cropped images'
    assert accuracy(result.model, data.x_val, data.y_val, **kw) == best
    x_test, y_test = load_test(cfg.data)
    assert len(y_test) == 15
    # the held-out test images are cropped too: a model trained and validated on squashed
    # images (edges in view) recognises the squashed test images and not the cropped ones
    squash = cfg.replace({"data.eval_resize": "squash"})
    seen = train(squash)
    assert max(h["val_acc"] for h in seen.history) >= 0.9, seen.history
    x_squashed, y_squashed = load_test(squash.data)
    assert torch.equal(y_squashed, y_test)  # the same test images, resized otherwise
    assert accuracy(seen.model, x_squashed, y_squashed, **kw) >= 0.9
    assert accuracy(seen.model, x_test, y_test, **kw) <= 0.6
    _, meta = read_checkpoint(result.checkpoint)
    assert meta["config"]["data.eval_resize"] == "center_crop"  # what predict reads back


@pytest.mark.parametrize("size", [32, 48, 64, 100, 224, 288])
def test_center_crop_short_side_is_timms_evaluation_scale_size(size):
    from timm.data import create_transform

    from trainer.data.resize import eval_short_side

    tf = create_transform(size, is_training=False, crop_pct=0.875)
    resize = next(t for t in tf.transforms if type(t).__name__ == "Resize")
    want = resize.size if isinstance(resize.size, int) else resize.size[0]
    assert eval_short_side(size) == want
