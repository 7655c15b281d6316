"""Test-time views: each does what its name says, sets expand, identity-only equals no TTA."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from trainer.evaluate import (
    DEFAULT_TTA,
    TTA_SETS,
    _views,
    accuracy,
    list_tta_views,
    predict_logits,
    tta_key,
    tta_views,
)


def _images(n: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def test_flips_mirror_the_image():
    x = _images()
    assert torch.equal(_views()["hflip"](x), x.flip(-1))  # left-right
    assert torch.equal(_views()["vflip"](x), x.flip(-2))  # upside down
    assert torch.equal(_views()["identity"](x), x)


@pytest.mark.parametrize(("name", "degrees"), [("rotate_p10", 10.0), ("rotate_m10", -10.0)])
def test_rotations_turn_a_point_about_the_centre_counter_clockwise(name, degrees):
    size, r = 33, 12
    x = torch.zeros(1, 1, size, size)
    c = (size - 1) / 2
    x[0, 0, int(c), int(c) + r] = 1.0  # a dot to the right of the centre
    out = _views()[name](x)[0, 0]
    row, col = divmod(int(out.argmax()), size)
    a = math.radians(degrees)  # counter-clockwise on screen: up (smaller row) for a > 0
    assert (row, col) == (round(c - r * math.sin(a)), round(c + r * math.cos(a)))


def test_color_raises_brightness_and_contrast_by_a_tenth():
    flat = torch.full((1, 3, 8, 8), 0.5)
    torch.testing.assert_close(_views()["color"](flat), torch.full_like(flat, 0.55))
    assert float(_views()["color"](torch.full_like(flat, 0.95)).max()) == 1.0  # clamped


def test_blur_is_a_5x5_gaussian_of_sigma_1():
    x = torch.zeros(1, 1, 11, 11)
    x[0, 0, 5, 5] = 1.0
    g = torch.exp(-(torch.arange(-2.0, 3.0) ** 2) / 2)
    g = g / g.sum()
    expected = torch.zeros(11, 11)
    expected[3:8, 3:8] = torch.outer(g, g)
    torch.testing.assert_close(_views()["blur"](x)[0, 0], expected)


@pytest.mark.parametrize(
    ("name", "rows", "cols"),
    [
        ("crop_tl", slice(0, 14), slice(0, 14)),
        ("crop_tr", slice(0, 14), slice(2, 16)),
        ("crop_bl", slice(2, 16), slice(0, 14)),
        ("crop_br", slice(2, 16), slice(2, 16)),
        ("crop_center", slice(1, 15), slice(1, 15)),
    ],
)
def test_crops_keep_seven_eighths_of_the_side_at_their_corner(name, rows, cols):
    x = torch.zeros(1, 1, 16, 16)
    x[..., rows, cols] = 1.0  # ones exactly where this crop looks
    out = _views()[name](x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, torch.ones_like(out))
    others = [v for v in TTA_SETS["crops"] if v != name]
    for other in others:  # every other crop sees some zeros
        assert float(_views()[other](x).min()) < 0.5


def test_view_specs_resolve_to_names_in_order():
    assert tta_views(False) == tta_views(None) == tta_views("") == ("identity",)
    assert tta_views(True) == TTA_SETS[DEFAULT_TTA] and len(TTA_SETS[DEFAULT_TTA]) == 6
    assert tta_views("hflip, vflip") == ("hflip", "vflip")
    assert tta_views(["flips", "hflip", "crop_br"]) == ("identity", "hflip", "vflip", "crop_br")
    with pytest.raises(ValueError, match="unknown test-time view 'hflp'. Did you mean 'hflip'"):
        tta_views("identity,hflp")
    with pytest.raises(ValueError, match="no test-time views"):
        tta_views(" , ")


def test_every_spelling_of_one_set_of_views_has_one_key():
    assert tta_key(False) == tta_key("none") == tta_key("identity") == tta_key(["none"]) is False
    assert tta_key(True) == tta_key("seed000") == tta_key(",".join(TTA_SETS["seed000"][::-1]))
    assert tta_key(True) is True
    assert tta_key("flips") == tta_key("vflip,hflip,identity") == "hflip,identity,vflip"
    assert tta_views(tta_key("crops")) == tuple(sorted(TTA_SETS["crops"]))
    with pytest.raises(ValueError, match="unknown test-time view"):
        tta_key("hflp")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )


def test_identity_only_tta_equals_no_tta():
    model, x = _model(), (_images(5) * 255).to(torch.uint8)
    kw = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    plain = predict_logits(model, x, **kw)
    assert torch.equal(predict_logits(model, x, tta="identity", **kw), plain)
    assert torch.equal(predict_logits(model, x, tta="none", **kw), plain)
    assert not torch.equal(predict_logits(model, x, tta="hflip", **kw), plain)
    y = plain.argmax(1)
    assert accuracy(model, x, y, tta=["identity"], **kw) == 1.0


def test_default_tta_averages_the_six_views():
    model, x = _model(), (_images(4) * 255).to(torch.uint8)
    m = torch.tensor([0.5, 0.4, 0.3]).view(1, -1, 1, 1)
    s = torch.tensor([0.2, 0.25, 0.3]).view(1, -1, 1, 1)
    xf = x.float() / 255.0
    with torch.inference_mode():
        expected = sum(model((_views()[v](xf) - m) / s) for v in TTA_SETS["seed000"]) / 6
    got = predict_logits(model, x, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), tta=True)
    torch.testing.assert_close(got, expected)


def test_the_cli_help_names_every_view_and_set():
    from search.cli import TTA_VIEWS_HELP

    views = re.search(r"views: ([^;]+);", TTA_VIEWS_HELP).group(1).split(", ")
    sets = re.search(r"sets: ([^)]+)\)", TTA_VIEWS_HELP).group(1).split(", ")
    assert sorted(views) == list_tta_views()
    assert sorted(s.split(" ")[0] for s in sets) == sorted(TTA_SETS)
