"""How evaluation images are resized (``data.eval_resize``), on PIL images and uint8 tensors.

``squash`` resizes the whole image to ``size`` squared (aspect ratio changes, nothing is lost),
as training sees it. ``center_crop`` resizes the short side to ``floor(size / CROP_PCT)`` (as
timm's evaluation transform does; 224 -> 256) and takes the centre ``size`` square, with
torchvision's ``Resize(int)`` + ``CenterCrop`` geometry (seed 002's ``Resize(256)`` +
``CenterCrop(224)``). ``center_crop@0.95`` keeps another share (``data.crop_pct``;
``eval_mode`` spells a data config's mode).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image

from trainer.config import EVAL_RESIZES

CROP_PCT = 0.875  # the centre crop keeps this share of the short side


def eval_mode(eval_resize: str, crop_pct: float | None = None) -> str:
    """The resize mode of ``data.eval_resize`` and ``data.crop_pct``: ``squash``,
    ``center_crop`` (the default share), or ``center_crop@0.95``."""
    if eval_resize == "squash" or crop_pct is None or crop_pct == CROP_PCT:
        return eval_resize
    return f"{eval_resize}@{crop_pct:g}"


def _parse(mode: str) -> tuple[str, float]:
    """(eval_resize, crop share) of a mode."""
    kind, _, share = mode.partition("@")
    if kind not in EVAL_RESIZES or (share and kind == "squash"):
        raise ValueError(f"data.eval_resize must be one of {', '.join(EVAL_RESIZES)}, not {mode!r}")
    try:
        return kind, float(share) if share else CROP_PCT
    except ValueError:
        raise ValueError(f"bad crop share in the resize mode {mode!r}") from None


def center_crop_geometry(
    width: int, height: int, size: int, crop_pct: float = CROP_PCT
) -> tuple[int, int, int, int]:
    """``(new_width, new_height, left, top)``: the resized image and the crop's corner for an
    image of ``width`` x ``height`` under ``center_crop`` at ``size`` px."""
    short = eval_short_side(size, crop_pct)
    if width <= height:  # torchvision truncates the long side
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def resize_pil(im: Image.Image, size: int, mode: str = "squash") -> Image.Image:
    """``im`` as a ``size`` x ``size`` image under ``data.eval_resize`` ``mode`` (bilinear,
    antialiased when shrinking)."""
    kind, share = _parse(mode)
    if kind == "squash":
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return im
    new_w, new_h, left, top = center_crop_geometry(im.width, im.height, size, share)
    if im.size != (new_w, new_h):
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    return im.crop((left, top, left + size, top + size))


def draft_size(size: int, mode: str = "squash") -> int:
    """The smallest side a JPEG may be decoded at (reduced DCT scale) for ``mode``."""
    kind, share = _parse(mode)
    return size if kind == "squash" else eval_short_side(size, share)


def eval_short_side(size: int, crop_pct: float = CROP_PCT) -> int:
    """The short side before the centre crop: ``floor(size / 0.875)``, timm's scale size."""
    return math.floor(size / crop_pct)


def resize_uint8(x: torch.Tensor, size: int, mode: str = "squash") -> torch.Tensor:
    """A uint8 ``[N, C, H, W]`` batch as ``[N, C, size, size]`` under ``mode`` (bilinear,
    antialiased when shrinking)."""
    kind, share = _parse(mode)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if kind == "squash":
        return _interpolate(x, size, size)
    new_w, new_h, left, top = center_crop_geometry(w, h, size, share)
    return _interpolate(x, new_h, new_w)[..., top : top + size, left : left + size]


def _interpolate(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (h, w):
        return x
    out = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


__all__ = [
    "CROP_PCT",
    "center_crop_geometry",
    "draft_size",
    "eval_mode",
    "resize_pil",
    "resize_uint8",
]
