"""search confirm, the final-results table, evaluate --split test, ablate --test: the test
split never reaches a search trial, confirmation resumes, statistics match scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
from conftest import TINY_DIGITS, one_error_line
from optuna.trial import TrialState
from PIL import Image
from scipy import stats

import search.experiments.companion as companion_mod
import trainer.data
from search.cli import main
from search.experiments.confirm import plan_confirm, run_confirm
from search.experiments.run import plan_run, run_study
from search.report.export import final_table
from search.report.progress import Progress
from search.report.runs import collect_confirm, confirm_name
from search.study.studyfile import load_study
from trainer import DataConfig
from trainer.data import load_test, split_record

CONF = TINY_DIGITS.replace("image_size = 8\n", "image_size = 8\ntest_fraction = 0.2\n")
QUIET = Progress(quiet=True)


def _search(name: str, url: str, n: int = 3) -> list[tuple]:
    run_study(plan_run(load_study(name), storage=url), n_trials=n, progress=QUIET)
    trials = optuna.load_study(study_name=name, storage=url).get_trials()
    return [
        (t.state, t.params, t.value, t.intermediate_values, t.user_attrs["curves"]["train_loss"])
        for t in trials
    ]


def _studies(url: str) -> set[str]:
    return {s.study_name for s in optuna.get_all_study_summaries(url, include_best_trial=False)}


def test_search_trials_are_unchanged_when_the_test_pixels_are_poisoned(
    write_study, tmp_path, monkeypatch
):
    """Digits with data.test_fraction: replace every test image by noise; the search's
    trials (parameters, values, per-epoch curves) stay identical to the last bit."""
    write_study("conf", CONF)
    clean = _search("conf", f"sqlite:///{tmp_path / 'a.db'}")
    cfg = DataConfig(name="digits", image_size=8, test_fraction=0.2)
    record = split_record(cfg)
    x_test_clean = load_test(cfg)[0].clone()

    import sklearn.datasets

    bunch = sklearn.datasets.load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    test_rows = {r.numpy().tobytes() for r in x_test_clean[:, 0]}
    test_idx = [i for i in range(len(pixels)) if pixels[i].tobytes() in test_rows]
    assert len(test_idx) == len(x_test_clean)
    noise = np.random.default_rng(0).integers(0, 17, size=(len(test_idx), 8, 8))
    bunch.images[test_idx] = noise
    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda *a, **k: bunch)
    trainer.data._load_cached.cache_clear()

    poisoned = _search("conf", f"sqlite:///{tmp_path / 'b.db'}")
    assert poisoned == clean
    now = split_record(cfg)  # the poison did reach the test split, and only it
    assert now["test"]["hash"] != record["test"]["hash"]
    assert now["train"] == record["train"] and now["val"] == record["val"]
    assert not np.array_equal(load_test(cfg)[0].numpy(), x_test_clean.numpy())


def _image_tree(root, classes: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((10, 10, 3), 70 * c + 30, dtype=np.int16)
            img += rng.integers(-25, 26, size=img.shape)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")


FOLDER = """
description = "image folder with a given test/ folder"
space = "digits"

[data]
name = "folder"
root = "{root}"
image_size = 8

[budget]
epochs = 2
patience = 0

[sampler]
name = "random"
seed = 0

[pruner]
name = "none"

