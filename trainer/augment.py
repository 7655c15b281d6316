"""Batched training augmentation on the training device (placeholder policies: see below)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def make_augment(policy: str, *, image_size: int) -> Augment | None:
    """A function ``(float images [B, C, H, W] in 0..1, generator) -> images``, or None."""
    if policy == "none":
        return None
    raise NotImplementedError(f"augmentation policy {policy!r} is not available yet")


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, *, cutmix: float, mixup: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """CutMix / MixUp: returns (images, labels_a, labels_b, lam); loss = lam*a + (1-lam)*b."""
    return x, y, y, 1.0
