"""Report tables: a small ``Table`` type, renderers (Markdown, CSV, LaTeX, HTML, JSON), file
export, and builders for the seeds' layouts from plain run records (no storage, no Optuna).

A run record is one repeat of one arm, as a dict::

    {"repeat": 0, "max_train_acc": 0.92, "max_val_acc": 0.745, "final_val_acc": 0.74,
     "train_seconds": 21.7, "epochs_run": 10}

Accuracies are fractions (0..1) and are shown as percent; None or nan marks a missing metric
(the run is left out of that row's n).
"""

from __future__ import annotations

import csv
import difflib
import html
import io
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.report.stats import (
    Estimate,
    expected_max_curve,
    mean_ci,
    paired_difference,
    repeats_needed,
)
from search.study.metrics import DEFAULT_LOSS_METRIC, LOSS_METRICS

__all__ = [
    "FORMATS",
    "METRICS",
    "Table",
    "expected_max_table",
    "factor_table",
    "final_results_table",
    "latex_escape",
    "loss_table",
    "parse_formats",
    "slugify",
    "write_tables",
]

Run = Mapping[str, Any]

# metric key -> (row label, display scale, decimals); the seeds' rows, in their order
METRICS: dict[str, tuple[str, float, int]] = {
    "max_train_acc": ("Max training accuracy", 100.0, 2),
    "max_val_acc": ("Max validation accuracy", 100.0, 2),
    "final_val_acc": ("Final validation accuracy", 100.0, 2),
    "train_seconds": ("Training time (s)", 1.0, 1),
    "epochs_run": ("Epochs run", 1.0, 1),
}
DELTA_LABEL = "Δ final val acc vs baseline (p)"
PARAMS_LABEL = "Parameters (trainable)"
TEST_METRIC = ("Test accuracy (held out)", 100.0, 2)
TTA_METRIC = ("Test accuracy with TTA (held out)", 100.0, 2)
TTA_DELTA_LABEL = "Δ test acc, TTA minus none (p)"


def fmt_param_count(total: int, trainable: int | None = None) -> str:
    """``23.51 M`` or, when some are frozen, ``23.51 M (8,195 trainable)``: 4 significant
    figures from 10 k on, exact below (seed 004 compared its networks by parameter count)."""

    def short(n: int) -> str:
        for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if n >= 10_000 and n >= scale:
                return f"{n / scale:.4g} {unit}"
        return f"{n:,}"

    if trainable is None or trainable == total:
        return short(total)
    return f"{short(total)} ({short(trainable)} trainable)"


# A cell is right-aligned when it reads as a number or an estimate ("-0.5 ± 0.1", "—", "n/a").
_NUMERIC = re.compile(r"^\s*(?:[-+]?(?:\d|\.\d)|[-+]?inf|nan|—|n/a)", re.IGNORECASE)


