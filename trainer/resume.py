"""The state of a training run after an epoch, so a killed run resumes where it stopped.

``save_state`` writes, after every finished epoch, the weights, the best weights so far, the
weight EMA where on, the optimizer and scheduler state, the batch-order RNG, the global CPU
and CUDA RNGs (dropout) and the history; ``load_state`` reads it back. ``snapshot_state``
takes one host copy of it and ``write_state`` writes that, so the training loop can write the
file while the next epoch trains. The format is safetensors plus a JSON block: no pickle, nothing
executes on load, and a damaged or foreign file is a ValueError the caller turns into "start
from epoch 1".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer._files import atomic_write

STATE_KEY = "hpsearch_state"
VERSION = 1


@dataclass
class TrainState:
    epoch: int  # last finished epoch (1-based)
    history: list[dict[str, float]]
    best_epoch: int
    best_acc: float
    since_best: int
    model: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]  # torch's optimizer.state_dict() layout
    scheduler: dict[str, Any] | None
    rng: torch.Tensor
    path: str
    ema: dict[str, torch.Tensor] | None = None
    cpu_rng: torch.Tensor | None = None  # torch's global generators (dropout draws from them)
    cuda_rng: torch.Tensor | None = None
    scaler: dict[str, Any] | None = None  # fp16's gradient scaler: its loss scale and growth count


def _base(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    # SAM keeps the moments in its base optimizer; that is the state worth saving
    return getattr(optimizer, "base_optimizer", optimizer)


def save_state(path: str | Path, **state: Any) -> Path:
    """Atomically write the run's state after an epoch to ``path``; the keywords are
    ``snapshot_state``'s."""
    return write_state(path, snapshot_state(**state))


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    # One copy, contiguous, in host memory: a device tensor is copied over once (no second
    # clone, no third copy for a channels-last weight), a CPU one cloned so that training can
    # go on while the file is written.
    return t.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)


def snapshot_state(
    *,
    config: dict[str, Any],
    epoch: int,
    history: list[dict[str, float]],
    best_epoch: int,
    best_acc: float,
    since_best: int,
    model: torch.nn.Module,
    best_state: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    ema: torch.nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of the run's state after ``epoch``: one host copy of each tensor,
    taken between two training steps, for ``write_state``."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model/{k}"] = _host_copy(v)
    for k, v in (best_state or {}).items():
        tensors[f"best/{k}"] = _host_copy(v)
    for k, v in (ema.state_dict() if ema is not None else {}).items():
        tensors[f"ema/{k}"] = _host_copy(v)
    opt = _base(optimizer).state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in opt["state"].items():
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim/{pid}/{k}"] = _host_copy(v)
            else:
                scalars.setdefault(str(pid), {})[k] = v
    tensors["rng"] = _host_copy(generator.get_state())
    tensors["rng_cpu"] = torch.get_rng_state()  # a fresh tensor each call
    if generator.device.type == "cuda":
        tensors["rng_cuda"] = torch.cuda.get_rng_state(generator.device)
    meta = {
        "version": VERSION,
        "config": config,
        "epoch": epoch,
        "history": history,
        "best_epoch": best_epoch,
        "best_acc": best_acc,
        "since_best": since_best,
        "has_best": best_state is not None,
        "optim_state_ids": [str(pid) for pid in opt["state"]],
        "optim_scalars": scalars,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        # plain numbers (the scale, the steps since it last grew); {} for a disabled scaler
        "scaler": scaler.state_dict() or None if scaler is not None else None,
    }
    return tensors, meta


def write_state(path: str | Path, snapshot: tuple[dict[str, torch.Tensor], dict[str, Any]]) -> Path:
    """Atomically write a ``snapshot_state`` to ``path`` (from any thread)."""
    from safetensors.torch import save_file

    tensors, meta = snapshot
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        save_file(tensors, tmp, metadata={STATE_KEY: json.dumps(meta)})
    return path


def load_state(path: str | Path, *, config: dict[str, Any]) -> TrainState:
    """Read a state written by ``save_state`` for the same configuration, else ValueError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no resume state at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(STATE_KEY, "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable resume state: {exc}") from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        raise ValueError(f"{path} is not an hpsearch resume state")
    if meta.get("config") != config:
        changed = sorted(
            k for k in set(config) | set(meta.get("config") or {})
            if (meta.get("config") or {}).get(k) != config.get(k)
        )  # fmt: skip
        raise ValueError(f"{path} was written for another configuration (differs in {changed[:3]})")
    try:
        state: dict[int, dict[str, Any]] = {}
        for pid in meta["optim_state_ids"]:
            entry = dict(meta["optim_scalars"].get(pid, {}))
            prefix = f"optim/{pid}/"
            entry.update({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            state[int(pid)] = entry
        best = (
            {k[5:]: v for k, v in tensors.items() if k.startswith("best/")}
            if meta["has_best"]
            else None
        )
        return TrainState(
            epoch=int(meta["epoch"]),
            history=list(meta["history"]),
            best_epoch=int(meta["best_epoch"]),
            best_acc=float(meta["best_acc"]),
            since_best=int(meta["since_best"]),
            model={k[6:]: v for k, v in tensors.items() if k.startswith("model/")},
            best=best,
            optimizer={"state": state, "param_groups": meta["param_groups"]},
            scheduler=meta["scheduler"],
            rng=tensors["rng"],
            path=str(path),
            ema={k[4:]: v for k, v in tensors.items() if k.startswith("ema/")} or None,
            cpu_rng=tensors.get("rng_cpu"),  # absent from states written before they were kept
            cuda_rng=tensors.get("rng_cuda"),
            scaler=meta.get("scaler"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is an incomplete resume state ({exc!r})") from None


def restore(
    state: TrainState,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    ema: torch.nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Load a ``TrainState`` into a freshly built model, optimizer, scheduler, EMA, RNG and
    gradient scaler. Without the scaler's state an fp16 run would restart from the default
    scale of 65,536 and skip steps again until it has backed off to where it was."""
    try:
        model.load_state_dict(state.model)
        if ema is not None:
            if state.ema is None:
                raise ValueError("it has no EMA weights")
            ema.load_state_dict(state.ema)
        base = _base(optimizer)
        base.load_state_dict(state.optimizer)
        if base is not optimizer:
            optimizer.param_groups = base.param_groups  # SAM shares its base's groups
        if scheduler is not None and state.scheduler is not None:
            scheduler.load_state_dict(state.scheduler)
        generator.set_state(state.rng)
        if state.cpu_rng is not None:
            torch.set_rng_state(state.cpu_rng)
        if state.cuda_rng is not None and generator.device.type == "cuda":
            torch.cuda.set_rng_state(state.cuda_rng, generator.device)
        if scaler is not None and state.scaler:
            scaler.load_state_dict(state.scaler)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{state.path} does not fit this model ({exc})") from None
