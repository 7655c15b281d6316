"""Errors that every trial of a study would hit are found before the first trial: one
``error:`` line, exit code 2, no storage written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_DIGITS

import trainer
from search.cli import main


def _run(url: str) -> int:
    return main(["run", "--study", "pre", "--trials", "3", "-q", "--storage", url])


def test_missing_imagenet_weights_offline_fail_before_any_trial(
    write_study, storage_url, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    write_study(
        "pre",
        TINY_DIGITS.replace('"model.backbone" = "small_cnn"', '"model.backbone" = "resnet18"')
        + '"model.pretrained" = "imagenet"\n',
    )
    assert _run(storage_url) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: backbone 'resnet18': ImageNet weights") and "\n" not in err
    assert not Path(storage_url.removeprefix("sqlite:///")).exists()


def test_a_backbone_that_cannot_take_the_image_size_is_named_before_any_trial(
    write_study, storage_url, capsys
):
    # drawn, not pinned: the check covers every backbone the space can draw
    study = TINY_DIGITS.replace('"model.backbone" = "small_cnn"\n', "") + (
        '[params]\n"model.backbone" = ["small_cnn", "vit_tiny_patch16_224"]\n'
    )
    write_study("pre", study)
    assert _run(storage_url) == 2
    err = capsys.readouterr().err.strip()
    assert "vit_tiny_patch16_224" in err and "8 px" in err and "data.image_size" in err
    assert "\n" not in err
    assert not Path(storage_url.removeprefix("sqlite:///")).exists()


@pytest.mark.parametrize("backbone", ["small_cnn", "seed_cnn", "mlp", "resnet18"])
def test_backbones_that_fit_pass_the_check(backbone, monkeypatch):
    import trainer.preflight as preflight

    ran: list[tuple[tuple[int, ...], tuple[int, ...]]] = []  # (input, output) shapes
    real_build = preflight.build_model

    def build_model(cfg, data, device):
        model = real_build(cfg, data, device)
        model.register_forward_hook(
            lambda m, args, out: ran.append((tuple(args[0].shape), tuple(out.shape)))
        )
        return model

    monkeypatch.setattr(preflight, "build_model", build_model)
    cfg = trainer.TrainConfig.from_flat({"model.backbone": backbone, "data.image_size": 16})
    data = trainer.load_data(cfg.data)
    assert trainer.check_model(cfg, data) is None  # no error
    # it built the model and ran two images of the study's size through it to class logits
    assert ran == [((2, data.in_chans, 16, 16), (2, data.num_classes))]
