"""How evaluation images are resized (``data.eval_resize``), on PIL images and uint8 tensors.

``squash`` resizes the whole image to ``size`` squared (aspect ratio changes, nothing is lost),
as training sees it. ``center_crop`` resizes the short side to ``floor(size / CROP_PCT)`` (as
timm's evaluation transform does; 224 -> 256) and takes the centre ``size`` square, with
torchvision's ``Resize(int)`` + ``CenterCrop`` geometry (seed 002's ``Resize(256)`` +
``CenterCrop(224)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image

from trainer.config import EVAL_RESIZES

CROP_PCT = 0.875  # the centre crop keeps this share of the short side


def center_crop_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """``(new_width, new_height, left, top)``: the resized image and the crop's corner for an
    image of ``width`` x ``height`` under ``center_crop`` at ``size`` px."""
    short = eval_short_side(size)
    if width <= height:  # torchvision truncates the long side
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def resize_pil(im: Image.Image, size: int, mode: str = "squash") -> Image.Image:
    """``im`` as a ``size`` x ``size`` image under ``data.eval_resize`` ``mode`` (bilinear,
    antialiased when shrinking)."""
    _check_mode(mode)
    if mode == "squash":
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return im
    new_w, new_h, left, top = center_crop_geometry(im.width, im.height, size)
    if im.size != (new_w, new_h):
        im = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    return im.crop((left, top, left + size, top + size))


def draft_size(size: int, mode: str = "squash") -> int:
    """The smallest side a JPEG may be decoded at (reduced DCT scale) for ``mode``."""
    return size if mode == "squash" else eval_short_side(size)


def eval_short_side(size: int) -> int:
    """The short side before the centre crop: ``floor(size / 0.875)``, timm's scale size."""
    return math.floor(size / CROP_PCT)


def resize_uint8(x: torch.Tensor, size: int, mode: str = "squash") -> torch.Tensor:
    """A uint8 ``[N, C, H, W]`` batch as ``[N, C, size, size]`` under ``mode`` (bilinear,
    antialiased when shrinking)."""
    _check_mode(mode)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if mode == "squash":
        return _interpolate(x, size, size)
    new_w, new_h, left, top = center_crop_geometry(w, h, size)
    return _interpolate(x, new_h, new_w)[..., top : top + size, left : left + size]


def _interpolate(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (h, w):
        return x
    out = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _check_mode(mode: str) -> None:
    if mode not in EVAL_RESIZES:
        raise ValueError(f"data.eval_resize must be one of {', '.join(EVAL_RESIZES)}, not {mode!r}")


__all__ = ["CROP_PCT", "center_crop_geometry", "draft_size", "resize_pil", "resize_uint8"]
