"""Tables and figures computed from storage alone: ablation tables (seed layouts, repeats and
confidence intervals), the final-results table of ``search confirm``, the trials table,
expected best accuracy after k trials, parameter importances, and plotly figures.
``search export`` writes them; nothing re-trains."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.report.runs import collect_confirm, collect_runs, companion_name, confirm_name
from search.report.stats import mean_ci
from search.report.tables import (
    Table,
    expected_max_table,
    factor_table,
    final_results_table,
    fmt_param_count,
    loss_table,
    slugify,
    tta_table,
    write_tables,
)
from search.store import Storage
from search.store.lookup import find_study
from search.study.metrics import DEFAULT_LOSS_METRIC

log = logging.getLogger("hpsearch")
EXPECTED_MAX_KS = (1, 2, 5, 10, 20, 50)


def _display(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def ablation_tables(
    companion: optuna.Study, arms: list[dict[str, Any]] | None = None
) -> list[Table]:
    """One seed-style table per factor (plus seed 003's loss form for ``loss.name``)."""
    arms = collect_runs(companion) if arms is None else arms
    baseline_cfg = companion.user_attrs.get("baseline", {})
    baseline_runs = next((a["runs"] for a in arms if a["factor"] == "baseline"), [])
    tables: list[Table] = []
    for factor in dict.fromkeys(a["factor"] for a in arms if a["factor"] != "baseline"):
        runs: dict[str, list[dict[str, Any]]] = {}
        for arm in arms:
            if arm["factor"] == factor:
                runs[_display(arm["value"])] = arm["runs"]
        base_value = _display(baseline_cfg.get(factor))
        if base_value not in runs:  # the baseline's value is not among the factor's values
            base_value = f"{base_value} (baseline)"
            runs = {base_value: baseline_runs, **runs}
        values = list(runs)
        tables.append(factor_table(factor, values, runs, baseline_value=base_value))
        if factor == "loss.name":
            metric = companion.user_attrs.get("loss_metric", DEFAULT_LOSS_METRIC)
            tables.append(loss_table(runs, metric=metric))
    viewed = [r for r in baseline_runs if r.get("test_acc_tta") is not None]
    if viewed:  # search ablate --test --tta: the views' share, on the baseline's models
        views = viewed[-1].get("tta_views")
        tables.append(tta_table(viewed, views="six views" if views is True else str(views)))
    return tables


def trials_table(study: optuna.Study) -> Table:
    trials = study.get_trials(deepcopy=False)
    param_keys = list(dict.fromkeys(k for t in trials for k in t.params))
    headers = ["trial", "state", "value", *param_keys, "epochs", "best epoch", "seconds"]
    # trials from before parameters were counted: no column
    counted = any(t.user_attrs.get("param_count") for t in trials)
    headers += ["parameters", "reason"] if counted else ["reason"]
    rows, raw = [], []
    for t in trials:
        a = t.user_attrs
        secs = t.duration.total_seconds() if t.duration else None
        values = [
            t.number,
            t.state.name.lower(),
            t.value,
            *[t.params.get(k) for k in param_keys],
            a.get("epochs_run"),
            a.get("best_epoch"),
            secs,
            *([a.get("param_count")] if counted else []),
            a.get("reason", ""),
        ]
        raw.append(values)
        cells = [
            "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in values
        ]
        if counted and a.get("param_count"):  # as the best summary and the ablation tables
            cells[-2] = fmt_param_count(a["param_count"], a.get("trainable_param_count"))
        rows.append(cells)
    return Table(title=f"{study.study_name}: trials", headers=headers, rows=rows, raw=raw)


def importance_table(study: optuna.Study) -> Table | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
            )
    except (ValueError, RuntimeError) as exc:
        log.warning("parameter importances unavailable: %s", exc)
        return None
    rows = [[k, f"{v:.3f}"] for k, v in imp.items()]
    return Table(
        title=f"{study.study_name}: parameter importances (fANOVA)",
        headers=["parameter", "importance"],
        rows=rows,
        raw=[[k, v] for k, v in imp.items()],
    )


def study_tables(study: optuna.Study) -> list[Table]:
    tables = [trials_table(study)]
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if values:
        ks = [k for k in EXPECTED_MAX_KS if k <= max(len(values), 1)]
        tables.append(expected_max_table(values, ks))
    imp = importance_table(study)
    if imp is not None:
        tables.append(imp)
    return tables


def print_ablation(companion: optuna.Study) -> None:
    """Print the tables and store them as the companion study's dashboard note."""
    for table in ablation_tables(companion):
        print()
        print(table.to_markdown())
    try:
        from optuna_dashboard import save_note

        save_note(companion, ablation_note(companion))
    except Exception as exc:  # the note is a convenience; the tables are printed anyway
        log.warning("could not store the ablation note: %s", exc)


