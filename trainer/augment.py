"""Batched training augmentation on the training device: no per-sample PIL work.

``make_augment(policy, image_size=..., **settings)`` returns ``aug(x, generator) -> x`` for float
images ``[B, C, H, W]`` in 0..1 (before normalisation), or None when it would do nothing. Every
random parameter is drawn per sample from the given ``torch.Generator`` (which lives on the
training device), so a seeded generator gives the same batch twice. The policies are presets
of ``AugmentSettings`` (crop scale, flips, rotation, translate, zoom, colour jitter, blur,
random erasing), and any setting can be changed (``data.rotation = 15``, searchable too;
``data.rotations = 2`` adds two rotation draws, as seed 000's RandomRotation then RandomAffine):

- ``light``: random resized crop (area 0.8-1, aspect 3/4-4/3) and horizontal flip.
- ``strong``: seed 000's training set (random resized crop, flip, rotation +-10 degrees, affine
  with rotation +-10 degrees, translate 5 %, scale 0.9-1.1, colour jitter 0.1 for brightness,
  contrast and saturation), plus Gaussian blur (seed 000's TTA blur) and random erasing (seed
  002). All geometry is composed into one affine matrix per image and resampled once.

``mix_batch`` applies CutMix (seed 000) or MixUp to a batch and returns both label sets and the
mixing weight for ``loss = lam * loss(y_a) + (1 - lam) * loss(y_b)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from trainer._registry import unknown_name_error

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

POLICIES = ("none", "light", "strong")
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class AugmentSettings:
    """What ``make_augment`` does; each field 0 (or 1 for ``crop_scale``) turns its part off."""

    crop_scale: float = 1.0  # random resized crop: area in [crop_scale, 1]; 1 = no crop
    hflip: float = 0.0  # probability of a horizontal flip
    vflip: float = 0.0  # probability of a vertical flip
    rotation: float = 0.0  # degrees: uniform in +-rotation
    translate: float = 0.0  # share of the side: uniform in +-translate, each axis
    zoom: float = 0.0  # scale in [1 - zoom, 1 + zoom]
    color_jitter: float = 0.0  # brightness, contrast, saturation factors in [1 - s, 1 + s]
    blur: float = 0.0  # probability of a Gaussian blur (sigma 0.1-2 px at 256 px)
    erasing: float = 0.0  # probability of random erasing (one rectangle)
    rotations: int = 1  # rotation draws added up: seed 000 rotated twice (Rotation, Affine)


# The named policies, as settings; data.* keys (crop_scale, rotation, ...) override them.
PRESETS: dict[str, AugmentSettings] = {
    "none": AugmentSettings(),
    "light": AugmentSettings(crop_scale=0.8, hflip=0.5),
    "strong": AugmentSettings(
        crop_scale=0.8,
        hflip=0.5,
        rotation=10.0,
        translate=0.05,
        zoom=0.1,
        color_jitter=0.1,
        blur=0.5,
        erasing=0.5,
        rotations=2,
    ),  # fmt: skip
}


def make_augment(
    policy: str, *, image_size: int, **overrides: float | int | None
) -> Augment | None:
    """A function ``(float images [B, C, H, W] in 0..1, generator) -> images``, or None.

    ``policy`` names a preset (``PRESETS``); ``overrides`` change its fields (None keeps the
    preset's). The output is ``image_size`` x ``image_size`` whatever the input size.
    """
    if policy not in POLICIES:
        raise unknown_name_error("data.augment", policy, POLICIES)
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, but got {image_size}")
    unknown = set(overrides) - {f.name for f in fields(AugmentSettings)}
    if unknown:
        raise ValueError(f"unknown augmentation setting(s) {sorted(unknown)}")
    st = replace(PRESETS[policy], **{k: v for k, v in overrides.items() if v is not None})
    if replace(st, rotations=1) == AugmentSettings():
        return None

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(
                f"augment expects float images [B, C, H, W], but got {x.dtype} {list(x.shape)}"
            )
        x = _geometry(x, generator, size=image_size, st=st)
        if st.color_jitter > 0:
            x = _color_jitter(x, generator, strength=st.color_jitter)
        if st.blur > 0:  # seed 000 blurred with sigma 0.1-2 at 256 px; scaled to the size
            x = _gaussian_blur(x, generator, p=st.blur, sigma=(0.1, 2.0), scale=image_size / 256)
        if st.erasing > 0:
            x = _random_erasing(x, generator, p=st.erasing)
        return x

    return augment


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, *, cutmix: float, mixup: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CutMix / MixUp: returns (images, labels_a, labels_b, lam); loss = lam*a + (1-lam)*b.

    With probability ``cutmix`` a box from a shuffled copy of the batch is pasted in (seed 000's
    rand_bbox; lam is corrected to the box's actual area); otherwise, with probability
    ``mixup``, the batch is blended with the shuffled copy. lam ~ Beta(1, 1) = Uniform(0, 1).
    Otherwise the images come back unchanged with lam = 1. ``lam`` is a 0-dim tensor on the
    images' device and the choice is made there too (a box mask, ``torch.where``), so nothing
    is read back to the host: no sync per batch.
    """
    for name, p in (("cutmix", cutmix), ("mixup", mixup)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], but got {p}")
    if cutmix == 0.0 and mixup == 0.0:
        return x, y, y, torch.ones((), device=x.device, dtype=x.dtype)
    dev = generator.device
    u = torch.rand(5, generator=generator, device=dev).to(x.device, x.dtype)
    u_cut, u_mix, lam, u_cx, u_cy = u.unbind()
    perm = torch.randperm(len(x), generator=generator, device=dev).to(x.device)
    x_b, y_b = x[perm], y[perm]
    do_cut = u_cut < cutmix
    do_mix = ~do_cut & (u_mix < mixup)
    # seed 000's rand_bbox with the corners kept on the device
    h, w = x.shape[-2:]
    cut = torch.sqrt(1.0 - lam)
    cut_h, cut_w = (h * cut).floor(), (w * cut).floor()
    cy, cx = (u_cy * h).floor(), (u_cx * w).floor()
    y1, y2 = (cy - cut_h // 2).clamp(min=0), (cy + cut_h // 2).clamp(max=h)
    x1, x2 = (cx - cut_w // 2).clamp(min=0), (cx + cut_w // 2).clamp(max=w)
    rows = torch.arange(h, device=x.device, dtype=x.dtype)
    cols = torch.arange(w, device=x.device, dtype=x.dtype)
    box = ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None, :] & do_cut
    out = torch.where(do_mix, lam * x + (1.0 - lam) * x_b, torch.where(box, x_b, x))
    lam_cut = 1.0 - box.sum() / (h * w)  # the box was clipped at the border; 1 without a box
    return out, y, y_b, torch.where(do_mix, lam, lam_cut).to(x.dtype)


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device).to(
        device
    )


def _geometry(
    x: torch.Tensor, generator: torch.Generator, *, size: int, st: AugmentSettings
) -> torch.Tensor:
    """Random resized crop, flips, rotation, translation and zoom, in one resample.

    Builds, per image, the 3x3 map from output to input coordinates in affine_grid's
    normalised [-1, 1] space: crop(flip(rotate(affine^-1(p)))).
    """
    b, _, h, w = x.shape
    dev, dt = x.device, x.dtype

    def u(low: float, high: float) -> torch.Tensor:
        return _uniform(b, low, high, generator, dev)

    m = torch.zeros(b, 3, 3, device=dev, dtype=torch.float32)
    m[:, 0, 0], m[:, 1, 1], m[:, 2, 2] = 1.0, 1.0, 1.0
    if st.crop_scale < 1.0:
        # Random resized crop (torchvision's area/aspect sampling, clamped instead of retried).
        area = u(st.crop_scale, 1.0)
        ratio = torch.exp(u(math.log(3 / 4), math.log(4 / 3)))
        cw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
        ch = torch.sqrt(area / ratio).clamp(max=1.0)
        m[:, 0, 0], m[:, 1, 1] = cw, ch
        m[:, 0, 2], m[:, 1, 2] = u(-1.0, 1.0) * (1 - cw), u(-1.0, 1.0) * (1 - ch)  # centre
    if st.hflip > 0:
        m[:, 0, 0] *= torch.where(u(0.0, 1.0) < st.hflip, -1.0, 1.0)
    if st.vflip > 0:
        m[:, 1, 1] *= torch.where(u(0.0, 1.0) < st.vflip, -1.0, 1.0)
    affine = st.rotation > 0 or st.translate > 0 or st.zoom > 0
    if affine:
        # RandomRotation then RandomAffine (rotation, translate, scale), inverted.
        angle = torch.deg2rad(sum(u(-st.rotation, st.rotation) for _ in range(st.rotations)))
        scale = u(1 - st.zoom, 1 + st.zoom)
        t = 2 * st.translate  # a share of the side, in [-1, 1] units
        tx, ty = u(-t, t), u(-t, t)
        cos, sin = torch.cos(-angle), torch.sin(-angle)
        a = w / h  # rotate in pixel space, not in the stretched normalised square
        inv = torch.zeros(b, 3, 3, device=dev, dtype=torch.float32)
        inv[:, 0, 0], inv[:, 0, 1] = cos / scale, -sin / (a * scale)
        inv[:, 1, 0], inv[:, 1, 1] = sin * a / scale, cos / scale
        inv[:, 0, 2] = -(inv[:, 0, 0] * tx + inv[:, 0, 1] * ty)
        inv[:, 1, 2] = -(inv[:, 1, 0] * tx + inv[:, 1, 1] * ty)
        inv[:, 2, 2] = 1.0
        m = m @ inv
    grid = F.affine_grid(m[:, :2].to(dt), [b, x.shape[1], size, size], align_corners=False)
    # Rotation/affine fill with zeros (black), as torchvision; a crop alone stays inside the
    # image but its edge can fall past the last pixel centre, so there "border" avoids a dark rim.
    pad = "zeros" if affine else "border"
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=pad, align_corners=False)


