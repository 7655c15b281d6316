"""Optimizers: SGD (momentum, Nesterov), Adam, AdamW, and SAM around SGD or Adam (seed 000)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from trainer._registry import Registry
from trainer.config import OptimConfig

_OPTIMIZERS: Registry = Registry("optimizer")


def list_optimizers() -> list[str]:
    return _OPTIMIZERS.names()


def create_optimizer(
    params: nn.Module | Iterable[torch.nn.Parameter], cfg: OptimConfig | str, **overrides: float
) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names over ``params``: a model (its trainable parameters) or the
    parameters themselves, in weight-decay groups as ``optim.decay_norm_bias`` says."""
    if isinstance(cfg, str):
        cfg = OptimConfig(name=cfg, **overrides)
    return _OPTIMIZERS.get(cfg.name)(param_groups(params, cfg), cfg)


def param_groups(params: nn.Module | Iterable[torch.nn.Parameter], cfg: OptimConfig) -> list:
    """``params`` as the optimizer takes them. ``decay_norm_bias`` (the default): one group,
    every parameter decayed by ``optim.weight_decay``. Off: timm's
    ``param_groups_weight_decay`` for a model (1-D parameters and biases in a group without
    decay); for bare parameters, whose names are unknown, the same rule by shape (1-D)."""
    if isinstance(params, nn.Module):
        if not cfg.decay_norm_bias:
            from timm.optim import param_groups_weight_decay

            return param_groups_weight_decay(params, cfg.weight_decay)
        return [p for p in params.parameters() if p.requires_grad]
    params = list(params)
    if cfg.decay_norm_bias:
        return params
    groups = [
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
    ]
    return [g for g in groups if g["params"]]


def _fused(params: list) -> dict[str, bool]:
    """``fused=True`` when every parameter is a floating-point CUDA tensor: one kernel for the
    whole update instead of several per tensor, and a gradient scaler's inf check stays on the
    device. Elsewhere torch's default (foreach), so the CPU arithmetic stays as it was."""
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    if tensors and all(p.is_cuda and p.is_floating_point() for p in tensors):
        return {"fused": True}
    return {}


def _sgd(params: list, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
        **_fused(params),
    )


def _adam(params: list, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **_fused(params))


def _adamw(params: list, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **_fused(params))


_OPTIMIZERS.register("sgd")(_sgd)
_OPTIMIZERS.register("adam")(_adam)
_OPTIMIZERS.register("adamw")(_adamw)
_OPTIMIZERS.register("sam_sgd")(lambda params, cfg: SAM(params, _sgd, cfg))
_OPTIMIZERS.register("sam_adam")(lambda params, cfg: SAM(params, _adam, cfg))


class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimization (Foret et al. 2021) around a base optimizer.

    One update is two passes: ``first_step`` moves the weights to the worst point within
    radius ``rho`` (along the gradient), the loss is recomputed there, and ``second_step``
    moves back and lets the base optimizer step with the gradient from that point. The
    training loop drives the two passes; ``step()`` alone is refused.
    """

    is_sam = True

    def __init__(self, params: list, make_base, cfg: OptimConfig) -> None:
        super().__init__(params, dict(lr=cfg.lr, rho=cfg.rho))
        self.base_optimizer = make_base(self.param_groups, cfg)
        self.param_groups = self.base_optimizer.param_groups  # one lr for schedulers
        self.rho = cfg.rho

    @torch.no_grad()
    def first_step(self, *, skip_nonfinite: bool = False) -> None:
        """Climb to the worst point within ``rho``. ``skip_nonfinite`` (fp16 loss scaling): an
        overflowed gradient climbs nowhere, decided on the device (no host read)."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = self.rho / (norm + 1e-12)
        if skip_nonfinite:
            scale = torch.where(torch.isfinite(norm), scale, torch.zeros_like(scale))
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale
                if skip_nonfinite:  # inf * 0 is nan: a skipped climb must move nothing
                    e_w = torch.nan_to_num(e_w, nan=0.0, posinf=0.0, neginf=0.0)
                p.add_(e_w)
                self.state[p]["e_w"] = e_w

    @torch.no_grad()
    def restore(self) -> None:
        """Move back from the climbed point to the weights before ``first_step``."""
        for group in self.param_groups:
            for p in group["params"]:
                e_w = self.state[p].pop("e_w", None)
                if e_w is not None:
                    p.sub_(e_w)

    @torch.no_grad()
    def second_step(self) -> None:
        self.restore()
        self.base_optimizer.step()

    def step(self, closure=None):  # noqa: D102
        raise RuntimeError("SAM needs two passes: call first_step(), recompute, second_step()")
