"""Backbones with a Dropout + Linear head: the seeds' small CNN and MLP, and any timm model.

``create_model(cfg, num_classes=..., in_chans=..., image_size=...)`` is the one entry point.
A backbone is a feature extractor ``[B, C, H, W] -> [B, F]``; the head is
``Dropout(p) -> Linear(F, num_classes)`` (seed 000's head), or with ``model.head_hidden = h``
two layers ``Dropout(p) -> Linear(F, h) -> ReLU -> Dropout(p) -> Linear(h, num_classes)``
(seed 004 retrained the last two layers of a frozen network), so every backbone gets the same
searchable dropout and the head can be swapped for transfer learning.

``model.zero_init_last = false`` builds timm's ResNets with torchvision's initialisation (the
last BatchNorm of each residual block starts at one, not zero), as seeds 000 and 001 trained.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainer._registry import Registry, unknown_name_error
from trainer.config import ModelConfig

if TYPE_CHECKING:
    from trainer.config import TrainConfig
    from trainer.data import ImageData

_BUILTIN: Registry[Callable[..., tuple[nn.Module, int]]] = Registry("backbone")

# timm backbones the seeds used; any other timm name works too (see check_backbone).
SEED_TIMM_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "efficientnet_b2",
    "vgg16_bn",
)


class Classifier(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        num_classes: int,
        dropout: float,
        *,
        hidden: int = 0,
    ):
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        if hidden:
            self.head = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(num_features, hidden), nn.ReLU(inplace=True),
                nn.Dropout(dropout), nn.Linear(hidden, num_classes),
            )  # fmt: skip
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        # A frozen stage is frozen entirely: its BatchNorm statistics must not drift either
        # (linear probe and partial fine-tuning, seeds 001 and 004).
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in m.parameters()
            ):
                m.eval()
        return self

    def stages(self) -> list[list[nn.Parameter]]:
        """Backbone parameters grouped stem-first into stages, for partial freezing."""
        matcher = getattr(self.backbone, "group_matcher", None)
        if matcher is not None:  # timm models know their own stages
            from timm.models import group_parameters

            named = dict(self.backbone.named_parameters())
            groups = group_parameters(self.backbone, matcher(coarse=True))
            return [[named[n] for n in names] for _, names in sorted(groups.items())]
        return [ps for m in self.backbone.children() if (ps := list(m.parameters()))]


def list_models() -> list[str]:
    """The built-in backbones and the timm backbones the seeds used."""
    return sorted({*_BUILTIN.names(), *SEED_TIMM_BACKBONES})


def check_backbone(name: str) -> str:
    """Return ``name`` if it is a built-in or timm backbone, or a timm architecture with one of
    its pretrained tags (``resnet152.tv2_in1k``: timm's ``model.tag`` form, which picks the
    weights ``model.pretrained = "imagenet"`` loads), else raise a ValueError."""
    if name in _BUILTIN or name in _timm_names():
        return name
    arch, dot, tag = name.partition(".")
    if not dot:
        raise unknown_name_error("backbone", name, [*_BUILTIN.names(), *_timm_names()])
    if name in _timm_pretrained():
        return name
    if arch not in _timm_names():
        if arch in _BUILTIN:
            raise ValueError(f"backbone {name!r}: built-in backbones take no tag; use {arch!r}")
        raise unknown_name_error("tagged timm backbone", name, _timm_pretrained())
    tags = sorted(t for t in _timm_pretrained() if t.startswith(f"{arch}."))
    if not tags:
        raise ValueError(
            f"timm has no pretrained weights for {arch!r}, so {name!r} names none; "
            f"use model.backbone = {arch!r}"
        )
    close = difflib.get_close_matches(name, tags, n=1, cutoff=0.0)
    raise ValueError(
        f"timm has no pretrained tag {tag!r} for {arch}: {name!r}. Did you mean {close[0]!r}? "
        f"Tags: {', '.join(tags)}"
    )


@functools.cache
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


@functools.cache
def _timm_pretrained() -> frozenset[str]:
    """Every ``architecture.tag`` timm has weights for (``timm.list_pretrained``)."""
    import timm

    return frozenset(timm.list_pretrained())


@functools.cache
def pretrained_data_config(backbone: str) -> dict[str, Any] | None:
    """The input pipeline ``backbone``'s pretrained weights were trained with: ``mean``,
    ``std``, ``crop_pct``, ``interpolation``, ``input_size`` (timm's
    ``resolve_model_data_config`` over the weights' pretrained config, read without building
    the model or loading weights; ``resnet50`` is its default tag's, ``resnet50.a1_in1k``
    that tag's). None for the built-in backbones and timm names without pretrained weights."""
    if backbone in _BUILTIN:
        return None
    import timm
    import timm.data

    try:
        pretrained = timm.models.get_pretrained_cfg(backbone)
    except RuntimeError:  # an unknown tag (check_backbone names the options)
        return None
    if pretrained is None:
        return None
    return timm.data.resolve_model_data_config(None, pretrained_cfg=pretrained.to_dict())


def input_stats(cfg: TrainConfig, data: ImageData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std ``cfg``'s inputs are normalised with: with
    ``data.normalize = "pretrained"`` those of the backbone's pretrained weights (the CLIP
    or Inception weights' own, not ImageNet's), else what ``load_data`` chose."""
    if cfg.data.normalize != "pretrained":
        return tuple(data.mean), tuple(data.std)
    resolved = pretrained_data_config(cfg.model.backbone)
    if resolved is None:
        raise ValueError(
            f"data.normalize = 'pretrained' takes the mean/std of the backbone's pretrained "
            f"weights, and {cfg.model.backbone!r} has none; use 'imagenet' or 'dataset'"
        )
    return tuple(resolved["mean"]), tuple(resolved["std"])


def for_model(cfg: TrainConfig, data: ImageData) -> ImageData:
    """``data`` with the mean/std ``cfg`` normalises with (``input_stats``): a view sharing
    its images, for the training run and the checkpoint it writes."""
    mean, std = input_stats(cfg, data)
    if (mean, std) == (tuple(data.mean), tuple(data.std)):
        return data
    return dataclasses.replace(data, mean=mean, std=std)


def create_model(
    cfg: ModelConfig, *, num_classes: int, in_chans: int = 3, image_size: int = 32
) -> Classifier:
    """Build backbone + head. Pretrained weights are loaded by ``trainer.checkpoint``."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, but got {num_classes}")
    check_backbone(cfg.backbone)
    if cfg.backbone in _BUILTIN:
        body, feats = _BUILTIN.get(cfg.backbone)(cfg, in_chans=in_chans, image_size=image_size)
    else:
        body, feats = _timm_backbone(cfg, in_chans=in_chans)
    return Classifier(body, feats, num_classes, cfg.dropout, hidden=cfg.head_hidden)