def _color_jitter(x: torch.Tensor, generator: torch.Generator, *, strength: float) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1 - s, 1 + s] per image (no hue).

    The three are linear in the pixels, so they fold into one 3x3 colour matrix and offset per
    image: out = c*b*(s*x + (1-s)*gray(x)) + (1-c)*b*mean(gray(x)), clamped once (torchvision
    clamps after each step; with factors near 1 the difference is negligible).
    """
    b, c = x.shape[:2]

    def factor() -> torch.Tensor:
        return _uniform(b, 1 - strength, 1 + strength, generator, x.device).view(b, 1, 1)

    bright, contrast = factor(), factor()
    sat = factor()  # drawn for 1-channel images too, so the random stream does not depend on C
    if c == 3:
        wts = _gray_weights(x.device, x.dtype)
    else:  # saturation is meaningless for one channel (or any non-RGB layout)
        wts, sat = torch.full((c,), 1.0 / c, device=x.device, dtype=x.dtype), torch.ones_like(sat)
    eye = torch.eye(c, device=x.device, dtype=x.dtype)
    mix = bright * contrast * (sat * eye + (1 - sat) * wts.view(1, c))  # [B, C, C]
    mean = (x.mean(dim=(2, 3)) @ wts).view(b, 1, 1) * bright  # mean gray after brightness
    out = torch.bmm(mix.to(x.dtype), x.reshape(b, c, -1)) + (1 - contrast) * mean
    return out.view_as(x).clamp_(0, 1)


@functools.cache
def _gray_weights(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The luma weights on ``device``, made once: a tensor built from a Python list is a
    blocking host-to-device copy, which would stall every training step on a GPU."""
    return torch.tensor(_GRAY, device=device, dtype=dtype)


