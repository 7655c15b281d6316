"""``search init DIR``: generated folders of each layout, the per-trial limit, the same file
twice, the real probe once, and the folders it refuses (one ``error:`` line, exit 2)."""

from __future__ import annotations

import csv
import functools
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import search.experiments.init as si
from search.cli import main
from search.study.studyfile import load_study
from trainer.throughput import Throughput

# Fake training speeds at 64 px (images/s); a probe at size S gets (64 / S)^2 of it, as
# real costs grow with the pixel count. Only these figures decide what fits in the tests.
SPEED_AT_64 = {
    "seed_cnn": 100.0,
    "small_cnn": 50.0,
    "resnet18": 3.0,
    "resnet34": 1.0,
    "efficientnet_b2": 1.5,
    "resnet50": 0.5,
}


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(load_sample_images().images)  # china.jpg, flower.jpg: 427 x 640 RGB


def _photo(path: Path, *, cls: int, seed: int, size: int = 100) -> Path:
    """A crop of one of scikit-learn's two sample photos (the class), as a JPEG."""
    rng = np.random.default_rng(seed)
    src = _photos()[cls % 2]
    side = int(rng.integers(80, 240))
    y = int(rng.integers(0, src.shape[0] - side))
    x = int(rng.integers(0, src.shape[1] - side))
    crop = Image.fromarray(src[y : y + side, x : x + side])
    if cls >= 2:  # a third class: the same photos, mirrored and darker
        crop = Image.fromarray((np.asarray(crop)[:, ::-1] * 0.6).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    crop.resize((size, size)).save(path, quality=90)
    return path


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _photo(root / name / f"{i}.jpg", cls=c, seed=100 * c + i)
    return root


def make_flat(root: Path, counts: dict[int, int]) -> Path:
    for c, n in counts.items():
        for i in range(n):
            _photo(root / f"{c}_{i:03d}.jpg", cls=c, seed=100 * c + i)
    return root


def make_csv(root: Path, counts: dict[str, int]) -> Path:
    rows = []
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _photo(root / "img" / f"{name}{i}.jpg", cls=c, seed=100 * c + i)
            rows.append((f"img/{name}{i}.jpg", name))
    manifest = root / "labels.csv"
    with manifest.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return manifest


@pytest.fixture
def fake_speed(monkeypatch):
    """Replace the measurement with SPEED_AT_64 (times a factor); count the probes."""
    state = {"calls": 0, "factor": 1.0}

    def measure(cfg, *, num_classes, in_chans=3, steps=3, warmup=1, max_seconds=20.0):
        state["calls"] += 1
        size = cfg.data.image_size
        ips = SPEED_AT_64[cfg.model.backbone] * (64 / size) ** 2 * state["factor"]
        return Throughput(ips, "cpu:test", cfg.data.batch_size, steps)

    monkeypatch.setattr(si, "measure_throughput", measure)
    return state


def _init(*args: str) -> int:
    return main(["init", *args])


def _trial_minutes(ips: float, n_train: int, n_val: int, epochs: int = 10) -> float:
    return (epochs * (n_train + n_val / 3) / ips + si.TRIAL_OVERHEAD_S) / 60


# --------------------------------------------------------------------------- the layouts


@pytest.mark.parametrize("layout", ["folder", "flat", "csv"])
def test_each_layout_gives_a_study_file_that_load_study_accepts(
    layout, tmp_path, fake_speed, capsys
):
    counts = {"china": 10, "flower": 10}
    if layout == "folder":
        root = make_folder(tmp_path / "photos", counts)
    elif layout == "flat":
        root = make_flat(tmp_path / "photos", {0: 10, 1: 10})
    else:
        root = make_csv(tmp_path / "photos", counts)
    assert _init(str(root), "--name", "mine") == 0
    raw = tomllib.loads(Path("studies/mine.toml").read_text())
    assert raw["data"]["name"] == layout
    assert raw["data"]["root"] == str(root.resolve())
    assert set(raw["params"]) >= {"model.backbone", "data.batch_size", "optim.lr"}
    assert raw["sampler"]["name"] == "tpe" and isinstance(raw["sampler"]["seed"], int)
    assert set(raw["budget"]) == {"epochs", "patience", "max_trial_minutes", "wall", "refit"}

    spec = load_study("mine")  # the study file parser accepts all of it
    assert spec.data["name"] == layout and spec.data["image_size"] == raw["data"]["image_size"]
    assert spec.raw_params == raw["params"]
    assert spec.budget["wall"] == "10m"
    out = capsys.readouterr().out
    assert f"layout {layout}" in out and "20 in 2 classes" in out
    assert "wrote    studies/mine.toml" in out


def test_the_default_name_is_the_folders_and_the_flat_class_names_are_ids(
    tmp_path, fake_speed, capsys
):
    root = make_flat(tmp_path / "My Photos", {3: 6, 10: 6})
    assert _init(str(root)) == 0
    assert Path("studies/my_photos.toml").is_file()
    assert "12 in 2 classes: 3 6, 10 6" in capsys.readouterr().out


def test_a_given_train_val_split_is_used_as_training_uses_it(tmp_path, fake_speed, capsys):
    root = tmp_path / "split"
    make_folder(root / "train", {"china": 8, "flower": 8})
    make_folder(root / "val", {"china": 3, "flower": 3})
    assert _init(str(root)) == 0
    out = capsys.readouterr().out
    assert "(layout folder, given train/val split)" in out
    assert "16 train / 6 val" in out
    raw = tomllib.loads(Path("studies/split.toml").read_text())
    assert raw["data"]["root"] == str(root.resolve()) and "val_fraction" not in raw["data"]


# --------------------------------------------------------------------------- the choices


def test_only_backbones_under_the_per_trial_limit_are_kept(tmp_path, fake_speed, capsys):
    root = make_folder(tmp_path / "photos", {"china": 15, "flower": 15})
    assert _init(str(root), "--budget", "10m") == 0  # limit: 10 min / 4 = 2.5 min
    raw = tomllib.loads(Path("studies/photos.toml").read_text())
    out = capsys.readouterr().out
    # 100 px images: resnet18 needs 1.53 min at 64 px and 3.33 min at 96 px (24 + 6 images)
    assert raw["data"]["image_size"] == 64
    assert "resnet18 ~1.5 min per trial at 64 px here, ~3.3 min at 96 px (limit 2.5 min)" in out
    minutes = {b: _trial_minutes(ips, 24, 6) for b, ips in SPEED_AT_64.items()}
    want = [b for b in si.CANDIDATES if minutes[b] <= 2.5]
    assert want == ["seed_cnn", "small_cnn", "resnet18"]
    assert raw["params"]["model.backbone"] == want
    assert raw["budget"]["max_trial_minutes"] == 2.5
    assert "resnet34         left out: ~4.4 min per trial here at 64 px (limit 2.5 min)" in out
    assert (  # deeper than an over-the-limit resnet34: not worth a probe
        "resnet50         left out, not probed: deeper than resnet34 (~4.4 min per trial, "
        "limit 2.5 min)" in out
    )
    assert (
        "# left out: resnet34 ~4 min, efficientnet_b2 ~3 min, resnet50 (deeper than resnet34)"
        in (Path("studies/photos.toml").read_text())
    )
    assert "efficientnet_b2  left out: ~3 min per trial" in out
    # the first trial: the cheapest kept backbone, a result within the budget's first minutes
    assert raw["enqueue"][0]["model.backbone"] == min(want, key=minutes.get) == "seed_cnn"


def test_a_longer_budget_buys_larger_images_and_every_backbone(tmp_path, fake_speed):
    root = make_folder(tmp_path / "photos", {"china": 15, "flower": 15})
    assert _init(str(root), "--budget", "2h") == 0  # limit 30 min
    raw = tomllib.loads(Path("studies/photos.toml").read_text())
    assert raw["data"]["image_size"] == 96  # the images' own size: no upsampling
    assert raw["params"]["model.backbone"] == list(si.CANDIDATES)
    # the top rung: three brackets of 9 trials of the median backbone fit 90 min, of 27 not
    assert raw["budget"] == {
        "epochs": 18, "patience": 3, "max_trial_minutes": 30.0, "wall": "2h", "refit": 0.25
    }  # fmt: skip


def test_when_nothing_fits_epochs_drop_and_the_fastest_backbone_stays(tmp_path, fake_speed, capsys):
    fake_speed["factor"] = 0.001  # a very slow device
    root = make_folder(tmp_path / "photos", {"china": 15, "flower": 15})
    assert _init(str(root), "--budget", "1m") == 0
    raw = tomllib.loads(Path("studies/photos.toml").read_text())
    assert raw["data"]["image_size"] == 32  # the smallest useful size
    assert raw["budget"]["epochs"] == si.MIN_EPOCHS
    assert raw["params"]["model.backbone"] == ["seed_cnn"]
    out = capsys.readouterr().out
    assert "epochs lowered from 10 to 3" in out and "kept anyway" in out


def test_imbalanced_classes_add_the_focal_loss(tmp_path, fake_speed, capsys):
    root = make_folder(tmp_path / "photos", {"china": 16, "flower": 4})
    assert _init(str(root)) == 0
    raw = tomllib.loads(Path("studies/photos.toml").read_text())
    assert raw["params"]["loss.name"] == ["ce", "focal"]
    assert "imbalanced (4.0:1)" in capsys.readouterr().out
    balanced = make_folder(tmp_path / "even", {"china": 10, "flower": 10})
    assert _init(str(balanced)) == 0
    assert "loss.name" not in tomllib.loads(Path("studies/even.toml").read_text())["params"]


def test_corrupt_files_are_reported_and_the_training_cache_is_filled(
    tmp_path, fake_speed, capsys, monkeypatch
):
    root = make_folder(tmp_path / "photos", {"china": 10, "flower": 10})
    good = (root / "china" / "0.jpg").read_bytes()
    (root / "china" / "cut.jpg").write_bytes(good[: len(good) // 3])  # header fine, data cut
    (root / "flower" / "empty.png").write_bytes(b"")
    assert _init(str(root)) == 0
    out = capsys.readouterr().out
    assert "bad      2 unreadable, skipped by training:" in out
    assert "china/cut.jpg (truncated)" in out and "flower/empty.png (zero-byte file)" in out

    import trainer.data
    import trainer.data.decode
    import trainer.data.loaders

    def no_decoding(*args, **kwargs):
        raise AssertionError("training decoded the folder again")

    monkeypatch.setattr(trainer.data.decode, "_build", no_decoding)
    trainer.data._load_cached.cache_clear()
    spec = load_study("photos")
    cfg = trainer.DataConfig(
        name="folder", root=spec.data["root"], image_size=spec.data["image_size"]
    )
    with pytest.warns(trainer.data.loaders.BadImageWarning):
        data = trainer.load_data(cfg)  # from the cache that init filled
    assert len(data.y_train) + len(data.y_val) == 20


# ------------------------------------------------------------------- the same file twice


def test_running_twice_gives_the_same_file_from_the_probe_cache(tmp_path, fake_speed, capsys):
    root = make_folder(tmp_path / "photos", {"china": 12, "flower": 12})
    assert _init(str(root), "--out", "a.toml") == 0
    first_calls = fake_speed["calls"]
    # resnet18's size probe at 64 px is reused; resnet50 is deeper than a too-slow resnet34
    assert first_calls == len(si.CANDIDATES) - 1

    fake_speed["factor"] = 0.5  # the device got busier: a new probe would choose otherwise
    assert _init(str(root), "--out", "b.toml") == 0
    assert fake_speed["calls"] == first_calls  # nothing measured again
    assert Path("a.toml").read_text() == Path("b.toml").read_text()

    assert _init(str(root), "--out", "c.toml", "--remeasure") == 0
    assert fake_speed["calls"] == 2 * first_calls  # each probe once more, the new figures
    assert Path("c.toml").read_text() != Path("a.toml").read_text()
    cache = json.loads(si.probe_cache_path().read_text())
    probed = [v for b, v in SPEED_AT_64.items() if b != "resnet50"]
    assert sorted(cache.values()) == sorted(0.5 * v for v in probed)


def test_an_existing_study_file_is_kept_unless_force(tmp_path, fake_speed, capsys):
    root = make_folder(tmp_path / "photos", {"china": 8, "flower": 8})
    out = Path("studies/photos.toml")
    out.parent.mkdir()
    out.write_text("# mine\n")
    calls = fake_speed["calls"]
    assert _init(str(root)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out} already exists; pass --force to overwrite it, or --name NEW"]
    assert out.read_text() == "# mine\n" and fake_speed["calls"] == calls  # refused at once
    assert _init(str(root), "--force") == 0
    assert out.read_text().startswith("# Written by `search init")


# -------------------------------------------------------------------------- bad folders


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def _one_class(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "cats", {"cat": 6})


def _unreadable(tmp_path: Path) -> Path:
    for c in ("a", "b"):
        for i in range(3):
            path = tmp_path / "junk" / c / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not an image at all")
    return tmp_path / "junk"


def _truncated(tmp_path: Path) -> Path:
    root = make_folder(tmp_path / "cut", {"a": 3, "b": 3})
    for path in root.rglob("*.jpg"):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 4])  # headers readable, pixels not
    return root


def _loose_images(tmp_path: Path) -> Path:
    for i in range(4):
        _photo(tmp_path / "loose" / f"IMG_{i}.jpg", cls=i, seed=i)
    return tmp_path / "loose"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_empty, "no images in"),
        (_one_class, "has one class (cat) with readable images; a classifier needs at least 2"),
        (_unreadable, "none of the 6 image files under"),
        (_truncated, "none of the 6 image files under"),
        (_loose_images, "carry no class"),
    ],
)
def test_bad_folders_are_one_error_line_exit_2_and_nothing_written(
    make, message, tmp_path, fake_speed, capsys
):
    root = make(tmp_path)
    assert _init(str(root), "--name", "bad") == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not Path("studies").exists()
    assert "wrote" not in captured.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "soon"], "--budget must be a duration such as 30m"),
        (["--budget", "0m"], "--budget must be more than 0 seconds"),
        (["--name", "../x"], "study name '../x' must be letters"),
        (["--out", "study.yaml"], "must end in .toml"),
    ],
)
def test_bad_arguments_are_refused_before_the_scan(args, message, tmp_path, fake_speed, capsys):
    root = make_folder(tmp_path / "photos", {"china": 4, "flower": 4})
    assert _init(str(root), *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert fake_speed["calls"] == 0 and not Path("studies").exists()


# --------------------------------------------------------------------- the real probe


def test_the_real_probe_measures_this_device_and_caches_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(si, "CANDIDATES", ("seed_cnn", "small_cnn"))
    monkeypatch.setattr(si, "REFERENCE", "seed_cnn")
    monkeypatch.setattr(si, "PROBE_STEPS", 1)
    monkeypatch.setattr(si, "PROBE_WARMUP", 1)
    root = tmp_path / "tiny"
    for c, name in enumerate(("a", "b")):
        for i in range(6):
            _photo(root / name / f"{i}.png", cls=c, seed=i, size=16)
    assert _init(str(root), "--budget", "2h") == 0
    raw = tomllib.loads(Path("studies/tiny.toml").read_text())
    assert raw["data"]["image_size"] == 16  # the images' own size
    assert raw["params"]["model.backbone"] == ["seed_cnn", "small_cnn"]
    cache = json.loads(si.probe_cache_path().read_text())
    keys = [json.loads(k) for k in cache]
    assert {k[2] for k in keys} == {"seed_cnn", "small_cnn"}
    assert all(k[0].startswith(("cpu:", "cuda:")) and k[3] == 16 for k in keys)
    assert all(v > 0 for v in cache.values())
    out = capsys.readouterr().out
    assert "seed_cnn         kept: " in out and "images/s" in out


def test_the_written_study_runs(tmp_path, fake_speed, monkeypatch, storage_url, capsys):
    import optuna

    monkeypatch.setattr(si, "CANDIDATES", ("seed_cnn", "small_cnn"))
    monkeypatch.setattr(si, "REFERENCE", "seed_cnn")
    root = tmp_path / "small"
    for c, name in enumerate(("a", "b")):
        for i in range(8):
            _photo(root / name / f"{i}.jpg", cls=c, seed=i, size=20)
    assert _init(str(root)) == 0
    assert main(["run", "--study", "small", "--trials", "1", "-q", "--storage", storage_url]) == 0
    trial = optuna.load_study(study_name="small", storage=storage_url).trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    config = trial.user_attrs["config"]
    assert config["model.backbone"] == "seed_cnn"  # the enqueued first trial: the cheapest
    assert config["data.image_size"] == 16 and config["data.name"] == "folder"
    written = tomllib.loads(Path("studies/small.toml").read_text())
    assert config["train.epochs"] == written["budget"]["epochs"]  # the top rung


def test_the_size_line_and_the_backbone_table_quote_the_same_resnet18_minutes(
    tmp_path, fake_speed, capsys
):
    # 8 of 40 files have a readable header but cut data: the size is chosen from the 40 the
    # header scan counts, the table from the 32 that decode; both lines quote the 32
    root = make_folder(tmp_path / "photos", {"china": 16, "flower": 16})
    for cls in ("china", "flower"):
        good = (root / cls / "0.jpg").read_bytes()
        for i in range(4):
            (root / cls / f"cut{i}.jpg").write_bytes(good[: len(good) // 3])
    assert _init(str(root), "--budget", "10m") == 0
    out = capsys.readouterr().out
    size_line = next(line for line in out.splitlines() if line.startswith("size "))
    table_line = next(line for line in out.splitlines() if line.strip().startswith("resnet18 "))
    assert "resnet18 ~1.6 min per trial at 64 px here" in size_line, size_line
    assert "resnet18         kept: ~1.6 min per trial" in table_line, table_line