def ablation_note(companion: optuna.Study) -> str:
    repeats = companion.user_attrs.get("repeats", "?")
    how = f"{repeats} repeats; mean ± 95% CI"
    if repeats == 1:
        how = "1 repeat: single runs, no intervals or tests"
    parts = [
        f"Ablation of `{companion.user_attrs.get('ablation_of', '?')}` "
        f"(baseline: {companion.user_attrs.get('baseline_source', '?')}, {how})"
    ]
    parts += [t.to_markdown() for t in ablation_tables(companion)]
    return "\n\n".join(parts)


def final_table(companion: optuna.Study, configs: list[dict[str, Any]] | None = None) -> Table:
    """The final-results table of a ``<study>.confirm`` companion, from storage alone."""
    configs = collect_confirm(companion) if configs is None else configs
    attrs = companion.user_attrs
    views = attrs.get("tta")
    tta = (
        ""
        if not views
        else " with test-time augmentation" + (f" ({views})" if isinstance(views, str) else "")
    )
    table = final_results_table(
        configs,
        search_trials=attrs.get("search_trials"),
        title=f"{attrs.get('confirm_of', '?')}: final results{tta}",
    )
    diverged = sum(c.get("diverged", 0) for c in configs)
    if diverged:
        table.notes.append(f"{diverged} run(s) diverged (non-finite loss) and are not in n.")
    split = attrs.get("data_splits", {})
    if split:
        counts = ", ".join(f"{k} {v['count']}" for k, v in split.items())
        source = split.get("test", {}).get("source")
        table.notes.append(
            f"Images per split: {counts}" + (f" (test: {source})." if source else ".")
        )
    return table


def print_confirm(companion: optuna.Study) -> None:
    """Print the final-results table and store it as the companion study's dashboard note."""
    table = final_table(companion)
    print()
    print(table.to_markdown())
    try:
        from optuna_dashboard import save_note

        save_note(companion, table.to_markdown())
    except Exception as exc:  # the note is a convenience; the table is printed anyway
        log.warning("could not store the final-results note: %s", exc)


def confirm_figure(configs: list[dict[str, Any]], *, title: str = "Confirmed runs"):
    """Validation and test accuracy side by side: a point per seed, and per configuration
    the mean with 95% CI whiskers."""
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1, cols=2, shared_yaxes=True, subplot_titles=("validation", "test (held out)")
    )
    names = [f"#{c['rank']} trial {c['trial']}" for c in configs]
    for col, key in ((1, "val_acc"), (2, "test_acc")):
        for c, name in zip(configs, names, strict=True):
            runs = [r for r in c["runs"] if r.get(key) is not None]
            fig.add_scatter(
                x=[name] * len(runs),
                y=[r[key] * 100 for r in runs],
                mode="markers",
                marker={"size": 7, "opacity": 0.55, "color": "#1f77b4"},
                text=[f"seed {r['seed']}" for r in runs],
                hovertemplate="%{x}<br>%{text}: %{y:.2f}%<extra></extra>",
                showlegend=False,
                row=1,
                col=col,
            )
            if not runs:
                continue
            est = mean_ci([r[key] for r in runs])
            err = 0.0 if math.isnan(est.half_width) else est.half_width * 100
            fig.add_scatter(
                x=[name],
                y=[est.mean * 100],
                mode="markers",
                marker={"size": 13, "symbol": "diamond", "color": "#d62728"},
                error_y={"type": "data", "array": [err], "thickness": 2, "width": 10},
                hovertemplate=f"%{{x}}<br>mean %{{y:.2f}}% ± {err:.2f} (n={est.n})<extra></extra>",
                showlegend=False,
                row=1,
                col=col,
            )
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    fig.update_layout(title=f"{title}: points per seed, mean ± 95% CI")
    return fig


def export_study(
    name: str, *, storage: Storage | str | None, out_dir: str, formats: list[str]
) -> list[Path]:
    """Write tables (in every format asked) and figures (standalone HTML) for a study and
    its ablation companion, from storage alone. ``storage``: a ``Storage``, or the URL
    ``--storage`` (resolved here once)."""
    from search.study.lookup import load_stored, storage_of

    optuna.logging.set_verbosity(logging.ERROR)
    store = storage_of(name, storage)
    try:
        study, _ = load_stored(name, store)
    except ValueError:
        study = None  # an ablation without a search study of its own
        load_stored(companion_name(name), store)  # else: no such study, in the user's words
    companion = find_study(store, companion_name(name))
    confirmed = find_study(store, confirm_name(name))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a directory")
    tables: list[Table] = []
    if study is not None:
        tables += study_tables(study)
    arms = collect_runs(companion) if companion is not None else []  # read storage once
    if companion is not None:
        tables += ablation_tables(companion, arms)
    configs = collect_confirm(confirmed) if confirmed is not None else []
    if confirmed is not None and configs:
        tables.insert(0, final_table(confirmed, configs))
    out.mkdir(parents=True, exist_ok=True)
    written = write_tables(tables, out, formats)
    written += write_figures(study, arms, out / "figures", confirmed=configs)
    return written


