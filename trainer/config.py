"""The frozen training configuration.

Every field has a dotted name (``optim.lr``, ``model.dropout``, ``data.batch_size``): search
spaces, study files, ``--set`` and ablation factors all speak these names.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from trainer._registry import unknown_name_error

AUGMENT_POLICIES = ("none", "light", "strong")
NORMALIZE_MODES = ("dataset", "imagenet", "none", "pretrained")
STRATEGIES = ("full", "partial", "linear_probe")
DEVICE_CACHES = ("auto", "device", "host")
EVAL_RESIZES = ("squash", "center_crop")  # how validation/test/predict images are resized
AUGMENT_RANGES = (  # data.* augmentation settings and their valid ranges
    ("crop_scale", 0.0, 1.0),
    ("hflip", 0.0, 1.0),
    ("vflip", 0.0, 1.0),
    ("rotation", 0.0, 180.0),
    ("translate", 0.0, 0.5),
    ("zoom", 0.0, 0.5),
    ("color_jitter", 0.0, 1.0),
    ("blur", 0.0, 1.0),
    ("erasing", 0.0, 1.0),
)
SCHEDULERS = ("none", "cosine", "plateau", "step", "onecycle")  # trainer.list_schedulers()
# what an epoch is judged by (train.monitor: the kept epoch, early stopping) and which way is
# better; a study's metric is one of these, and its direction follows
MONITORS = {"val_acc": "maximize", "val_loss": "minimize", "val_f1": "maximize"}


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # a registered dataset (digits) or an image-folder layout
    root: str | None = None  # image folder / manifest for folder datasets
    image_size: int = 16  # side of the square training image, in pixels
    batch_size: int = 64
    val_fraction: float = 0.2  # held-out share when the data has no validation set
    # share of all images held out as a test split that no search trial sees (0: none, unless
    # the data gives one: a test/ folder or split=test manifest rows)
    test_fraction: float = 0.0
    split_seed: int = 0  # the split is fixed per study, independent of the trial seed
    classes: tuple[int, ...] | None = None  # keep only these labels (relabelled 0..k-1)
    augment: str = "none"  # batched augmentation preset (none, light, strong), trainer.augment
    # augmentation settings; None keeps the preset's value
    crop_scale: float | None = None  # random resized crop: area in [crop_scale, 1]; 1 = none
    hflip: float | None = None  # probability of a horizontal flip
    vflip: float | None = None  # probability of a vertical flip
    rotation: float | None = None  # degrees, +-
    # rotation draws added up (each uniform in +-rotation): 2 is seed 000's RandomRotation(10)
    # followed by RandomAffine(degrees=10)
    rotations: int | None = None
    translate: float | None = None  # share of the side, +-
    zoom: float | None = None  # affine scale in [1-zoom, 1+zoom] (seed 000: 0.1)
    color_jitter: float | None = None  # brightness/contrast/saturation factors in [1-s, 1+s]
    blur: float | None = None  # probability of a Gaussian blur
    erasing: float | None = None  # probability of random erasing
    cutmix: float = 0.0  # probability of CutMix per batch (seed 000 used 0.5)
    mixup: float = 0.0  # probability of MixUp per batch
    # passes over every training image per epoch, each with fresh augmentation (the epoch's
    # order is this many shuffles end to end): seed 004's epoch was an eightfold augmented copy
    epoch_repeats: int = 1
    # per-channel mean/std from the training split, ImageNet's, none, or pretrained: those the
    # backbone's pretrained weights were trained with (timm's data config: CLIP's, Inception's
    # 0.5, ImageNet's for most), so a model evaluates its inputs as its weights expect
    normalize: str = "dataset"
    strict: bool = False  # refuse to start when the pre-scan finds unreadable files
    # where the decoded images live while training: the device (fastest), host memory (each
    # batch copied over, one ahead), or auto: the device when they fit half its free memory
    device_cache: str = "auto"
    # evaluation images (validation, test, predict): squash the whole image to image_size
    # squared (as training sees it), or resize the short side to floor(image_size / 0.875) and
    # take the centre image_size square (seed 002's Resize(256) + CenterCrop(224), timm's eval)
    eval_resize: str = "squash"
    # the share of the short side center_crop keeps; None: 0.875 (timm's default, seed 002's
    # 224 of 256); timm's data config gives each pretrained weight's own (0.95 for many)
    crop_pct: float | None = None

    def __post_init__(self) -> None:
        _check(self.image_size >= 4, f"data.image_size must be >= 4, but got {self.image_size}")
        _check(self.batch_size >= 1, f"data.batch_size must be >= 1, but got {self.batch_size}")
        _check(
            0.0 < self.val_fraction < 1.0,
            f"data.val_fraction must be in (0, 1), but got {self.val_fraction}",
        )
        _check(
            0.0 <= self.test_fraction < 1.0 and self.val_fraction + self.test_fraction < 1.0,
            "data.test_fraction must be in [0, 1) and leave training images "
            f"(val_fraction + test_fraction < 1), but got {self.test_fraction} "
            f"with val_fraction {self.val_fraction}",
        )
        _choice("data.augment", self.augment, AUGMENT_POLICIES)
        _choice("data.normalize", self.normalize, NORMALIZE_MODES)
        _choice("data.device_cache", self.device_cache, DEVICE_CACHES)
        _choice("data.eval_resize", self.eval_resize, EVAL_RESIZES)
        _check(
            self.crop_pct is None or 0.5 <= self.crop_pct <= 1.0,
            f"data.crop_pct must be in [0.5, 1], but got {self.crop_pct}",
        )
        for key in ("cutmix", "mixup"):
            p = getattr(self, key)
            _check(0.0 <= p <= 1.0, f"data.{key} must be in [0, 1], but got {p}")
        for key, low, high in AUGMENT_RANGES:
            v = getattr(self, key)
            _check(
                v is None or low <= v <= high,
                f"data.{key} must be in [{low:g}, {high:g}], but got {v}",
            )
        _check(
            self.crop_scale is None or self.crop_scale > 0,
            f"data.crop_scale must be > 0, but got {self.crop_scale}",
        )
        _check(
            self.rotations is None or self.rotations >= 1,
            f"data.rotations must be >= 1, but got {self.rotations}",
        )
        _check(
            self.epoch_repeats >= 1,
            f"data.epoch_repeats must be >= 1, but got {self.epoch_repeats}",
        )

    def augment_settings(self) -> dict[str, float | int | None]:
        """The augmentation settings set here (None: the preset's), for make_augment."""
        settings: dict[str, float | int | None] = {
            key: getattr(self, key) for key, _, _ in AUGMENT_RANGES
        }
        settings["rotations"] = self.rotations
        return settings


@dataclass(frozen=True)
class ModelConfig:
    # see trainer.list_models(); any timm model name works too, or a timm pretrained tag
    # (resnet152.tv2_in1k) to pick the ImageNet weights
    backbone: str = "small_cnn"
    dropout: float = 0.0  # dropout before the linear head
    pretrained: str | None = None  # None, "imagenet", a weights file, or "study:NAME"
    strategy: str = "full"  # full fine-tune, partial (freeze first stages), linear probe
    freeze_stages: int = 0  # for strategy=partial: how many leading stages stay frozen
    width: int = 32  # channel width of the built-in small CNN
    # hidden units of a two-layer head (Dropout-Linear-ReLU-Dropout-Linear; seed 004 retrained
    # the last two layers); 0: one Linear layer after the dropout (seed 000's head)
    head_hidden: int = 0
    # timm's ResNets start the last BatchNorm of each residual block at zero (each block starts
    # as the identity); torchvision's, which seeds 000 and 001 trained from scratch, do not:
    # false matches them. Only from-scratch initialisation changes; loaded weights replace it
    zero_init_last: bool = True

    def __post_init__(self) -> None:
        _check(
            0.0 <= self.dropout < 1.0,
            f"model.dropout must be in [0, 1), but got {self.dropout}",
        )
        _choice("model.strategy", self.strategy, STRATEGIES)
        _check(
            self.freeze_stages >= 0,
            f"model.freeze_stages must be >= 0, but got {self.freeze_stages}",
        )
        _check(self.width >= 1, f"model.width must be >= 1, but got {self.width}")
        _check(self.head_hidden >= 0, f"model.head_hidden must be >= 0, but got {self.head_hidden}")


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"  # see trainer.list_losses()
    smoothing: float = 0.1  # label smoothing epsilon (label_smoothing, ls_focal)
    gamma: float = 2.0  # focal exponent (focal, ls_focal)
    alpha: float = 1.0  # focal weight (focal, ls_focal)

    def __post_init__(self) -> None:
        _check(
            0.0 <= self.smoothing < 1.0,
            f"loss.smoothing must be in [0, 1), but got {self.smoothing}",
        )
        _check(self.gamma >= 0.0, f"loss.gamma must be >= 0, but got {self.gamma}")
        _check(self.alpha > 0.0, f"loss.alpha must be > 0, but got {self.alpha}")


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"  # see trainer.list_optimizers()
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd, sam_sgd
    nesterov: bool = False  # sgd, sam_sgd
    rho: float = 0.05  # SAM neighbourhood radius (sam_*)
    # weight decay on normalisation weights and biases too (every parameter, as torch's
    # optimizers do); false: timm's param_groups_weight_decay, which leaves 1-D parameters
    # (BatchNorm/LayerNorm scales and shifts, biases) undecayed. True by default: a stored
    # config without this key (every trial before it) trained that way and still means it
    decay_norm_bias: bool = True

    def __post_init__(self) -> None:
        _check(self.lr > 0.0 and math.isfinite(self.lr), f"optim.lr must be > 0, but got {self.lr}")
        _check(
            self.weight_decay >= 0.0,
            f"optim.weight_decay must be >= 0, but got {self.weight_decay}",
        )
        _check(
            0.0 <= self.momentum < 1.0,
            f"optim.momentum must be in [0, 1), but got {self.momentum}",
        )
        _check(self.rho > 0.0, f"optim.rho must be > 0, but got {self.rho}")


@dataclass(frozen=True)
class SchedConfig:
    name: str = "cosine"  # none, cosine (to min_lr over the epoch budget), plateau, step, onecycle
    min_lr: float = 1e-6  # cosine floor
    factor: float = 0.5  # plateau and step: multiply lr by this ...
    patience: int = 1  # ... plateau: after more than this many epochs without val-acc gain
    step_epochs: int = 5  # ... step: every this many epochs
    warmup_epochs: int = 0  # linear warmup from ~0 to optim.lr over these epochs, any schedule

    def __post_init__(self) -> None:
        _choice("sched.name", self.name, SCHEDULERS)
        _check(0.0 < self.factor < 1.0, f"sched.factor must be in (0, 1), but got {self.factor}")
        _check(self.patience >= 0, f"sched.patience must be >= 0, but got {self.patience}")
        _check(self.step_epochs >= 1, f"sched.step_epochs must be >= 1, but got {self.step_epochs}")
        _check(
            self.warmup_epochs >= 0,
            f"sched.warmup_epochs must be >= 0, but got {self.warmup_epochs}",
        )


@dataclass(frozen=True)
class RunConfig:
    epochs: int = 10  # epoch budget per trial
    patience: int = 3  # early stopping: epochs without a train.monitor gain; 0 turns it off
    seed: int = 0  # model init and batch order; equal seeds give paired comparisons
    grad_clip: float = 0.0  # max global grad norm; 0 turns clipping off
    accum_steps: int = 1  # gradient accumulation (seed 003 used 2)
    amp: bool = True  # mixed precision where the device supports it (CUDA)
    device: str = "auto"  # auto (cuda, mps, cpu) or an explicit torch device
    channels_last: bool = True  # memory format for conv nets (faster on CPU and GPU)
    ema_decay: float = 0.0  # weight EMA (timm's ModelEmaV3), evaluated and kept; 0 turns it off
    # the validation metric that picks the kept (best) epoch and drives early stopping:
    # val_acc, val_loss (lower is better) or val_f1 (macro-F1, for imbalanced classes)
    monitor: str = "val_acc"
    # torch.compile the model in place (same weights and checkpoints): pays for long trials on
    # a GPU, after a compilation of about a minute per model and process
    compile: bool = False

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"train.epochs must be >= 1, but got {self.epochs}")
        _check(self.patience >= 0, f"train.patience must be >= 0, but got {self.patience}")
        _check(self.grad_clip >= 0.0, f"train.grad_clip must be >= 0, but got {self.grad_clip}")
        _check(
            self.accum_steps >= 1,
            f"train.accum_steps must be >= 1, but got {self.accum_steps}",
        )
        _check(
            0.0 <= self.ema_decay < 1.0,
            f"train.ema_decay must be in [0, 1), but got {self.ema_decay}",
        )
        _choice("train.monitor", self.monitor, tuple(MONITORS))


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_flat(cls, values: dict[str, Any] | None = None) -> TrainConfig:
        """Build a config from ``{"optim.lr": 1e-3, ...}``; missing keys keep defaults."""
        sections: dict[str, dict[str, Any]] = {}
        for key, value in (values or {}).items():
            section, name = _split_key(key)
            sections.setdefault(section, {})[name] = _coerce(key, value)
        kwargs = {}
        for f in fields(cls):
            section_cls = _section_types()[f.name]
            kwargs[f.name] = section_cls(**sections.get(f.name, {}))
        return cls(**kwargs)

    def to_flat(self) -> dict[str, Any]:
        """The inverse of from_flat: every dotted key with its value (JSON-friendly)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            section = getattr(self, f.name)
            for sf in fields(section):
                value = getattr(section, sf.name)
                out[f"{f.name}.{sf.name}"] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, values: dict[str, Any]) -> TrainConfig:
        """A copy with some dotted keys changed."""
        return TrainConfig.from_flat({**self.to_flat(), **values})


def config_keys() -> list[str]:
    """Every valid dotted key, e.g. ``optim.lr``."""
    return sorted(TrainConfig().to_flat())


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid dotted config key, else raise a ValueError."""
    if key not in _key_types():
        raise unknown_name_error("config key", key, config_keys())
    return key


