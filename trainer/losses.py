"""Classification losses from the seeds: cross-entropy, label smoothing, focal, and seed 000's
label-smoothing focal loss. ``create_loss(name, ...)`` is the one entry point."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer._registry import Registry
from trainer.config import LossConfig

_LOSSES: Registry = Registry("loss")


def list_losses() -> list[str]:
    return _LOSSES.names()


def create_loss(cfg: LossConfig | str, **overrides: float) -> nn.Module:
    """A loss module ``(logits [B, C], labels [B]) -> scalar`` by name or LossConfig."""
    if isinstance(cfg, str):
        cfg = LossConfig(name=cfg, **overrides)
    return _LOSSES.get(cfg.name)(cfg)


@_LOSSES.register("ce")
def _ce(cfg: LossConfig) -> nn.Module:
    return nn.CrossEntropyLoss()


@_LOSSES.register("label_smoothing")
def _label_smoothing(cfg: LossConfig) -> nn.Module:
    return nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)


@_LOSSES.register("focal")
def _focal(cfg: LossConfig) -> nn.Module:
    return FocalLoss(gamma=cfg.gamma, alpha=cfg.alpha, smoothing=0.0)


@_LOSSES.register("ls_focal")
def _ls_focal(cfg: LossConfig) -> nn.Module:
    return FocalLoss(gamma=cfg.gamma, alpha=cfg.alpha, smoothing=cfg.smoothing)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) with optional label smoothing.

    With smoothing > 0 the target puts ``1 - smoothing`` on the true class and spreads
    ``smoothing`` over the others, as in seed 000; each class term is weighted by
    ``alpha * (1 - p)^gamma`` so confident, correct predictions contribute little.
    """

    def __init__(self, *, gamma: float = 2.0, alpha: float = 1.0, smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma, self.alpha, self.smoothing = gamma, alpha, smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        num_classes = logits.shape[1]
        if self.smoothing > 0 and num_classes > 1:
            dist = torch.full_like(log_p, self.smoothing / (num_classes - 1))
            dist.scatter_(1, target[:, None], 1.0 - self.smoothing)
        else:
            dist = F.one_hot(target, num_classes).to(log_p.dtype)
        focal = (1.0 - log_p.exp()).clamp_min(0.0).pow(self.gamma)
        return -(self.alpha * focal * dist * log_p).sum(dim=1).mean()
