"""Predictions, test-time augmentation and confusion matrices for a trained classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from trainer._registry import unknown_name_error
from trainer.data.resize import CROP_PCT

TTA = bool | str | Sequence[str] | None  # what predict_logits(tta=...) takes; see tta_views

# Named sets of views. seed000 is seed 000's six test-time views, made deterministic: the
# original, a flip, a small rotation each way, a colour shift and a blur (the default).
TTA_SETS: dict[str, tuple[str, ...]] = {
    "seed000": ("identity", "hflip", "rotate_p10", "rotate_m10", "color", "blur"),
    "flips": ("identity", "hflip", "vflip"),
    "crops": ("crop_center", "crop_tl", "crop_tr", "crop_bl", "crop_br"),  # timm's five-crop
    "none": ("identity",),
}
DEFAULT_TTA = "seed000"
_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def _views() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Every view by name: float images ``[B, C, H, W]`` in [0, 1] -> the same shape."""
    if not _VIEWS:
        import torchvision.transforms.v2.functional as TF

        def crop(where: str) -> Callable[[torch.Tensor], torch.Tensor]:
            def view(x: torch.Tensor) -> torch.Tensor:
                h, w = x.shape[-2:]
                ch, cw = max(1, round(h * CROP_PCT)), max(1, round(w * CROP_PCT))
                top = {"t": 0, "b": h - ch, "c": (h - ch) // 2}[where[0]]
                left = {"l": 0, "r": w - cw, "c": (w - cw) // 2}[where[1]]
                return TF.resized_crop(x, top, left, ch, cw, [h, w], antialias=True)

            return view

        _VIEWS.update(
            identity=lambda x: x,
            hflip=TF.horizontal_flip,
            vflip=TF.vertical_flip,
            rotate_p10=lambda x: TF.rotate(x, 10.0),  # degrees, counter-clockwise
            rotate_m10=lambda x: TF.rotate(x, -10.0),
            color=lambda x: TF.adjust_contrast(TF.adjust_brightness(x, 1.1), 1.1).clamp(0, 1),
            blur=lambda x: TF.gaussian_blur(x, [5, 5], [1.0, 1.0]),
            crop_center=crop("cc"),
            crop_tl=crop("tl"),
            crop_tr=crop("tr"),
            crop_bl=crop("bl"),
            crop_br=crop("br"),
        )
    return _VIEWS


def list_tta_views() -> list[str]:
    """The names of the single test-time views (the sets are ``TTA_SETS``)."""
    return sorted(_views())


def tta_views(tta: TTA = True) -> tuple[str, ...]:
    """The views that ``tta`` names, in order: False/None/"" -> ``("identity",)`` (no TTA);
    True -> the default set (seed 000's six); a comma-separated string or a list of view and
    set names (``"hflip,vflip"``, ``"flips,crops"``) -> those views, each once.

    Every command that evaluates with TTA (predict, evaluate, confirm) resolves it here."""
    if tta is None or tta is False or tta == "":
        return TTA_SETS["none"]
    if tta is True:
        return TTA_SETS[DEFAULT_TTA]
    names = tta.split(",") if isinstance(tta, str) else list(tta)
    out: list[str] = []
    for raw in names:
        name = str(raw).strip()
        if not name:
            continue
        if name in TTA_SETS:
            out.extend(TTA_SETS[name])
        elif name in _views():
            out.append(name)
        else:
            raise unknown_name_error("test-time view", name, [*_views(), *TTA_SETS])
    if not out:
        raise ValueError(f"no test-time views in {tta!r}; give e.g. 'hflip,vflip' or 'seed000'")
    return tuple(dict.fromkeys(out))


def tta_key(tta: TTA) -> bool | str:
    """One spelling per set of views, to record and compare: False (no TTA), True (the
    default set) or the views sorted and comma-separated (the mean of their logits does not
    depend on the order). ``--tta-views none`` is False, ``seed000`` True."""
    views = sorted(tta_views(tta))
    if views == sorted(TTA_SETS["none"]):
        return False
    if views == sorted(TTA_SETS[DEFAULT_TTA]):
        return True
    return ",".join(views)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    x_uint8: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    tta: TTA = False,
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits ``[N, classes]`` (float32, on the CPU) for uint8 images ``[N, C, H, W]``,
    averaged over the test-time views ``tta`` names (see ``tta_views``; False: none)."""
    model.eval()
    device = next(model.parameters()).device
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    views = [_views()[name] for name in tta_views(tta)]
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


def macro_f1(cm: torch.Tensor) -> float:
    """Macro-averaged F1 of a confusion matrix: each class's F1 (2 TP / (2 TP + FP + FN))
    weighs the same however many images it has, so a classifier that ignores a small class
    scores low although its accuracy is high. Classes that are neither present nor predicted
    are left out (as scikit-learn's ``f1_score(average="macro")`` does); one host read."""
    cm = cm.double()
    tp = cm.diag()
    actual, predicted = cm.sum(1), cm.sum(0)
    seen = (actual + predicted) > 0
    if not bool(seen.any()):
        return float("nan")
    f1 = 2 * tp / (actual + predicted).clamp_min(1)
    return float(f1[seen].mean())


def accuracy(
    model: nn.Module,
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    tta: TTA = False,
) -> float:
    """Top-1 accuracy of ``model`` on uint8 images ``x_uint8`` with labels ``y``; batches go to
    the model's device one at a time, so the whole split never sits in device memory."""
    if len(y) == 0:
        raise ValueError("accuracy needs at least one image, but got an empty split")
    logits = predict_logits(model, x_uint8, mean=mean, std=std, tta=tta)
    return float((logits.argmax(1) == y.cpu()).double().mean())
