"""``search evaluate`` and ``search predict``: use a finished trial's checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

import trainer
from search.store import artifacts
from search.study.refit import best_trial
from search.study.splits import ATTR as SPLITS_ATTR
from search.study.splits import check_splits, require_test
from trainer._files import atomic_write
from trainer.data import load_test
from trainer.data.resize import eval_mode
from trainer.evaluate import TTA, confusion_matrix, per_class_accuracy, predict_logits, tta_views


def pick_trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial:
    if number is None:  # the refit of the best search trial, once one completed
        return best_trial(study)
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not trials:
        raise ValueError(f"study {study.study_name!r} has no trial {number}")
    if trials[0].state != TrialState.COMPLETE:
        raise ValueError(f"trial {number} is {trials[0].state.name.lower()}, not complete")
    return trials[0]


def checkpoint_of(trial: optuna.trial.FrozenTrial, study_name: str) -> Path:
    """The trial's checkpoint as a local file (one in S3 downloaded first)."""
    path = trial.user_attrs.get("checkpoint")
    if not path:
        raise ValueError(f"trial {trial.number} of {study_name!r} saved no checkpoint")
    try:
        local = artifacts.local_copy(path)
    except FileNotFoundError:
        local = None
    if local is None or not local.is_file():
        raise ValueError(
            f"the checkpoint of trial {trial.number} of {study_name!r} is gone ({path}); "
            "only the best trials keep theirs: use the best trial or rerun it"
        )
    return local


def load_trained(
    path: Path, device: torch.device | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint came from and load its weights (no pickle)."""
    state, meta = trainer.read_checkpoint(path)
    if "config" not in meta or "class_names" not in meta:
        raise ValueError(f"{path} is not an hpsearch checkpoint (no config metadata)")
    cfg = trainer.TrainConfig.from_flat({**meta["config"], "model.pretrained": None})
    model = trainer.create_model(
        cfg.model,
        num_classes=len(meta["class_names"]),
        in_chans=meta["in_chans"],
        image_size=cfg.data.image_size,
    )
    model.load_state_dict(state)
    model.to(device or trainer.select_device(cfg.train.device)).eval()
    return model, meta


def evaluate_trial(
    study: optuna.Study,
    number: int | None = None,
    *,
    data_root: str | None = None,
    split: str = "val",
    tta: TTA = False,
) -> dict[str, Any]:
    """Confusion matrix and per-class accuracy of a trial's checkpoint on ``split`` (val, or
    test: refused for a study without a test split or with one that changed since), with the
    test-time views ``tta`` names (``trainer.evaluate.tta_views``)."""
    if split not in ("val", "test"):
        raise ValueError(f"split must be val or test, but got {split!r}")
    views = tta_views(tta)  # a bad view name fails before anything is loaded
    recorded = study.user_attrs.get(SPLITS_ATTR)
    if split == "test":
        require_test(recorded, study=study.study_name)  # before loading any weights or data
    trial = pick_trial(study, number)
    model, meta = load_trained(checkpoint_of(trial, study.study_name))
    flat = dict(meta["config"])
    if data_root:
        flat["data.root"] = str(Path(data_root).expanduser().resolve())
    cfg = trainer.TrainConfig.from_flat({**flat, "model.pretrained": None})
    data = trainer.load_data(cfg.data)
    x, y = data.x_val, data.y_val
    if split == "test":
        check_splits(recorded, cfg.data, study=study.study_name, need_test=True)
        x, y = load_test(cfg.data)
    logits = predict_logits(model, x, mean=meta["mean"], std=meta["std"], tta=views)
    pred = logits.argmax(1)
    cm = confusion_matrix(y, pred, data.num_classes)
    acc = per_class_accuracy(cm)
    rows = sorted(
        (
            {
                "class": name,
                "accuracy": float(acc[i]),
                "support": int(cm[i].sum()),
                "most_confused_with": _top_confusion(cm, i, data.class_names),
            }
            for i, name in enumerate(data.class_names)
        ),
        key=lambda r: (r["accuracy"], r["class"]),
    )
    return {
        "study": study.study_name,
        "trial": trial.number,
        "split": split,
        "tta": [] if views == ("identity",) else list(views),
        "accuracy": float((pred == y).double().mean()),
        "classes": data.class_names,
        "confusion": cm.tolist(),
        "per_class": rows,
    }


def _top_confusion(cm: torch.Tensor, i: int, names: list[str]) -> str:
    row = cm[i].clone()
    row[i] = 0
    if int(row.sum()) == 0:
        return ""
    j = int(row.argmax())
    return f"{names[j]} ({int(row[j])})"


def confusion_figure(report: dict[str, Any]):
    import plotly.graph_objects as go

    names = report["classes"]
    fig = go.Figure(go.Heatmap(z=report["confusion"], x=names, y=names, colorscale="Blues"))
    fig.update_layout(
        title=f"{report['study']} trial {report['trial']}: confusion matrix on "
        f"{report.get('split', 'val')} (accuracy {report['accuracy']:.4f})",
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis_autorange="reversed",
    )
    return fig


def write_confusion_figure(report: dict[str, Any], path: str | Path) -> Path:
    """``confusion_figure(report)`` as an HTML page at ``path``, with plotly.min.js beside it
    (written once per folder, as ``search export`` does): it opens offline."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(
            f"--out {path}: the folder {path.parent} does not exist; create it or give another path"
        )
    confusion_figure(report).write_html(path, include_plotlyjs="directory")
    return path


