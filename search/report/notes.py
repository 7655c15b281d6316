"""What optuna-dashboard shows beyond Optuna's own data: a note per finished trial (config,
status and reason, timings) and artifacts (learning curve, confusion matrix, checkpoint)."""

from __future__ import annotations

import csv
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import optuna

import trainer
from search.store import Storage, artifacts
from search.study.refit import best_search_trial, refit_source

log = logging.getLogger("hpsearch")
MAX_CHECKPOINT_ARTIFACT = 200 * 2**20  # bigger checkpoints stay in the checkpoint folder only
# the study user attribute naming the study artifact that holds plotly.js for its figures
PLOTLY_ATTR = "plotly_js_artifact"


def trial_note(
    cfg: trainer.TrainConfig,
    result: trainer.TrainResult | None,
    *,
    status: str,
    reason: str,
    placement: str | None = None,
) -> str:
    lines = [f"**{status}**: {reason}", ""]
    if placement:  # where an engine (Ray) ran it
        lines += [f"ran on {placement}", ""]
    if result is not None and result.history:
        s = result.summary()
        monitor = cfg.train.monitor
        kept = result.best_metric(monitor)
        by = "" if monitor == "val_acc" else f" (kept by {monitor} {kept:.4f})"
        lines += [
            f"best val_acc {s['best_val_acc']:.4f} at epoch {s['best_epoch']} of "
            f"{s['epochs_run']}{by}; max train_acc {s['max_train_acc']:.4f}",
            f"training {result.train_seconds:.1f}s, set-up {result.setup_seconds:.1f}s",
            "",
        ]
    lines += ["| parameter | value |", "|---|---|"]
    lines += [f"| `{k}` | {_cell(v)} |" for k, v in cfg.to_flat().items()]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|")


def curve_figure(history: list[dict[str, float]], title: str):
    import plotly.graph_objects as go

    epochs = [h["epoch"] for h in history]
    fig = go.Figure()
    for key, dash in (("train_acc", "dot"), ("val_acc", "solid")):
        fig.add_scatter(x=epochs, y=[h[key] for h in history], name=key, line_dash=dash)
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title="accuracy")
    return fig


def annotate_trial(
    trial: optuna.Trial,
    cfg: trainer.TrainConfig,
    result: trainer.TrainResult,
    *,
    storage: Storage | None,
) -> None:
    """Best effort: a failure here is logged and never fails the trial. The artifacts go to
    ``storage``'s artifact store (None: only the note)."""
    try:
        from optuna_dashboard import save_note

        note = trial_note(
            cfg,
            result,
            status=result.status,
            reason=result.reason,
            placement=trial.user_attrs.get("placement"),
        )
        save_note(trial, note)
        if storage is None or not result.history:
            return
        store = storage.artifact_store()
        with tempfile.TemporaryDirectory() as tmp:
            curve = Path(tmp) / f"learning-curve-trial-{trial.number}.html"
            figure = curve_figure(result.history, f"trial {trial.number}")
            curve.write_text(
                _with_script(figure, _plotly_src(trial.study, store, Path(tmp))), encoding="utf-8"
            )
            _upload(store, trial, curve, "text/html")
            cm_path = _confusion_csv(cfg, result, Path(tmp), trial.number)
            if cm_path is not None:
                _upload(store, trial, cm_path, "text/csv")
        ckpt = result.checkpoint  # one in S3 is there for the dashboard's reader already
        if (
            ckpt
            and not artifacts.is_remote(ckpt)
            and _beats_best(trial, result)
            and os.path.getsize(ckpt) <= MAX_CHECKPOINT_ARTIFACT
        ):
            _upload(store, trial, Path(ckpt), "application/octet-stream")
    except Exception as exc:  # the dashboard extras must never cost a trial
        log.warning("could not annotate trial %d for the dashboard: %s", trial.number, exc)


def note_failure(
    trial: optuna.Trial, cfg: trainer.TrainConfig, *, status: str, reason: str
) -> None:
    try:
        from optuna_dashboard import save_note

        save_note(trial, trial_note(cfg, None, status=status, reason=reason))
    except Exception as exc:
        log.warning("could not annotate trial %d for the dashboard: %s", trial.number, exc)