def _timm_backbone(cfg: ModelConfig, *, in_chans: int) -> tuple[nn.Module, int]:
    imagenet = cfg.pretrained == "imagenet"
    if imagenet:
        _check_hub_reachable(cfg.backbone)
    try:
        body = _timm_create(cfg, pretrained=imagenet, in_chans=in_chans)
    except Exception as exc:  # offline hub, missing weights: say what to do instead
        if not imagenet:
            raise
        raise ValueError(
            f"could not load ImageNet weights for {cfg.backbone!r} ({type(exc).__name__}); "
            "put them in the Hugging Face cache (HF_HOME) or set model.pretrained to a local "
            ".safetensors/.pth file"
        ) from None
    # VGG's pre-logits MLP widens the features: head_hidden_size is what reaches the head
    return body, getattr(body, "head_hidden_size", None) or body.num_features


def _timm_create(cfg: ModelConfig, *, pretrained: bool, in_chans: int) -> nn.Module:
    """timm's model; ``model.zero_init_last = false`` is passed on to the architectures that
    take it (ResNet, ResNeXt and the other residual families). The rest have no such option
    (VGG and EfficientNet zero no BatchNorm), so they are built as they are."""
    import timm

    kwargs: dict[str, Any] = {"pretrained": pretrained, "num_classes": 0, "in_chans": in_chans}
    if not cfg.zero_init_last:
        try:
            return timm.create_model(cfg.backbone, zero_init_last=False, **kwargs)
        except TypeError as exc:
            if "zero_init_last" not in str(exc):
                raise
    return timm.create_model(cfg.backbone, **kwargs)