def print_evaluation(report: dict[str, Any], *, limit: int = 20) -> None:
    which = {"val": "validation", "test": "test"}[report.get("split", "val")]
    views = report.get("tta") or []
    tta = f" with test-time views {','.join(views)}" if views else ""
    print(
        f"study {report['study']} trial {report['trial']}: "
        f"{which} accuracy {report['accuracy']:.4f} over {len(report['classes'])} classes{tta}"
    )
    print(f"{'class':<20} {'accuracy':>9} {'images':>7}  most confused with")
    for row in report["per_class"][:limit]:
        print(
            f"{row['class'][:20]:<20} {row['accuracy']:>9.4f} {row['support']:>7}  "
            f"{row['most_confused_with']}"
        )
    if len(report["per_class"]) > limit:
        print(f"... {len(report['per_class']) - limit} more classes (best last)")


def predict_folder(
    study: optuna.Study, data_dir: str, out: str, *, number: int | None = None, tta: TTA = False
) -> int:
    """Label the images in ``data_dir`` with a trial's model into the CSV ``out``, averaging
    the test-time views ``tta`` names; returns how many images were labeled."""
    from trainer.data.loaders import load_unlabeled

    views = tta_views(tta)  # a bad view name fails before anything is read or written

    out_path = Path(out)
    if out_path.exists() and out_path.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file name such as preds.csv")
    if not out_path.parent.is_dir():
        raise ValueError(f"--out {out}: directory {out_path.parent} does not exist")
    trial = pick_trial(study, number)
    model, meta = load_trained(checkpoint_of(trial, study.study_name))
    size = int(meta["config"]["data.image_size"])
    resize = eval_mode(  # older checkpoints: squash, and the default crop
        meta["config"].get("data.eval_resize", "squash"), meta["config"].get("data.crop_pct")
    )
    x, files = load_unlabeled(data_dir, image_size=size, eval_resize=resize)
    if meta["in_chans"] == 1 and x.shape[1] == 3:  # a grayscale model: average the channels
        x = x.float().mean(1, keepdim=True).round().to(torch.uint8)
    logits = predict_logits(model, x, mean=meta["mean"], std=meta["std"], tta=views)
    names = meta["class_names"]
    with atomic_write(out_path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        for name, k in zip(files, logits.argmax(1).tolist(), strict=True):
            writer.writerow([name, names[k]])
    return len(files)