def write_figures(
    study: optuna.Study | None,
    arms: list[dict[str, Any]],
    out: Path,
    *,
    confirmed: list[dict[str, Any]] | None = None,
) -> list[Path]:
    import optuna.visualization as vis

    out.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if study else []
        if complete:
            figs["optimization-history"] = vis.plot_optimization_history(study)
            figs["intermediate-values"] = vis.plot_intermediate_values(study)
            figs["parallel-coordinates"] = vis.plot_parallel_coordinate(study)
            if len(complete) >= 3:
                try:
                    figs["param-importances"] = vis.plot_param_importances(study)
                except (ValueError, RuntimeError) as exc:
                    log.warning("no importance figure: %s", exc)
    for factor, fig in ablation_curve_figures(arms).items():
        figs[f"ablation-curves-{factor}"] = fig
    for factor, fig in ablation_bar_figures(arms).items():
        figs[f"ablation-bars-{factor}"] = fig
    if confirmed:
        figs["confirmed-runs"] = confirm_figure(confirmed)
    written = []
    for name, fig in figs.items():
        path = out / f"{slugify(name)}.html"
        # one shared plotly.min.js beside the figures: opens offline, no 3.5 MB per file
        fig.write_html(path, include_plotlyjs="directory")
        written.append(path)
    return written


def _by_factor(arms: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        if arm["factor"] != "baseline":
            grouped.setdefault(arm["factor"], []).append(arm)
    return grouped


def ablation_curve_figures(arms: list[dict[str, Any]]) -> dict[str, Any]:
    """Validation accuracy per epoch for each value: mean over repeats with a min-max band."""
    import plotly.graph_objects as go

    figs = {}
    for factor, group in _by_factor(arms).items():
        fig = go.Figure()
        for arm in group:
            curves = [r["curves"].get("val_acc", []) for r in arm["runs"] if r.get("curves")]
            if not curves:
                continue
            length = max(len(c) for c in curves)
            epochs = list(range(1, length + 1))
            cols = [
                [c[e] for c in curves if e < len(c) and c[e] is not None] for e in range(length)
            ]
            mean = [sum(v) / len(v) if v else None for v in cols]
            lo = [min(v) if v else None for v in cols]
            hi = [max(v) if v else None for v in cols]
            label = f"{factor}={_display(arm['value'])}"
            fig.add_scatter(
                x=epochs + epochs[::-1],
                y=hi + lo[::-1],
                fill="toself",
                opacity=0.2,
                line_width=0,
                showlegend=False,
                hoverinfo="skip",
                name=label,
            )
            fig.add_scatter(x=epochs, y=mean, name=label, mode="lines+markers")
        single = all(len(arm["runs"]) <= 1 for arm in group)
        how = "one run per value" if single else "mean over repeats, band = range"
        fig.update_layout(
            title=f"val_acc per epoch by {factor} ({how})",
            xaxis_title="epoch",
            yaxis_title="validation accuracy",
        )
        figs[factor] = fig
    return figs


def ablation_bar_figures(arms: list[dict[str, Any]]) -> dict[str, Any]:
    """Max validation accuracy per value with 95% CI whiskers."""
    import plotly.graph_objects as go

    figs = {}
    for factor, group in _by_factor(arms).items():
        names, means, errs = [], [], []
        for arm in group:
            values = [r["max_val_acc"] for r in arm["runs"] if r.get("max_val_acc") is not None]
            if not values:
                continue
            est = mean_ci(values)
            names.append(_display(arm["value"]))
            means.append(est.mean)
            errs.append(0.0 if math.isnan(est.half_width) else est.half_width)
        fig = go.Figure(go.Bar(x=names, y=means, error_y={"type": "data", "array": errs}))
        single = all(len(arm["runs"]) <= 1 for arm in group)
        how = "single runs: no interval" if single else "mean ± 95% CI"
        fig.update_layout(
            title=f"max val_acc by {factor} ({how})",
            xaxis_title=factor,
            yaxis_title="max validation accuracy",
        )
        figs[factor] = fig
    return figs
