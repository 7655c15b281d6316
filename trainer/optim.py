"""Optimizers: SGD (momentum, Nesterov), Adam, AdamW, and SAM around SGD or Adam (seed 000)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from trainer._registry import Registry
from trainer.config import OptimConfig

_OPTIMIZERS: Registry = Registry("optimizer")


def list_optimizers() -> list[str]:
    return _OPTIMIZERS.names()


def create_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimConfig | str, **overrides: float
) -> torch.optim.Optimizer:
    if isinstance(cfg, str):
        cfg = OptimConfig(name=cfg, **overrides)
    return _OPTIMIZERS.get(cfg.name)(list(params), cfg)


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
