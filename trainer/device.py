"""The training device: which one, how much of its memory a trial may use, its precision, and
the CUDA speed settings.

- ``select_device("auto")`` picks CUDA, then MPS, then the CPU. A machine that has an NVIDIA
  GPU that CUDA cannot use (a CPU-only torch build, a driver too old) trains on the CPU with
  one warning line naming the cause; ``train.device = "cuda"`` there is a ValueError with the fix.
- ``set_gpu_share(share)``: the share of the GPU's memory this process may use (several
  trials on one GPU: a launcher gives each worker its share). It caps PyTorch's allocator
  (``torch.cuda.set_per_process_memory_fraction``) and the data placement reads it.
- ``free_bytes(device)``: what this process may still allocate there, counting the memory it
  holds cached (the last trial's data, the probe's model), which ``mem_get_info`` leaves out.
- ``amp_dtype(device)``: bf16 from compute capability 8.0 (A100, H100), else fp16 with a
  gradient scaler (V100, T4).
- ``configure(device)``: cuDNN autotuning and TF32 for float32 matrix products, once per process.
- ``available_cpus()``: the CPU cores this process may run on (a SLURM job's, a container's
  cpuset), not the whole machine's.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Workers that train many different models fragment the caching allocator's fixed-size
# segments; expandable segments grow and shrink instead. Read when CUDA starts, so it is set
# before the first CUDA call of the process (a user's own setting wins).
ALLOC_CONF = "expandable_segments:True"
BF16_CAPABILITY = (8, 0)  # Ampere and later compute in bf16 natively

_share = 1.0


def available_cpus() -> int:
    """The CPU cores this process may run on: its affinity mask (``os.sched_getaffinity``,
    which SLURM, ``taskset`` and a container's cpuset narrow), where the OS has one, else
    every core of the machine (``os.cpu_count()``, which counts the whole host); at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then MPS, then the CPU; else ``name`` as a torch device, checked."""
    if name == "auto":
        if cuda_usable():
            return torch.device("cuda")
        problem = cuda_problem()
        if problem is not None:
            _warn_once(f"training on the CPU although this machine has an NVIDIA GPU: {problem}")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"train.device must be auto, cpu, cuda, cuda:N or mps, but got {name!r}"
        ) from None
    if device.type == "cuda":
        if not cuda_usable():
            why = cuda_problem() or "torch sees no CUDA device on this machine"
            raise ValueError(
                f"train.device = {name!r} but CUDA is not usable here ({why}); "
                'set train.device = "auto" or "cpu"'
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"train.device = {name!r} but only {torch.cuda.device_count()} CUDA device(s) "
                f"are visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(f'train.device = {name!r} but MPS is not available; use "auto" or "cpu"')
    return device


def cuda_usable() -> bool:
    """CUDA works here; sets the allocator's configuration first (see ``ALLOC_CONF``)."""
    if not torch.cuda.is_initialized():
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", ALLOC_CONF)
    return torch.cuda.is_available()


def cuda_problem() -> str | None:
    """Why CUDA cannot use this machine's NVIDIA GPU (a CPU-only build, a driver CUDA refuses),
    with the fix; None when CUDA works, when no NVIDIA GPU is seen, or when the GPUs are hidden
    on purpose (``CUDA_VISIBLE_DEVICES`` empty or -1)."""
    if torch.cuda.is_available() or not _has_nvidia_gpu():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None
    if torch.version.cuda is None:
        return (
            f"torch {torch.__version__} is a CPU-only build; install a CUDA build of torch "
            "(https://pytorch.org/get-started/locally/)"
        )
    try:
        torch.cuda.init()
    except Exception as exc:  # torch raises RuntimeError or AssertionError with the reason
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"CUDA {torch.version.cuda} does not start ({first}); update the NVIDIA driver"
    return f"CUDA {torch.version.cuda} sees no device (CUDA_VISIBLE_DEVICES={visible!r})"


def _has_nvidia_gpu() -> bool:
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def set_gpu_share(share: float) -> float:
    """Let this process use ``share`` (0 < share <= 1) of each GPU's memory from its next
    trial on; returns the previous share. A launcher that runs K trials on one GPU gives each
    worker 1/K (minus a margin for the CUDA context)."""
    global _share
    if isinstance(share, bool) or not isinstance(share, int | float):
        raise TypeError(f"gpu share must be a number in (0, 1], but got {share!r}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"gpu share must be in (0, 1], but got {share}")
    previous, _share = _share, float(share)
    return previous


def gpu_share() -> float:
    """The share of each GPU's memory this process may use (1.0 unless ``set_gpu_share``)."""
    return _share


def free_bytes(device: torch.device) -> int | None:
    """Bytes this process may still allocate on ``device``; None on a CPU (its own host).

    The card's free memory plus what this process holds cached but unused (the caching
    allocator hands that out again), and no more than its share left after what it has
    allocated.
    """
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    cached = torch.cuda.memory_reserved(device) - allocated
    return max(0, min(free + cached, int(_share * total) - allocated))


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device``: bf16 from compute capability 8.0, else fp16 (which
    needs a gradient scaler); None where mixed precision does not apply (CPU, MPS)."""
    if device.type != "cuda":
        return None
    if torch.cuda.get_device_capability(device) >= BF16_CAPABILITY:
        return torch.bfloat16
    return torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """``bf16``, ``fp16`` (with a gradient scaler) or ``fp32``: what a trial records."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def configure(device: torch.device) -> None:
    """The speed settings of a CUDA run: this process's memory share, cuDNN autotuning (a
    trial's shapes are fixed, so each convolution is tuned once) and TF32 for float32 matrix
    products (a user's own precision setting stays)."""
    if device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(_share, index)
    torch.backends.cudnn.benchmark = True
    _tf32_once()


@functools.cache
def _tf32_once() -> None:
    try:
        if torch.get_float32_matmul_precision() == "highest":  # torch's default
            torch.set_float32_matmul_precision("high")
    except RuntimeError:  # the user set precision through torch's newer API: theirs
        pass


__all__ = [
    "ALLOC_CONF",
    "amp_dtype",
    "available_cpus",
    "configure",
    "cuda_problem",
    "cuda_usable",
    "free_bytes",
    "gpu_share",
    "precision_name",
    "select_device",
    "set_gpu_share",
]
