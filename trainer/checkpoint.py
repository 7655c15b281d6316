"""Checkpoints as safetensors (no pickle, nothing executes on load) with a JSON metadata block.

``save_checkpoint`` writes the best weights of a trial; ``load_pretrained`` loads a checkpoint
(ours, or a plain state dict in .safetensors/.pt/.pth, read with ``weights_only=True``) into a
model, replacing the head when the class count differs (seed 001's transfer).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer._files import atomic_write

META_KEY = "hpsearch"


def save_checkpoint(
    model: nn.Module, path: str | Path, *, cfg=None, data=None, summary: dict | None = None
) -> Path:
    """Atomically write ``model``'s weights (and what is needed to use them) to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"summary": summary or {}}
    if cfg is not None:
        meta["config"] = cfg.to_flat()
    if data is not None:
        meta.update(
            class_names=data.class_names,
            mean=list(data.mean),
            std=list(data.std),
            in_chans=data.in_chans,
        )
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_write(path) as tmp:  # never a half-written checkpoint under the real name
        save_file(state, tmp, metadata={META_KEY: json.dumps(meta)})
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (state dict, metadata). Refuses pickles that would run code."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist; check the path")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get(META_KEY, "{}"))
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(
                f"checkpoint {str(path)!r} is not a valid safetensors file: {exc}"
            ) from None
        return state, meta
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notice: our error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"checkpoint {str(path)!r} could not be loaded safely "
            f"({type(exc).__name__}); save it as .safetensors or a plain state dict"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {str(path)!r} does not hold a state dict of tensors")
    return obj, {}


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load backbone weights from ``path`` into ``model``; the head is kept when its shape
    matches and left freshly initialised when the class count differs. Returns the metadata."""
    state, meta = read_checkpoint(path)
    if not any(k.startswith("backbone.") for k in state):  # a bare backbone's state dict
        state = {f"backbone.{k}": v for k, v in state.items()}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k.startswith("backbone.") and k not in usable]
    if missing:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit this backbone ({len(missing)} weights "
            f"missing or mis-shaped, e.g. {missing[0]!r}); use a checkpoint of the same backbone"
        )
    model.load_state_dict(usable, strict=False)
    return meta