def _gaussian_blur(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    p: float,
    sigma: tuple[float, float],
    scale: float,
) -> torch.Tensor:
    """Blur a random subset of the batch, each image with its own sigma (separable, reflect)."""
    b, c, h, w = x.shape
    lo, hi = sigma[0] * scale, sigma[1] * scale
    sig = _uniform(b, lo, hi, generator, x.device)
    apply = _uniform(b, 0.0, 1.0, generator, x.device) < p
    radius = min(max(1, math.ceil(3 * hi)), (min(h, w) - 1) // 2)
    if radius < 1:
        return x
    taps = torch.arange(-radius, radius + 1, device=x.device)
    k = torch.exp(-(taps[None].to(x.dtype) ** 2) / (2 * sig[:, None].to(x.dtype) ** 2))
    k = k / k.sum(1, keepdim=True)  # [B, K]
    k = torch.where(apply[:, None], k, (taps == 0).to(x.dtype)[None])  # identity if not chosen
    # Each 1-D pass is a per-image banded matrix (reflect border built in), so the whole blur
    # is two batched matmuls: far cheaper than a grouped conv with B*C groups on a CPU.
    rows = _blur_matrix(k, h, radius)  # [B, H, H]
    cols = rows if h == w else _blur_matrix(k, w, radius)
    y = torch.bmm(x.reshape(b, c * h, w), cols.transpose(1, 2)).view(b, c, h, w)
    return torch.einsum("bij,bcjw->bciw", rows, y)


def _blur_matrix(k: torch.Tensor, n: int, radius: int) -> torch.Tensor:
    """``m[b, i, j]``: weight of input j in output i for kernels ``k`` [B, 2r+1], reflect pad."""
    b = k.shape[0]
    out = torch.arange(n, device=k.device)[:, None]  # [n, 1]
    src = out + torch.arange(-radius, radius + 1, device=k.device)[None]  # [n, K]
    src = torch.where(src < 0, -src, src)
    src = torch.where(src > n - 1, 2 * (n - 1) - src, src)
    index = (out * n + src).reshape(1, -1).expand(b, -1)
    m = torch.zeros(b, n * n, device=k.device, dtype=k.dtype)
    m.scatter_add_(1, index, k.repeat(1, n))
    return m.view(b, n, n)


def _random_erasing(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    p: float,
    area: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    fill: float = 0.5,
) -> torch.Tensor:
    """torchvision's RandomErasing defaults, one rectangle per chosen image.

    Seed 002 erased after normalisation with 0, i.e. with the mean colour; here images are
    not normalised yet, so the rectangle is filled with mid-grey (close to any dataset mean).
    """
    b, _, h, w = x.shape

    def u(low: float, high: float) -> torch.Tensor:
        return _uniform(b, low, high, generator, x.device)

    apply = u(0.0, 1.0) < p
    a = u(*area)
    r = torch.exp(u(math.log(ratio[0]), math.log(ratio[1])))
    eh = (torch.sqrt(a * r) * h).round().clamp(1, h)
    ew = (torch.sqrt(a / r) * w).round().clamp(1, w)
    top = (u(0.0, 1.0) * (h - eh + 1)).floor()
    left = (u(0.0, 1.0) * (w - ew + 1)).floor()
    rows = torch.arange(h, device=x.device, dtype=eh.dtype)[None]
    cols = torch.arange(w, device=x.device, dtype=ew.dtype)[None]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # [B, H]
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # [B, W]
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :] & apply.view(b, 1, 1, 1)
    return x.masked_fill(mask, fill)


__all__ = ["POLICIES", "PRESETS", "Augment", "AugmentSettings", "make_augment", "mix_batch"]
