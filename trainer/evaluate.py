"""Predictions, test-time augmentation and confusion matrices for a trained classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

# Seed 000's six test-time views, made deterministic: the original, a flip, a small rotation
# each way, a colour shift, and a blur. Logits are averaged over the views.
TTA_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def _tta_views() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    if not TTA_VIEWS:
        import torchvision.transforms.v2.functional as TF

        TTA_VIEWS.update(
            identity=lambda x: x,
            hflip=TF.horizontal_flip,
            rotate_p10=lambda x: TF.rotate(x, 10.0),
            rotate_m10=lambda x: TF.rotate(x, -10.0),
            color=lambda x: TF.adjust_contrast(TF.adjust_brightness(x, 1.1), 1.1).clamp(0, 1),
            blur=lambda x: TF.gaussian_blur(x, [5, 5], [1.0, 1.0]),
        )
    return TTA_VIEWS


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    x_uint8: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    tta: bool = False,
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits ``[N, classes]`` (float32, on the CPU) for uint8 images ``[N, C, H, W]``."""
    model.eval()
    device = next(model.parameters()).device
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    views = list(_tta_views().values()) if tta else [lambda x: x]
    out = []
    for i in range(0, len(x_uint8), batch_size):
        xb = x_uint8[i : i + batch_size].to(device).float() / 255.0
        logits = sum(model((view(xb) - m) / s).float() for view in views) / len(views)
        out.append(logits.cpu())
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``cm[i, j]`` = how many images of class i were predicted as class j."""
    idx = y_true.long() * num_classes + y_pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Recall per class (the diagonal over the row sums); NaN for classes with no images."""
    support = cm.sum(1).double()
    return torch.where(support > 0, cm.diag().double() / support.clamp_min(1), torch.nan)


def accuracy(
    model: nn.Module,
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    tta: bool = False,
) -> float:
    """Top-1 accuracy of ``model`` on uint8 images ``x_uint8`` with labels ``y``; batches go to
    the model's device one at a time, so the whole split never sits in device memory."""
    if len(y) == 0:
        raise ValueError("accuracy needs at least one image, but got an empty split")
    logits = predict_logits(model, x_uint8, mean=mean, std=std, tta=tta)
    return float((logits.argmax(1) == y.cpu()).double().mean())
