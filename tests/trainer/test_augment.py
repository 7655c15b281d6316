"""Batched augmentation policies and CutMix/MixUp."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from trainer import augment as A
from trainer.augment import make_augment, mix_batch


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_none_is_none_and_unknown_policy_is_an_error():
    assert make_augment("none", image_size=8) is None
    with pytest.raises(ValueError, match="unknown data.augment 'strng'.*'strong'"):
        make_augment("strng", image_size=8)


@pytest.mark.parametrize("policy", ["light", "strong"])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_range_and_determinism(policy, channels):
    aug = make_augment(policy, image_size=12)
    x = torch.rand(6, channels, 20, 20)  # resampled to image_size
    out = aug(x, _gen(0))
    assert out.shape == (6, channels, 12, 12) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(out, aug(x, _gen(0)))  # same seed, same batch
    assert not torch.equal(out, aug(x, _gen(1)))
    same = aug(x[:1].expand(6, -1, -1, -1).contiguous(), _gen(0))
    assert not torch.allclose(same[0], same[1])  # parameters are drawn per image


def test_light_crops_inside_the_image():
    x = torch.full((8, 3, 10, 10), 0.7)
    out = make_augment("light", image_size=10)(x, _gen())
    assert torch.allclose(out, x, atol=1e-5)  # crop + flip never reach the zero padding


def test_light_flips_about_half_of_the_images():
    x = torch.zeros(400, 1, 16, 16)
    x[..., :8] = 1.0  # left half white
    out = make_augment("light", image_size=16)(x, _gen())
    left_white = out[..., :8].mean((1, 2, 3)) > out[..., 8:].mean((1, 2, 3))
    assert 120 < int(left_white.sum()) < 280


def test_float64_and_uint8_inputs():
    aug = make_augment("strong", image_size=8)
    assert aug(torch.rand(2, 3, 8, 8, dtype=torch.float64), _gen()).dtype == torch.float64
    with pytest.raises(ValueError, match="float images"):
        aug(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), _gen())


def test_blur_matches_torchvision():
    x = torch.rand(3, 3, 20, 17)
    out = A._gaussian_blur(x, _gen(), p=1.0, sigma=(1.2, 1.2), scale=1.0)
    ref = TF.gaussian_blur(x, [9, 9], [1.2, 1.2])
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.equal(A._gaussian_blur(x, _gen(), p=0.0, sigma=(1, 2), scale=1.0), x)


def test_color_jitter_matches_torchvision_factors():
    x = torch.rand(1, 3, 6, 6) * 0.5 + 0.25  # away from the clamps
    out = A._color_jitter(x, _gen(3), strength=0.1)
    b, c, s = (0.9 + 0.2 * torch.rand(3, generator=_gen(3))).tolist()
    ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c), s)
    assert torch.allclose(out, ref, atol=1e-3)  # torchvision's luma weight is 0.2989
    gray = A._color_jitter(x[:, :1], _gen(3), strength=0.1)  # 1 channel: no saturation
    assert gray.shape == (1, 1, 6, 6)


def test_random_erasing_fills_one_rectangle():
    x = torch.zeros(50, 3, 32, 32)
    out = A._random_erasing(x, _gen(), p=1.0)
    area = (out[:, 0] == 0.5).float().mean((1, 2))
    assert ((area >= 0.015) & (area <= 0.34)).all()
    assert torch.equal(A._random_erasing(x, _gen(), p=0.0), x)


def _label_images(y: torch.Tensor) -> torch.Tensor:
    return y.float().view(-1, 1, 1, 1).expand(-1, 3, 16, 16).contiguous()


def test_cutmix_pastes_a_box_and_lam_is_its_area():
    y = torch.arange(8)
    for seed in range(10):
        out, ya, yb, lam = mix_batch(
            _label_images(y), y, cutmix=1.0, mixup=0.0, generator=_gen(seed)
        )
        assert 0.0 <= lam <= 1.0 and torch.equal(ya, y)
        assert sorted(yb.tolist()) == y.tolist()  # a permutation of the batch
        for i in range(8):
            from_b = (out[i, 0] == yb[i]).float().mean().item()
            if yb[i] != ya[i]:
                assert (out[i, 0] == ya[i]).float().mean().item() == pytest.approx(float(lam))
                assert from_b == pytest.approx(1 - float(lam))


def test_mixup_blends_with_the_permuted_batch():
    y = torch.arange(6)
    out, ya, yb, lam = mix_batch(_label_images(y), y, cutmix=0.0, mixup=1.0, generator=_gen(4))
    assert 0.0 <= lam <= 1.0
    expected = lam * ya.float() + (1 - lam) * yb.float()
    assert torch.allclose(out[:, 0, 0, 0], expected)
    again = mix_batch(_label_images(y), y, cutmix=0.0, mixup=1.0, generator=_gen(4))
    assert torch.equal(again[0], out) and torch.equal(again[3], lam)


def test_no_mixing_and_bad_probabilities():
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    out, ya, yb, lam = mix_batch(x, y, cutmix=0.0, mixup=0.0, generator=_gen())
    assert out is x and lam == 1.0 and torch.equal(ya, yb)
    with pytest.raises(ValueError, match="cutmix must be in"):
        mix_batch(x, y, cutmix=1.5, mixup=0.0, generator=_gen())


def test_cutmix_probability_is_respected():
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    g = _gen()
    mixed = sum(mix_batch(x, y, cutmix=0.3, mixup=0.0, generator=g)[3] != 1.0 for _ in range(400))
    assert 80 < mixed < 160


# --------------------------------------------------------------------------- settings


def test_presets_are_settings_and_everything_off_is_none():
    assert A.PRESETS["light"] == A.AugmentSettings(crop_scale=0.8, hflip=0.5)
    assert A.PRESETS["strong"].rotation == 10.0 and A.PRESETS["strong"].erasing == 0.5
    assert make_augment("light", image_size=8, crop_scale=1.0, hflip=0.0) is None
    assert make_augment("light", image_size=8, crop_scale=None) is not None  # None: preset's
    with pytest.raises(ValueError, match="unknown augmentation setting"):
        make_augment("light", image_size=8, hue=0.1)


@pytest.mark.parametrize("key, dims", [("hflip", (-1,)), ("vflip", (-2,))])
def test_flip_settings_flip_every_image_at_probability_one(key, dims):
    x = torch.rand(5, 3, 9, 9)
    out = make_augment("none", image_size=9, **{key: 1.0})(x, _gen())
    assert torch.allclose(out, x.flip(dims), atol=1e-5)


def test_rotation_setting_turns_a_preset_up():
    x = torch.zeros(64, 1, 17, 17)
    x[..., 8, :] = 1.0  # a horizontal line through the centre
    small = make_augment("none", image_size=17, rotation=2.0)(x, _gen())
    large = make_augment("none", image_size=17, rotation=60.0)(x, _gen())
    off_row = lambda out: (out[..., :4, :].sum() + out[..., 13:, :].sum()).item()  # noqa: E731
    assert off_row(small) < 1e-3 < off_row(large)  # only large angles reach the outer rows


def test_erasing_setting_alone_erases_every_image_at_probability_one():
    x = torch.zeros(6, 3, 16, 16)
    out = make_augment("none", image_size=16, erasing=1.0)(x, _gen())
    assert ((out == 0.5).flatten(1).any(1)).all()


def test_augment_settings_are_config_keys_with_checked_ranges():
    from trainer import TrainConfig

    cfg = TrainConfig.from_flat({"data.augment": "light", "data.rotation": 15})
    assert cfg.data.augment_settings()["rotation"] == 15.0
    assert cfg.data.augment_settings()["hflip"] is None
    with pytest.raises(ValueError, match=r"data.hflip must be in \[0, 1\], but got 1.5"):
        TrainConfig.from_flat({"data.hflip": 1.5})