@dataclass
class Table:
    """A titled grid of display strings, with optional numbers behind them.

    ``raw`` (same shape as ``rows``) holds what csv/json write instead of the display text: a
    number, a string, None, or a flat dict of numbers (an estimate: ``{"mean", "half_width",
    "n", ...}``; csv spreads it over one column per key).
    """

    title: str
    headers: list[str]
    rows: list[list[str]]
    raw: list[list[Any]] | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        width = len(self.headers)
        if width == 0:
            raise ValueError(f"table {self.title!r} needs at least one column")
        for i, row in enumerate(self.rows):
            if len(row) != width:
                raise ValueError(
                    f"table {self.title!r}: row {i} has {len(row)} cells for {width} headers"
                )
            for cell in row:
                if not isinstance(cell, str):
                    raise TypeError(f"table {self.title!r}: cells must be str, got {cell!r}")
        if self.raw is not None:
            if len(self.raw) != len(self.rows) or any(len(r) != width for r in self.raw):
                raise ValueError(f"table {self.title!r}: raw must have the shape of rows")

    # -- alignment shared by markdown, latex and html -------------------------------------
    def _right_aligned(self) -> list[bool]:
        """Columns of numbers read better right-aligned; label and text columns stay left."""
        out = []
        for j in range(len(self.headers)):
            cells = [r[j] for r in self.rows if r[j].strip()]
            out.append(bool(cells) and all(_NUMERIC.match(c) for c in cells))
        return out

    # -- renderers --------------------------------------------------------------------------
    def to_markdown(self) -> str:
        """A GitHub/pandoc pipe table with the title above and notes below."""

        def cell(text: str) -> str:
            # "|" would split the cell and "<" could open an HTML tag: backslash-escape both
            return " ".join(text.split()).replace("|", r"\|").replace("<", r"\<")

        grid = [[cell(h) for h in self.headers]] + [[cell(c) for c in r] for r in self.rows]
        widths = [max(3, *(len(r[j]) for r in grid)) for j in range(len(self.headers))]
        right = self._right_aligned()

        def line(cells: list[str]) -> str:
            padded = [
                c.rjust(w) if r else c.ljust(w)
                for c, w, r in zip(cells, widths, right, strict=True)
            ]
            return "| " + " | ".join(padded) + " |"

        rule = "|" + "|".join(
            "-" * (w + 1) + ":" if r else "-" * (w + 2) for w, r in zip(widths, right, strict=True)
        )
        rule += "|"
        parts = [f"**{cell(self.title)}**", "", line(grid[0]), rule]
        parts += [line(r) for r in grid[1:]]
        for note in self.notes:  # one paragraph each, below the table
            parts += ["", cell(note)]
        return "\n".join(parts) + "\n"

    def _csv_columns(self) -> list[tuple[int, str | None, str]]:
        """(column index, dict key or None, csv header) for every csv column."""
        cols: list[tuple[int, str | None, str]] = []
        for j, header in enumerate(self.headers):
            keys: dict[str, None] = {}
            for row in self.raw or []:
                if isinstance(row[j], Mapping):
                    keys.update(dict.fromkeys(row[j]))
            if keys:
                cols += [(j, k, f"{header} {k}".strip()) for k in keys]
            else:
                cols.append((j, None, header))
        return cols

    def to_csv(self) -> str:
        """Header row plus one line per row: numbers from ``raw`` at full precision (estimates
        spread over ``<header> mean``, ``<header> half_width``, ...), else the display text."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        cols = self._csv_columns()
        writer.writerow([name for _, _, name in cols])
        for i, row in enumerate(self.rows):
            out = []
            for j, key, _ in cols:
                value = row[j] if self.raw is None else self.raw[i][j]
                if key is not None:
                    value = value.get(key) if isinstance(value, Mapping) else None
                out.append(_csv_value(value))
            writer.writerow(out)
        return buf.getvalue()

    def to_latex(self, *, label: str | None = None) -> str:
        """A booktabs ``table`` float (needs ``\\usepackage{booktabs}``), ready to paste."""
        spec = "".join("r" if r else "l" for r in self._right_aligned())
        lines = [
            r"\begin{table}[ht]",
            r"\centering",
            rf"\caption{{{latex_escape(self.title)}}}",
            rf"\label{{tab:{label or slugify(self.title)}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(latex_escape(h) for h in self.headers) + r" \\",
            r"\midrule",
        ]
        lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in self.rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        for note in self.notes:
            lines.append(rf"\par\smallskip{{\footnotesize {latex_escape(note)}}}")
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def to_html(self, *, standalone: bool = False) -> str:
        """One ``<table>`` element (escaped, well-formed, embeddable); ``standalone=True``
        wraps it in a minimal UTF-8 page that opens in a browser."""
        e = html.escape
        right = self._right_aligned()

        def td(tag: str, text: str, r: bool) -> str:
            style = ' style="text-align:right"' if r else ""
            return f"<{tag}{style}>{e(text)}</{tag}>"

        lines = ['<table class="hpsearch-table">', f"<caption>{e(self.title)}</caption>"]
        lines.append("<thead><tr>")
        lines += [td("th", h, r) for h, r in zip(self.headers, right, strict=True)]
        lines.append("</tr></thead>")
        lines.append("<tbody>")
        for row in self.rows:
            cells = "".join(td("td", c, r) for c, r in zip(row, right, strict=True))
            lines.append(f"<tr>{cells}</tr>")
        lines.append("</tbody>")
        if self.notes:
            span = len(self.headers)
            lines.append("<tfoot>")
            lines += [f'<tr><td colspan="{span}">{e(n)}</td></tr>' for n in self.notes]
            lines.append("</tfoot>")
        lines.append("</table>")
        table = "\n".join(lines)
        if not standalone:
            return table + "\n"
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{e(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"{table}\n</body>\n</html>\n"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``records`` (one object per row, keyed by header, numbers from ``raw``
        where given) plus the display grid; nan and inf become null."""
        source = self.raw if self.raw is not None else self.rows
        keys = _unique(self.headers)
        records = [dict(zip(keys, row, strict=True)) for row in source]
        return _jsonable(
            {
                "title": self.title,
                "headers": list(self.headers),
                "records": records,
                "display": [list(r) for r in self.rows],
                "notes": list(self.notes),
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


_CSS = (
    "table.hpsearch-table{border-collapse:collapse;font-family:sans-serif}"
    "table.hpsearch-table caption{font-weight:bold;padding:4px}"
    "table.hpsearch-table th,table.hpsearch-table td{padding:2px 10px}"
    "table.hpsearch-table thead th{border-top:2px solid;border-bottom:1px solid}"
    "table.hpsearch-table tbody tr:last-child td{border-bottom:2px solid}"
    "table.hpsearch-table tfoot td{font-size:small}"
)


def _unique(headers: Sequence[str]) -> list[str]:
    """Headers as distinct record keys: a repeated header gets " (2)", " (3)", ..."""
    seen: dict[str, int] = {}
    out = []
    for h in headers:
        seen[h] = seen.get(h, 0) + 1
        out.append(h if seen[h] == 1 else f"{h} ({seen[h]})")
    return out


def _csv_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(float(value))  # repr: shortest text that reads back as the same float
    return str(value)


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars to Python, nan/inf to None, tuples to lists."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


# -- LaTeX escaping ------------------------------------------------------------------------
_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "|": r"\textbar{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "×": r"$\times$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "−": r"$-$",
    "—": "---",
    "–": "--",
    "…": r"\ldots{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and spell the few symbols our tables use (±, Δ, —) in ASCII
    LaTeX, so the output compiles with pdflatex too."""
    return "".join(_LATEX.get(ch, ch) for ch in " ".join(text.split()))


# -- files -----------------------------------------------------------------------------------
# format -> file extension; aliases map to the same renderer
FORMATS: dict[str, str] = {"md": "md", "csv": "csv", "tex": "tex", "html": "html", "json": "json"}
_ALIASES = {"markdown": "md", "latex": "tex", "htm": "html"}


def _render(table: Table, fmt: str) -> str:
    if fmt == "md":
        return table.to_markdown()
    if fmt == "csv":
        return table.to_csv()
    if fmt == "tex":
        return table.to_latex()
    if fmt == "html":
        return table.to_html(standalone=True)
    return table.to_json()


def parse_formats(formats: str | Iterable[str]) -> list[str]:
    """``"md,csv"`` or ``["md", "latex"]`` -> canonical names, in order, without duplicates.

    An unknown name raises ValueError listing the valid ones and the closest match.
    """
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out: list[str] = []
    for item in items:
        name = str(item).strip().lower().lstrip(".")
        if not name:
            continue
        name = _ALIASES.get(name, name)
        if name not in FORMATS:
            valid = sorted(FORMATS)
            close = difflib.get_close_matches(name, valid + sorted(_ALIASES), n=1)
            hint = f"; did you mean {_ALIASES.get(close[0], close[0])!r}?" if close else ""
            raise ValueError(
                f"unknown format {str(item).strip()!r}; valid formats: {', '.join(valid)}{hint}"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"no output format given, but got {formats!r}; valid: {sorted(FORMATS)}")
    return out


def slugify(text: str, *, max_len: int = 80) -> str:
    """A safe file-name stem: ASCII letters, digits, ``.``, ``_`` and ``-``, lower case; never
    a path separator, never ``..``, never empty, never starting with a dot or dash."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9._-]+", "-", ascii_text.lower())
    slug = re.sub(r"\.{2,}", ".", slug)  # no ".." anywhere
    slug = re.sub(r"-{2,}", "-", slug)
    slug = slug[:max_len].strip("._-")
    return slug or "table"


def write_tables(
    tables: Sequence[Table], out_dir: str | Path, formats: str | Iterable[str]
) -> list[Path]:
    """Write every table in every format to ``out_dir/<slug of title>.<ext>``; return the paths.

    Formats are checked before anything is written; titles that slug alike get ``-2``,
    ``-3``, ... so no table overwrites another.
    """
    fmts = parse_formats(formats)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {str(out)!r} is a file")
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    written: list[Path] = []
    for table in tables:
        stem = slugify(table.title)
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:
            stem = f"{stem}-{seen[stem]}"
        for fmt in fmts:
            path = out / f"{stem}.{FORMATS[fmt]}"
            path.write_text(_render(table, fmt), encoding="utf-8", newline="")
            written.append(path)
    return written


# -- the seeds' layouts ----------------------------------------------------------------------
def _level(confidence: float) -> str:
    return f"{confidence * 100:g}%"  # 0.95 -> "95%", 0.975 -> "97.5%"


def _metric_values(runs: Iterable[Run], key: str) -> list[float]:
    """Finite values of one metric; missing (None) and diverged (nan) runs are left out."""
    out = []
    for run in runs:
        value = run.get(key)
        if value is not None and math.isfinite(float(value)):
            out.append(float(value))
    return out


def _by_repeat(runs: Iterable[Run], key: str, *, arm: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for run in runs:
        if "repeat" not in run:
            raise ValueError(f"runs of {arm!r} must carry 'repeat', but got keys {sorted(run)}")
        r = int(run["repeat"])
        if r in out:
            raise ValueError(f"runs of {arm!r} hold repeat {r} twice")
        value = run.get(key)
        if value is not None and math.isfinite(float(value)):
            out[r] = float(value)
    return out


def factor_table(
    factor: str,
    values: Sequence[str],
    runs: Mapping[str, Sequence[Run]],
    *,
    baseline_value: str,
    confidence: float = 0.95,
    title: str | None = None,
) -> Table:
    """Seed 004's layout for one factor: a column per value, a row per metric (mean ± t
    interval over repeats, n shown), and the paired difference in final validation accuracy
    to the baseline, matched by repeat index, with its paired t-test p-value.

    ``runs`` maps each value (as displayed, e.g. ``"64"``) to its run records; a value with
    no finished runs maps to ``[]``.
    """
    values = list(values)
    if not values:
        raise ValueError(f"factor {factor!r} needs at least one value, but got {values!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"factor {factor!r} has repeated values: {values!r}")
    missing = [v for v in values if v not in runs]
    if missing:
        raise ValueError(f"factor {factor!r}: no runs entry for value(s) {missing!r}")
    if baseline_value not in values:
        raise ValueError(f"baseline_value {baseline_value!r} is not one of {values!r}")
    level = _level(confidence)

    rows: list[list[str]] = []
    raw: list[list[Any]] = []
    metrics = dict(METRICS)
    if any(run.get("test_acc") is not None for v in values for run in runs[v]):
        metrics["test_acc"] = TEST_METRIC  # search ablate --test: the same runs on test
    if any(run.get("test_acc_tta") is not None for v in values for run in runs[v]):
        metrics["test_acc_tta"] = TTA_METRIC  # --test --tta: and with test-time views
    for key, (label, scale, decimals) in metrics.items():
        row, raw_row = [label], [label]
        for v in values:
            est = mean_ci(_metric_values(runs[v], key), confidence=confidence)
            row.append(est.format(scale=scale, decimals=decimals))
            raw_row.append(est.to_dict(scale=scale))
        rows.append(row)
        raw.append(raw_row)

    if any(run.get("param_count") for v in values for run in runs[v]):
        # a property of the configuration, not a measurement: the same in every repeat
        row, raw_row = [PARAMS_LABEL], [PARAMS_LABEL]
        for v in values:
            run = next((r for r in runs[v] if r.get("param_count")), None)
            counts = (
                (run.get("param_count"), run.get("trainable_param_count")) if run else (None,) * 2
            )
            row.append(fmt_param_count(*counts) if run else "n/a")
            raw_row.append({"param_count": counts[0], "trainable_param_count": counts[1]})
        rows.append(row)
        raw.append(raw_row)

    base = _by_repeat(runs[baseline_value], "final_val_acc", arm=baseline_value)
    single = all(len(_metric_values(runs[v], "final_val_acc")) <= 1 for v in values)
    noise = _run_noise([r for v in values for r in runs[v]]) if single else None
    row, raw_row = [DELTA_LABEL], [DELTA_LABEL]
    for v in values:
        if v == baseline_value:
            row.append("—")
            raw_row.append(None)
            continue
        mine = _by_repeat(runs[v], "final_val_acc", arm=v)
        cell, cell_raw = _paired_cell(mine, base, confidence)
        if single and cell_raw["n"] == 1:  # one pair: how many would test a gap this size
            needed = _repeats_for(cell_raw["mean"] / 100, noise)
            cell_raw["repeats_needed"] = needed
            if needed is not None:
                cell = cell[:-1] + f"; {needed} repeats to test)"
            elif noise is not None and cell_raw["mean"]:  # a gap too small to ever test
                cell = cell[:-1] + f"; over {MOST_REPEATS} repeats to test)"
        row.append(cell)
        raw_row.append(cell_raw)
    rows.append(row)
    raw.append(raw_row)

    delta = f"Δ: final validation accuracy minus the baseline's ({factor} = {baseline_value})"
    if single:
        notes = [
            "Single runs (n=1): each cell is one run, not a mean; with one run per value there "
            "is no confidence interval and no t-test. Accuracies in %.",
            f"{delta}, in the same repeat. {_repeats_note(noise)}",
        ]
    else:
        notes = [
            f"Mean ± {level} t confidence interval over repeats (n = runs); accuracies in %.",
            f"{delta}, paired by repeat; p from a two-sided paired t-test.",
        ]
    return Table(
        title=title or f"Ablation: {factor}",
        headers=[factor, *(str(v) for v in values)],
        rows=rows,
        raw=raw,
        notes=notes,
    )


def tta_table(
    runs: Sequence[Run], *, views: str, confidence: float = 0.95, title: str | None = None
) -> Table:
    """Test-time augmentation's share of a recipe (seed 000 averaged its submission over six
    views): the baseline's runs on the test split without and with the views, the same model
    each time, and the paired difference by repeat. TTA changes no training, so this is the
    whole of its effect."""
    plain = _by_repeat(runs, "test_acc", arm="baseline")
    viewed = _by_repeat(runs, "test_acc_tta", arm="baseline")
    label, scale, decimals = TEST_METRIC
    row, raw_row = [label], [label]
    for values in (plain, viewed):
        est = mean_ci(list(values.values()), confidence=confidence)
        row.append(est.format(scale=scale, decimals=decimals))
        raw_row.append(est.to_dict(scale=scale))
    cell, cell_raw = _paired_cell(viewed, plain, confidence)
    single = len(set(plain) & set(viewed)) <= 1
    how = (
        "One run: each cell is one model, with no confidence interval and no t-test."
        if single
        else f"Mean ± {_level(confidence)} t confidence interval over repeats (n = runs); "
        "Δ paired by repeat (the same model), p from a two-sided paired t-test."
    )
    return Table(
        title=title or "Ablation: test-time augmentation",
        headers=["TTA", "none", views],
        rows=[row, [TTA_DELTA_LABEL, "—", cell]],
        raw=[raw_row, [TTA_DELTA_LABEL, None, cell_raw]],
        notes=[
            f"The baseline's models on the held-out test split, without and with the views "
            f"{views}; accuracies in %. {how}"
        ],
    )


def loss_table(
    runs: Mapping[str, Sequence[Run]],
    *,
    metric: str = DEFAULT_LOSS_METRIC,
    confidence: float = 0.95,
    title: str = "Loss function comparison",
) -> Table:
    """Seed 003's layout: one row per loss (in the order given) with its validation accuracy
    (mean ± t interval, in %) and the number of runs."""
    if metric not in LOSS_METRICS:
        raise ValueError(f"metric must be one of {list(LOSS_METRICS)}, but got {metric=}")
    label = METRICS[metric][0]
    rows, raw, means = [], [], []
    for loss, loss_runs in runs.items():
        est: Estimate = mean_ci(_metric_values(loss_runs, metric), confidence=confidence)
        rows.append([str(loss), est.format(scale=100.0, decimals=2, show_n=False), str(est.n)])
        d = est.to_dict(scale=100.0)
        raw.append([str(loss), {"mean": d["mean"], "half_width": d["half_width"]}, est.n])
        if est.n:
            means.append(est.mean)
    notes = [f"Mean ± {_level(confidence)} t confidence interval over n runs."]
    if all(len(_metric_values(r, metric)) <= 1 for r in runs.values()):
        notes = ["Single runs (n=1): each value is one run, with no confidence interval."]
        if len(means) >= 2:
            first, second = sorted(means, reverse=True)[:2]
            noise = _run_noise([r for rs in runs.values() for r in rs])
            notes.append(
                _repeats_note(
                    noise,
                    gap=f"The two best losses differ by {100 * (first - second):.2f} points",
                    needed=_repeats_for(first - second, noise),
                )
            )
    return Table(
        title=title,
        headers=["Loss", f"{label} (%)", "n"],
        rows=rows,
        raw=raw,
        notes=notes,
    )


# The power a repeat count is sized for, as is usual: a real difference of the size seen is
# found 4 times in 5 by a two-sided paired t-test at p < 0.05.
POWER, ALPHA = 0.8, 0.05
MOST_REPEATS = 1000  # beyond this, a difference is reported as too small to test


def _run_noise(runs: Iterable[Run]) -> tuple[float, int] | None:
    """(sd, images): the standard deviation of the difference between two single runs'
    final validation accuracies if each varied only by the binomial sampling of its
    validation images (``val_images`` of them, at the runs' mean accuracy); None when the
    runs do not record their validation size (stored before it was kept)."""
    accs = _metric_values(runs, "final_val_acc")
    sizes = {r.get("val_images") for r in runs} - {None}
    if not accs or len(sizes) != 1:
        return None
    images = int(next(iter(sizes)))
    p = sum(accs) / len(accs)
    return math.sqrt(2 * p * (1 - p) / images), images


def _repeats_for(diff: float, noise: tuple[float, int] | None) -> int | None:
    if noise is None or diff is None:
        return None
    return repeats_needed(diff, noise[0], alpha=ALPHA, power=POWER, most=MOST_REPEATS)


def _repeats_note(
    noise: tuple[float, int] | None, *, gap: str | None = None, needed: int | None = None
) -> str:
    """How a table of single runs sizes the repeats a difference needs: for the Δ cells'
    'N repeats to test', or (``gap``) for one difference named in the note."""
    if noise is None:
        return (
            "How many repeats a difference needs is unknown here (the runs do not record their "
            "validation size); rerun with --repeats 3 or more for intervals and tests."
        )
    sd, images = noise
    if gap is None:
        what, n = "'N repeats to test': the repeats per value with which", "N"
    elif needed is None:
        return f"{gap}: too little to test with any practical number of repeats."
    else:
        what, n = f"{gap}: with {needed} repeats per loss", str(needed)
    return (
        f"{what} a two-sided paired t-test (p < {ALPHA:g}) would find a real difference of "
        f"that size {POWER:.0%} of the time, if runs varied only as much as an accuracy "
        f"measured on {images:,} validation images does (±{100 * sd:.2f} points between two "
        f"runs); runs with other seeds usually vary more, so {n} is a lower bound. "
        f"search ablate --repeats {n} runs them."
    )


def expected_max_table(
    values: Iterable[float],
    ks: Iterable[int],
    *,
    scale: float = 100.0,
    decimals: int = 2,
    minimize: bool = False,
    label: str = "validation accuracy",
    title: str | None = None,
) -> Table:
    """Expected best ``label`` after k trials, for each k (Dodge et al., 2019), from the
    objective values of the finished trials; ``scale=100`` shows fractions as percent."""
    values = list(values)
    curve = expected_max_curve(values, ks, minimize=minimize)
    unit = " (%)" if scale == 100.0 else ""
    best = "lowest" if minimize else "best"
    rows = [
        [str(p.k), f"{p.mean * scale:.{decimals}f}", f"{p.std * scale:.{decimals}f}"] for p in curve
    ]
    raw = [[p.k, p.mean * scale, p.std * scale] for p in curve]
    return Table(
        title=title or f"Expected {best} {label} after k trials",
        headers=["k", f"Expected {best}{unit}", f"Std{unit}"],
        rows=rows,
        raw=raw,
        notes=[
            f"Expected {best} of k trials drawn with replacement from the {len(values)} "
            "finished trials, with its standard deviation (Dodge et al., 2019, "
            '"Show Your Work").'
        ],
    )


def final_results_table(
    configs: Sequence[Mapping[str, Any]],
    *,
    search_trials: int | None = None,
    confidence: float = 0.95,
    title: str = "Final results",
) -> Table:
    """The numbers to publish, one row per confirmed configuration.

    ``configs`` (in search rank order): ``{"label": str, "search_value": float | None,
    "runs": [{"seed": int, "val_acc": float, "test_acc": float}, ...]}`` and optionally a
    short ``"name"`` for the notes. Columns: the
    search's validation accuracy (the value the configuration was selected on, so biased
    upwards), the confirmed validation and test mean ± t interval over the retrained runs, n,
    and the paired difference (by seed) in validation and test accuracy to the configuration
    to publish, with two-sided paired t-test p-values. The configuration to publish is the one
    with the best confirmed *validation* mean: choosing by test mean would select on the
    test set and make it optimistic too.
    """
    if not configs:
        raise ValueError("final_results_table needs at least one configuration, but got none")
    level = _level(confidence)
    ests = []
    for c in configs:
        runs = list(c.get("runs", []))
        ests.append(
            (
                mean_ci(_metric_values(runs, "val_acc"), confidence=confidence),
                mean_ci(_metric_values(runs, "test_acc"), confidence=confidence),
            )
        )
    scored = [i for i, (v, _) in enumerate(ests) if v.n > 0]
    publish = max(scored, key=lambda i: (ests[i][0].mean, -i)) if scored else None

    def by_seed(runs: Iterable[Run], key: str) -> dict[int, float]:
        out: dict[int, float] = {}
        for run in runs:
            value = run.get(key)
            if value is not None and math.isfinite(float(value)):
                out[int(run["seed"])] = float(value)
        return out

    headers = [
        "Configuration",
        "Search val acc (selection)",
        "Confirmed val acc",
        "Test acc",
        "n",
        "Δ val vs published (p)",
        "Δ test vs published (p)",
    ]
    rows: list[list[str]] = []
    raw: list[list[Any]] = []
    for i, c in enumerate(configs):
        val, test = ests[i]
        label = str(c["label"]) + (" [publish]" if i == publish else "")
        sv = c.get("search_value")
        row = [
            label,
            "—" if sv is None else f"{sv * 100:.2f}",
            val.format(scale=100.0, show_n=False),
            test.format(scale=100.0, show_n=False),
            str(val.n),
        ]
        raw_row: list[Any] = [
            label,
            None if sv is None else sv * 100,
            val.to_dict(scale=100.0),
            test.to_dict(scale=100.0),
            val.n,
        ]
        for key in ("val_acc", "test_acc"):
            if publish is None or i == publish:
                row.append("—")
                raw_row.append(None)
                continue
            mine = by_seed(c["runs"], key)
            base = by_seed(configs[publish]["runs"], key)
            cell, cell_raw = _paired_cell(mine, base, confidence)
            row.append(cell)
            raw_row.append(cell_raw)
        rows.append(row)
        raw.append(raw_row)
    selected = (
        f"the best of the {search_trials} complete search trials" if search_trials else "search"
    )
    notes = [
        f"Search val acc: {selected} on the validation split, the very value the "
        "configuration was selected on, so it is biased upwards; not a result to publish.",
        f"Confirmed: each configuration retrained with fresh seeds (same train split, budget "
        f"and early stopping), each run evaluated once on validation and once on the held-out "
        f"test split; mean ± {level} t confidence interval over n runs; accuracies in %.",
        "Δ: difference to the published configuration, paired by seed; p from a two-sided "
        "paired t-test.",
    ]
    if publish is not None:
        val, test = ests[publish]
        name = configs[publish].get("name", configs[publish]["label"])
        notes.append(
            f"Publish {name}: the best confirmed validation mean (chosen on validation, not "
            f"on test); its test accuracy is {test.format(scale=100.0, show_n=False)} % "
            f"(n={test.n})."
        )
    return Table(title=title, headers=headers, rows=rows, raw=raw, notes=notes)


def _paired_cell(
    mine: dict[Any, float], base: dict[Any, float], confidence: float
) -> tuple[str, dict[str, Any]]:
    """The paired difference to the baseline over the repeats (or seeds) both sides have, as
    a table cell and its raw record; pairs missing on either side are skipped."""
    shared = sorted(set(mine) & set(base))
    diff = paired_difference(
        [mine[k] for k in shared], [base[k] for k in shared], confidence=confidence
    )
    return diff.format(scale=100.0, decimals=2), diff.to_dict(scale=100.0)