def _check_hub_reachable(name: str) -> None:
    """Fail in well under a second when offline and the weights are not cached."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes"):
        return
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg else None
    if hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(hub_id, filename), str):
                return
    raise ValueError(
        f"ImageNet weights for {name!r} are not in the Hugging Face cache and HF_HUB_OFFLINE=1; "
        "download them once online (or into HF_HOME), or set model.pretrained to a local "
        ".safetensors/.pth file"
    )


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


@_BUILTIN.register("small_cnn")
def _small_cnn(cfg: ModelConfig, *, in_chans: int, image_size: int) -> tuple[nn.Module, int]:
    """Three conv-BN-ReLU pairs with max-pooling, widths w, 2w, 4w; fast on a CPU."""
    w = cfg.width
    layers: list[nn.Module] = []
    cin = in_chans
    for cout in (w, 2 * w, 4 * w):
        stage = nn.Sequential(*_conv_bn(cin, cout), *_conv_bn(cout, cout), nn.MaxPool2d(2))
        layers.append(stage)
        cin = cout
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return body, cin


@_BUILTIN.register("seed_cnn")
def _seed_cnn(cfg: ModelConfig, *, in_chans: int, image_size: int) -> tuple[nn.Module, int]:
    """Seed 004's network (PyTorch's CIFAR-10 tutorial CNN): two 5x5 convs with pooling and
    two hidden linear layers; pooled to 5x5 so it takes any image size."""
    body = nn.Sequential(
        nn.Sequential(nn.Conv2d(in_chans, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.AdaptiveAvgPool2d(5),
        nn.Flatten(),
        nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Linear(120, 84), nn.ReLU(inplace=True)),
    )
    return body, 84


@_BUILTIN.register("mlp")
def _mlp(cfg: ModelConfig, *, in_chans: int, image_size: int) -> tuple[nn.Module, int]:
    """Seed 004's baseline: the flattened image into one hidden layer of 255 units."""
    body = nn.Sequential(
        nn.Flatten(), nn.Linear(in_chans * image_size * image_size, 255), nn.ReLU(inplace=True)
    )
    return body, 255


@_BUILTIN.register("seed_cnn_full")
def _seed_cnn_full(cfg: ModelConfig, *, in_chans: int, image_size: int) -> tuple[nn.Module, int]:
    """Seed 004's network as it ran: unpadded 5x5 convs and the whole pooled map flattened into
    120 units (16 x 72 x 72 at 300 px: 9,966,691 parameters with 3 classes, as its summary),
    with its two dropout layers: after the convolutions and (the head's) before the last one."""
    side = ((image_size - 4) // 2 - 4) // 2  # two rounds of conv 5x5 (no padding) + pool 2
    if side < 1:
        raise ValueError(
            f"seed_cnn_full needs images of at least 16 px, but got {image_size}; "
            "set data.image_size to 16 or more"
        )
    body = nn.Sequential(
        nn.Sequential(nn.Conv2d(in_chans, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Dropout(cfg.dropout),
        nn.Flatten(),
        nn.Sequential(nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Linear(120, 84), nn.ReLU(inplace=True)),
    )
    return body, 84