@functools.cache
def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


@functools.cache
def _key_types() -> dict[str, Any]:
    out = {}
    for section, section_cls in _section_types().items():
        hints = typing.get_type_hints(section_cls)
        for f in fields(section_cls):
            out[f"{section}.{f.name}"] = hints[f.name]
    return out


def _split_key(key: str) -> tuple[str, str]:
    check_key(key)
    section, name = key.split(".", 1)
    return section, name


def _coerce(key: str, value: Any) -> Any:
    """Check ``value`` against the field's type; ints widen to floats, lists to tuples."""
    hint = _key_types()[key]
    allowed = _allowed_types(hint)
    if value is None:
        if type(None) in allowed:
            return None
        raise TypeError(f"{key} must not be empty (got None)")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tuple in allowed and isinstance(value, list | tuple):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise TypeError(f"{key} must be a list of integers, but got {value!r}")
        return tuple(value)
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if (
            t is not bool
            and t is not tuple
            and isinstance(value, t)
            and not isinstance(value, bool)
        ):
            return value
    names = " or ".join(t.__name__ for t in allowed if t is not type(None))
    raise TypeError(f"{key} must be {names}, but got {value!r} ({type(value).__name__})")


def _allowed_types(hint: Any) -> list[type]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        out: list[type] = []
        for arg in typing.get_args(hint):
            out.extend(_allowed_types(arg))
        return out
    if origin is tuple:
        return [tuple]
    return [hint]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise unknown_name_error(key, value, options)


__all__ = [
    "MONITORS",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SchedConfig",
    "TrainConfig",
    "check_key",
    "config_keys",
]