def _beats_best(trial: optuna.Trial, result: trainer.TrainResult) -> bool:
    """Only a new best trial gets its weights copied into the artifact store: its value is
    the study's metric (``search run`` names it) at the kept epoch. A refit (the winner trained
    longer) stands for its search trial whatever its value (``search.study.refit``); search
    trials are ranked among themselves."""
    study = trial.study
    best = best_search_trial(study)
    if refit_source(trial) is not None:
        return best is not None and refit_source(trial) == best.number
    if best is None:
        return True
    best = best.value
    value = result.best_metric((study.metric_names or ["val_acc"])[0])
    if trial.study.direction == optuna.study.StudyDirection.MAXIMIZE:
        return value > best
    return value < best


def _upload(store, trial: optuna.Trial | optuna.Study, path: Path, mimetype: str) -> str:
    return optuna.artifacts.upload_artifact(
        artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype=mimetype
    )


def _plotly_src(study: optuna.Study, store, tmp: Path) -> str:
    """Where a trial's figure loads plotly.js from, relative to the figure: one copy per study,
    uploaded as a study artifact the first time. optuna-dashboard serves a trial's artifacts
    at ``/artifacts/STUDY/TRIAL/ID`` and the study's at ``/artifacts/STUDY/ID``, so
    ``../ID`` finds it with no network (a CDN link leaves the figures blank offline), and
    its 4.6 MB are stored once, not in every trial's figure."""
    artifact_id = study.user_attrs.get(PLOTLY_ATTR)
    if artifact_id is None:
        from plotly.offline import get_plotlyjs

        js = tmp / "plotly.min.js"
        js.write_text(get_plotlyjs(), encoding="utf-8")
        # two workers may both upload it: each copy works, the last one named is used
        artifact_id = _upload(store, study, js, "text/javascript")
        study.set_user_attr(PLOTLY_ATTR, artifact_id)
    return f"../{artifact_id}"


def _with_script(figure, src: str) -> str:
    """The figure as a whole HTML page that loads plotly.js from ``src``."""
    page = figure.to_html(include_plotlyjs=False, full_html=True)
    return page.replace("<head>", f'<head>\n    <script src="{src}"></script>', 1)


def _confusion_csv(
    cfg: trainer.TrainConfig, result: trainer.TrainResult, tmp: Path, number: int
) -> Path | None:
    from trainer.evaluate import confusion_matrix, predict_logits

    if result.model is None:
        return None
    data = trainer.load_data(cfg.data)
    pred = result.val_predictions  # from the evaluation that chose the model: no second pass
    if pred is None or len(pred) != len(data.y_val):
        mean, std = result.normalization or (data.mean, data.std)  # as the run fed its model
        logits = predict_logits(result.model, data.x_val, mean=mean, std=std)
        if logits.numel() == 0 or not math.isfinite(float(logits.sum())):
            return None
        pred = logits.argmax(1)
    cm = confusion_matrix(data.y_val, pred, data.num_classes)
    path = tmp / f"confusion-matrix-trial-{number}.csv"
    names = data.class_names
    with path.open("w", newline="", encoding="utf-8") as f:  # a name may hold , or "
        out = csv.writer(f)
        out.writerow(["true\\predicted", *names])
        out.writerows([names[i], *(int(v) for v in cm[i])] for i in range(len(names)))
    return path


def study_changes_note(study: optuna.Study, changes: list[dict[str, Any]]) -> None:
    """The study's dashboard note: every settings change forced into it, in order."""
    lines = ["Settings changed with `search run --force` (trials before each line ran with the older settings):", ""]  # fmt: skip
    lines += [f"- before trial {c['from_trial']}: {'; '.join(c['changes'])}" for c in changes]
    try:
        from optuna_dashboard import save_note

        save_note(study, "\n".join(lines))
    except Exception as exc:  # the dashboard extras must never cost a run
        log.warning("could not write the study note for the dashboard: %s", exc)