[fixed]
"model.backbone" = "small_cnn"
"model.width" = 8
"data.batch_size" = 16
"""


@pytest.fixture
def folder_study(tmp_path, write_study):
    root = tmp_path / "imgs"
    _image_tree(root / "train", {"a": 8, "b": 8, "c": 8}, seed=0)
    _image_tree(root / "test", {"a": 3, "b": 3, "c": 3}, seed=1)
    write_study("fold", FOLDER.format(root=root))
    return root


def test_search_trials_are_unchanged_when_test_labels_and_pixels_are_poisoned(
    folder_study, tmp_path
):
    clean = _search("fold", f"sqlite:///{tmp_path / 'a.db'}", n=2)
    test = folder_study / "test"
    for d in ("a", "b", "c"):  # every test label wrong: a -> b -> c -> a
        (test / d).rename(test / f"old_{d}")
    for old, new in (("a", "b"), ("b", "c"), ("c", "a")):
        (test / f"old_{old}").rename(test / new)
    for p in test.rglob("*.png"):  # and every test pixel noise
        noise = np.random.default_rng(len(p.name)).integers(0, 256, (10, 10, 3), dtype=np.uint8)
        Image.fromarray(noise).save(p)
    trainer.data._load_cached.cache_clear()
    assert _search("fold", f"sqlite:///{tmp_path / 'b.db'}", n=2) == clean


def test_confirm_resumes_after_an_interrupt_with_only_the_missing_runs(
    write_study, storage_url, monkeypatch
):
    write_study("conf", CONF)
    _search("conf", storage_url)
    real = companion_mod.trainer.train
    calls: list[int] = []

    def flaky(cfg, **kw):
        calls.append(cfg.train.seed)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cfg, **kw)

    monkeypatch.setattr(companion_mod.trainer, "train", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_confirm(plan_confirm("conf", storage=storage_url, top=2, repeats=2), progress=QUIET)
    trials = optuna.load_study(study_name="conf.confirm", storage=storage_url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL]
    assert "interrupted" in trials[-1].user_attrs["reason"]

    calls.clear()
    monkeypatch.setattr(
        companion_mod.trainer, "train", lambda cfg, **kw: (calls.append(1), real(cfg, **kw))[1]
    )
    run_confirm(plan_confirm("conf", storage=storage_url, top=2, repeats=2), progress=QUIET)
    assert len(calls) == 2  # 2 configurations x 2 seeds, 2 were done
    done = [
        t
        for t in optuna.load_study(study_name="conf.confirm", storage=storage_url).trials
        if t.state == TrialState.COMPLETE
    ]
    assert len({(t.user_attrs["config_key"], t.user_attrs["seed"]) for t in done}) == 4
    search = optuna.load_study(study_name="conf", storage=storage_url)
    for t in done:  # fresh seeds, the source trial's configuration otherwise
        src = next(s for s in search.trials if s.number == t.user_attrs["source_trial"])
        assert t.user_attrs["seed"] not in (0,) and t.user_attrs["seed"] in (1, 2)
        cfg = t.user_attrs["config"]
        assert {**cfg, "train.seed": 0} == src.user_attrs["config"]
        assert 0.0 <= t.user_attrs["test_acc"] <= 1.0


def test_final_table_statistics_match_scipy_on_the_stored_values(write_study, storage_url):
    write_study("conf", CONF)
    _search("conf", storage_url)
    run_confirm(plan_confirm("conf", storage=storage_url, top=2, repeats=3), progress=QUIET)
    companion = optuna.load_study(study_name=confirm_name("conf"), storage=storage_url)
    table = final_table(companion)  # a fresh handle: storage only
    stored: dict[int, dict[int, tuple[float, float]]] = {}
    for t in companion.trials:
        a = t.user_attrs
        stored.setdefault(a["rank"], {})[a["seed"]] = (a["eval_val_acc"], a["test_acc"])
    publish = max(stored, key=lambda r: (np.mean([v for v, _ in stored[r].values()]), -r))
    assert table.rows[publish - 1][0].endswith("[publish]")
    for rank, row in zip(sorted(stored), table.raw, strict=True):
        seeds = sorted(stored[rank])
        for col, k in ((2, 0), (3, 1)):
            x = np.array([stored[rank][s][k] for s in seeds]) * 100
            lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
            assert row[col]["mean"] == pytest.approx(x.mean())
            assert row[col]["half_width"] == pytest.approx((hi - lo) / 2)
            assert row[col]["n"] == 3
            if rank == publish:
                assert row[col + 3] is None
                continue
            b = np.array([stored[publish][s][k] for s in seeds]) * 100
            res = stats.ttest_rel(x, b)
            assert row[col + 3]["mean"] == pytest.approx((x - b).mean())
            if np.ptp(x - b) > 0:
                assert row[col + 3]["p_value"] == pytest.approx(res.pvalue)
        search_value = optuna.load_study(study_name="conf", storage=storage_url).trials
        src = [t.value for t in search_value if t.value is not None]
        assert row[1] == pytest.approx(sorted(src, reverse=True)[rank - 1] * 100)


def test_confirm_cli_prints_and_exports_the_final_table(write_study, storage_url, tmp_path, capsys):
    write_study("conf", CONF)
    _search("conf", storage_url)
    code = main(["confirm", "--study", "conf", "--storage", storage_url, "-q", "--top", "2",
                 "--seeds", "7", "8"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "conf: final results" in out and "[publish]" in out and "Test acc" in out
    seeds = {t.user_attrs["seed"] for t in optuna.load_study(
        study_name="conf.confirm", storage=storage_url).trials}  # fmt: skip
    assert seeds == {7, 8}

    out_dir = tmp_path / "export"
    assert main(["export", "--study", "conf", "--storage", storage_url, "--out", str(out_dir)]) == 0
    data = json.loads((out_dir / "conf-final-results.json").read_text())
    assert len(data["records"]) == 2
    assert {"mean", "half_width", "n"} <= set(data["records"][0]["Test acc"])
    for ext in ("md", "csv", "tex", "html"):
        assert (out_dir / f"conf-final-results.{ext}").is_file()
    fig = (out_dir / "figures" / "confirmed-runs.html").read_text()
    assert "test (held out)" in fig and "seed 7" in fig

    capsys.readouterr()
    assert main(["evaluate", "--study", "conf", "--storage", storage_url, "--split", "test",
                 "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test" and sum(map(sum, report["confusion"])) == 360


def test_confirm_tta_views_are_runs_of_their_own_and_any_spelling_of_them_reuses_them(
    write_study, storage_url, capsys
):
    write_study("conf", CONF)
    _search("conf", storage_url, n=2)
    args = ["confirm", "--study", "conf", "--storage", storage_url, "-q", "--top", "1"]

    def runs() -> dict:
        trials = optuna.load_study(study_name="conf.confirm", storage=storage_url).trials
        return {t.user_attrs["tta"]: t.user_attrs for t in trials}

    assert main([*args, "--seeds", "7"]) == 0
    assert main([*args, "--seeds", "7", "--tta-views", "none"]) == 0  # identity only: no TTA
    assert "test-time augmentation" not in capsys.readouterr().out
    assert set(runs()) == {False}  # the no-TTA run reused, not trained again

    assert main([*args, "--seeds", "7", "--tta-views", "hflip,flips"]) == 0
    assert "final results with test-time augmentation (hflip,identity,vflip)" in (
        capsys.readouterr().out
    )
    assert set(runs()) == {False, "hflip,identity,vflip"}  # a second set of runs
    assert main([*args, "--seeds", "7", "--tta-views", "vflip,flips"]) == 0  # the same views
    assert main([*args, "--seeds", "7", "--tta"]) == 0
    assert main([*args, "--seeds", "7", "--tta-views", "seed000"]) == 0
    assert set(runs()) == {False, "hflip,identity,vflip", True}  # --tta and seed000 are one
    assert len(optuna.load_study(study_name="conf.confirm", storage=storage_url).trials) == 3


def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    write_study, storage_url, folder_study, capsys
):
    write_study("conf", CONF)
    write_study("plain", TINY_DIGITS)
    _search("conf", storage_url, n=2)
    _search("plain", storage_url, n=1)
    before = _studies(storage_url)
    cases = [
        (["--study", "nope"], "nope"),
        (["--study", "conf", "--top", "0"], "--top must be >= 1"),
        (["--study", "conf", "--repeats", "0"], "--repeats must be >= 1"),
        (["--study", "conf", "--seeds", "0", "1"], "fresh seeds"),
        (["--study", "conf", "--seeds", "x"], "--seeds takes integers"),
        (["--study", "conf.confirm"], "companion study"),
        (["--study", "plain"], "has no test split; set data.test_fraction"),
        (["--study", "conf", "--tta-views", "hflip,sideways"], "sideways"),
    ]
    for args, match in cases:
        capsys.readouterr()
        assert main(["confirm", "--storage", storage_url, *args]) == 2, args
        assert match in one_error_line(capsys)
    code = main(["evaluate", "--study", "plain", "--storage", storage_url, "--split", "test"])
    assert code == 2 and "has no test split" in one_error_line(capsys)
    assert _studies(storage_url) == before  # no companion study created

    _search("fold", storage_url, n=1)
    img = folder_study / "test" / "a" / "0.png"
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(img)  # the test set changed
    trainer.data._load_cached.cache_clear()
    capsys.readouterr()
    assert main(["confirm", "--study", "fold", "--storage", storage_url]) == 2
    assert "the test split of study 'fold' changed since the search" in one_error_line(capsys)
    code = main(["evaluate", "--study", "fold", "--storage", storage_url, "--split", "test"])
    assert code == 2 and "changed since the search" in one_error_line(capsys)
    assert "fold.confirm" not in _studies(storage_url)


ABLATION = """
[ablation]
repeats = 1
baseline = "defaults"

[ablation.fixed]
"optim.lr" = 0.003
"train.epochs" = 2

[ablation.factors]
"model.dropout" = [0.0, 0.5]
"""


def test_ablate_test_adds_a_test_row_from_the_same_runs(write_study, storage_url, capsys):
    write_study("conf", CONF + ABLATION)
    code = main(["ablate", "--study", "conf", "--storage", storage_url, "-q", "--test"])
    out = capsys.readouterr().out
    assert code == 0 and "| Test accuracy (held out)" in out
    trials = optuna.load_study(study_name="conf.ablation", storage=storage_url).trials
    # dropout 0.0 is the baseline itself (one shared run), 0.5 the other arm
    assert sorted(t.user_attrs["label"] for t in trials) == ["baseline", "model.dropout=0.5"]
    row = next(line for line in out.splitlines() if line.startswith("| Test accuracy"))
    cells = [c.strip() for c in row.strip("|").split("|")[1:]]
    for t in trials:  # one repeat: the cell is that run's test accuracy
        column = 0 if t.user_attrs["label"] == "baseline" else 1
        assert cells[column] == f"{t.user_attrs['test_acc'] * 100:.2f} (n=1)"

    write_study("plain", TINY_DIGITS + ABLATION)
    capsys.readouterr()
    assert main(["ablate", "--study", "plain", "--storage", storage_url, "--test"]) == 2
    assert "has no test split" in one_error_line(capsys)
    assert "plain.ablation" not in _studies(storage_url)


def test_ablate_test_tta_measures_the_views_on_the_same_models_as_a_table_of_its_own(
    write_study, storage_url, capsys
):
    write_study("conf", CONF + ABLATION)
    args = ["ablate", "--study", "conf", "--storage", storage_url, "-q", "--test"]
    assert main([*args, "--tta-views", "identity,hflip"]) == 0
    out = capsys.readouterr().out
    trials = optuna.load_study(study_name="conf.ablation", storage=storage_url).trials
    base = next(t for t in trials if t.user_attrs["label"] == "baseline").user_attrs
    assert base["tta_views"] == "hflip,identity" and 0.0 <= base["test_acc_tta"] <= 1.0
    assert "| Test accuracy with TTA (held out)" in out  # a row of every factor's table
    assert "Ablation: test-time augmentation" in out
    row = next(line for line in out.splitlines() if line.startswith("| Δ test acc, TTA"))
    diff = (base["test_acc_tta"] - base["test_acc"]) * 100  # one repeat: that model's gain
    assert [c.strip() for c in row.strip("|").split("|")][1:] == ["—", f"{diff:+.2f} (n=1)"]
    # the same views again: nothing is rerun; other views: each run is, with those views
    assert main([*args, "--tta-views", "hflip,identity"]) == 0
    assert len(optuna.load_study(study_name="conf.ablation", storage=storage_url).trials) == 2
    assert main([*args, "--tta"]) == 0
    runs = optuna.load_study(study_name="conf.ablation", storage=storage_url).trials
    assert len(runs) == 4 and all(t.user_attrs["tta_views"] is True for t in runs[2:])
    capsys.readouterr()
    assert main(["ablate", "--study", "conf", "--storage", storage_url, "--tta"]) == 2
    one_error_line(capsys, "--tta", "add --test")


TRANSFER_SRC = CONF.replace('name = "digits"\n', 'name = "digits"\nclasses = [0, 1, 2, 3, 4]\n')
TRANSFER = """
description = "transfer with a test split"
space = "transfer"

[data]
name = "digits"
image_size = 8
test_fraction = 0.2
classes = [5, 6, 7, 8, 9]

[budget]
epochs = 2
patience = 0

[sampler]
name = "random"
seed = 0

[pruner]
name = "none"

[fixed]
"model.pretrained" = "study:src"
"""


def test_confirm_works_for_a_transfer_study(write_study, storage_url):
    write_study("src", TRANSFER_SRC)
    write_study("dst", TRANSFER)
    _search("src", storage_url, n=1)
    _search("dst", storage_url, n=2)
    study = run_confirm(plan_confirm("dst", storage=storage_url, top=1, repeats=2), progress=QUIET)
    (config,) = collect_confirm(study)
    assert len(config["runs"]) == 2
    assert all(math.isfinite(r["test_acc"]) for r in config["runs"])
    cfg = study.trials[0].user_attrs["config"]
    assert cfg["model.pretrained"].endswith(".safetensors")  # the source study's checkpoint
