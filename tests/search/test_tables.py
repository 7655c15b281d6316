"""search.report.tables: the seeds' layouts from run records, and every export format parses."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from search.report.stats import expected_max_curve, mean_ci, paired_difference
from search.report.tables import (
    DELTA_LABEL,
    FORMATS,
    Table,
    expected_max_table,
    factor_table,
    fmt_param_count,
    latex_escape,
    loss_table,
    parse_formats,
    slugify,
    write_tables,
)


def run(repeat, train, val, final, secs, epochs=10):
    return {
        "repeat": repeat,
        "max_train_acc": train,
        "max_val_acc": val,
        "final_val_acc": final,
        "train_seconds": secs,
        "epochs_run": epochs,
    }


# Seed 004's batch-size table (one run each there), with two more repeats around it.
BATCH_RUNS = {
    "8": [
        run(0, 0.92089, 0.74548, 0.740, 21.68),
        run(1, 0.91500, 0.75000, 0.745, 21.90),
        run(2, 0.92500, 0.74000, 0.738, 21.50),
    ],
    "64": [
        run(0, 0.85134, 0.71653, 0.710, 19.79),
        run(1, 0.85000, 0.72000, 0.715, 19.90),
        run(2, 0.86000, 0.71000, 0.705, 19.50),
    ],
    "256": [run(0, 0.73596, 0.65983, 0.650, 19.63, epochs=10)],
}


@pytest.fixture
def batch_table() -> Table:
    return factor_table("data.batch_size", ["8", "64", "256"], BATCH_RUNS, baseline_value="8")


def test_factor_table_seed_004_layout(batch_table):
    t = batch_table
    assert t.headers == ["data.batch_size", "8", "64", "256"]
    assert [r[0] for r in t.rows] == [
        "Max training accuracy",
        "Max validation accuracy",
        "Final validation accuracy",
        "Training time (s)",
        "Epochs run",
        DELTA_LABEL,
    ]
    expected = mean_ci([0.92089, 0.915, 0.925]).format(scale=100)
    assert t.rows[0][1] == expected and expected.endswith("(n=3)")
    assert t.rows[0][3] == "73.60 (n=1)"  # seed 004: 73.596
    assert t.rows[1][3] == "65.98 (n=1)"  # seed 004: 65.983
    assert t.rows[3][3] == "19.6 (n=1)"
    # the difference row: baseline shows a dash, others the paired test by repeat
    delta = t.rows[-1]
    assert delta[1] == "—"
    ref = paired_difference([0.710, 0.715, 0.705], [0.740, 0.745, 0.738])
    assert delta[2] == ref.format(scale=100)
    assert delta[3] == "-9.00 (n=1)"  # only repeat 0 pairs up
    raw = t.raw[-1][2]
    assert raw["mean"] == pytest.approx(ref.mean_diff * 100)
    assert raw["p_value"] == pytest.approx(ref.p_value)
    assert t.raw[-1][1] is None


def test_factor_table_pairs_by_repeat_and_skips_missing():
    runs = {
        "a": [run(0, 0.9, 0.8, 0.80, 1.0), run(1, 0.9, 0.8, 0.82, 1.0), run(2, 0.9, 0.8, 0.81, 1)],
        # repeat 0 missing, repeat 2 diverged (nan), listed out of order
        "b": [
            run(2, 0.9, 0.8, math.nan, 1.0),
            run(1, 0.9, 0.8, 0.85, 1.0),
            run(3, 0.9, 0.8, 0.9, 1),
        ],
    }
    t = factor_table("x", ["a", "b"], runs, baseline_value="a")
    assert t.rows[-1][2] == "+3.00 (n=1)"  # only repeat 1 is on both sides
    assert t.rows[2][2].endswith("(n=2)")  # the nan run is left out of the mean
    missing = {"a": runs["a"], "b": [{"repeat": 0, "final_val_acc": None}]}
    t = factor_table("x", ["a", "b"], missing, baseline_value="a")
    assert t.rows[0][2] == "—" and t.rows[-1][2] == "—"


def test_factor_table_adds_test_and_parameter_rows_when_the_runs_record_them():
    params = {"param_count": 23_512_000, "trainable_param_count": 8_195}
    runs = {
        "a": [
            {"repeat": 0, "final_val_acc": 0.5, "test_acc": 0.5, "test_acc_tta": 0.625, **params},
            {"repeat": 1, "final_val_acc": 0.7, "test_acc": 0.75, "test_acc_tta": 0.875},
        ],
        "b": [{"repeat": 0, "final_val_acc": 0.6, "test_acc": 0.25, "test_acc_tta": None}],
    }
    table = factor_table("x", ["a", "b"], runs, baseline_value="a", confidence=0.9)
    # two values a and a + d: mean ± t(0.95, 1 df) * d / 2, with t = tan(0.45 pi) = 6.3138
    assert table.rows == [
        ["Max training accuracy", "—", "—"],
        ["Max validation accuracy", "—", "—"],
        ["Final validation accuracy", "60.00 ± 63.14 (n=2)", "60.00 (n=1)"],
        ["Training time (s)", "—", "—"],
        ["Epochs run", "—", "—"],
        ["Test accuracy (held out)", "62.50 ± 78.92 (n=2)", "25.00 (n=1)"],
        ["Test accuracy with TTA (held out)", "75.00 ± 78.92 (n=2)", "—"],
        ["Parameters (trainable)", "23.51 M (8,195 trainable)", "n/a"],
        [DELTA_LABEL, "—", "+10.00 (n=1)"],
    ]
    assert table.raw[7][1:] == [
        {"param_count": 23_512_000, "trainable_param_count": 8_195},
        {"param_count": None, "trainable_param_count": None},
    ]


@pytest.mark.parametrize(
    "values, runs, baseline, match",
    [
        (["a", "b"], {"a": []}, "a", "no runs entry"),
        (["a", "b"], {"a": [], "b": []}, "c", "baseline_value 'c'"),
        (["a", "a"], {"a": []}, "a", "repeated values"),
        ([], {}, "a", "at least one value"),
        (["a", "b"], {"a": [{"final_val_acc": 0.5}], "b": []}, "a", "must carry 'repeat'"),
        (["a", "b"], {"a": [run(0, 1, 1, 1, 1)] * 2, "b": []}, "a", "repeat 0 twice"),
    ],
)
def test_factor_table_bad_input(values, runs, baseline, match):
    with pytest.raises(ValueError, match=match):
        factor_table("x", values, runs, baseline_value=baseline)


@pytest.mark.parametrize(
    "runs, message",
    [
        ({"a": [{"final_val_acc": 0.5}], "b": []}, "runs of 'a' must carry 'repeat'"),
        ({"a": [], "b": [{"final_val_acc": 0.5}]}, "runs of 'b' must carry 'repeat'"),
    ],
)
def test_factor_table_names_the_value_whose_runs_cannot_be_paired(runs, message):
    with pytest.raises(ValueError) as info:
        factor_table("x", ["a", "b"], runs, baseline_value="a")
    assert str(info.value) == f"{message}, but got keys ['final_val_acc']"


def test_param_counts_read_in_thousands_millions_and_billions():
    assert fmt_param_count(9_999) == "9,999"  # exact below 10 k
    assert fmt_param_count(10_000) == "10 k"
    assert fmt_param_count(1_000_000) == "1 M"
    assert fmt_param_count(1_000_000_000) == "1 G"
    assert fmt_param_count(23_512_000) == "23.51 M"
    assert fmt_param_count(23_512_000, 23_512_000) == "23.51 M"  # all trainable
    assert fmt_param_count(23_512_000, 8_195) == "23.51 M (8,195 trainable)"


def test_loss_table_seed_003():
    runs = {
        "CrossEntropyLoss": [{"repeat": 0, "final_val_acc": 0.9133}],
        "Focal Loss": [{"repeat": 0, "final_val_acc": 0.9067}],
        "Label Smoothing Loss": [{"repeat": 0, "final_val_acc": 0.9033}],
    }
    t = loss_table(runs)
    assert t.headers == ["Loss", "Final validation accuracy (%)", "n"]
    assert t.rows == [
        ["CrossEntropyLoss", "91.33", "1"],
        ["Focal Loss", "90.67", "1"],
        ["Label Smoothing Loss", "90.33", "1"],
    ]
    runs["Focal Loss"].append({"repeat": 1, "final_val_acc": 0.9})
    assert loss_table(runs).rows[1][1] == mean_ci([0.9067, 0.9]).format(scale=100, show_n=False)
    with pytest.raises(ValueError, match="metric must be one of"):
        loss_table(runs, metric="train_seconds")


def test_expected_max_table():
    t = expected_max_table([0.5, 0.7, 0.9, 0.8, 0.6], [1, 2, 5])
    assert [r[0] for r in t.rows] == ["1", "2", "5"]
    assert t.rows[0][1] == "70.00"  # k = 1: the mean
    assert t.raw[1][0] == 2 and isinstance(t.raw[1][1], float)
    with pytest.raises(ValueError, match="k must be"):
        expected_max_table([0.5], [0])


def test_table_shape_checked():
    with pytest.raises(ValueError) as info:
        Table("t", [], [])
    assert str(info.value) == "table 't' needs at least one column"
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 headers"):
        Table("t", ["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="raw must have the shape"):
        Table("t", ["a"], [["x"]], raw=[])
    with pytest.raises(TypeError, match="cells must be str"):
        Table("t", ["a"], [[1.5]])


# -- every format parses -----------------------------------------------------------------


@pytest.fixture
def nasty_table() -> Table:
    """Every character the renderers must escape, nan/inf/None raw values, a duplicate header."""
    return Table(
        title="Weird: 100% a_b & c#1 | {x} <b>",
        headers=["name", "value", "value", "note"],
        rows=[
            ["a|b", "1.50", "nan", 'x < y & "q" \\ ~ ^ $'],
            ["multi\nline", "—", "inf", "±Δ"],
        ],
        raw=[
            ["a|b", 1.5, math.nan, 'x < y & "q" \\ ~ ^ $'],
            ["multi\nline", None, math.inf, "±Δ"],
        ],
        notes=["50% of {notes} & more"],
    )


def all_tables(batch_table, nasty_table):
    return [
        batch_table,
        nasty_table,
        loss_table({"ce": [{"repeat": 0, "final_val_acc": 0.9}]}),
        expected_max_table([0.5, 0.9], [1, 2]),
        Table("empty", ["only"], []),
    ]


def md_cells(line: str) -> list[str]:
    assert line.startswith("|") and line.endswith("|"), line
    return re.split(r"(?<!\\)\|", line[1:-1])


def check_markdown(table: Table, text: str) -> None:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert len(lines) == len(table.rows) + 2  # header, rule, rows
    for ln in lines:
        assert len(md_cells(ln)) == len(table.headers), ln
    assert all(re.fullmatch(r"-+:?", c) for c in md_cells(lines[1]))


def check_latex(table: Table, text: str) -> None:
    unescaped = re.sub(r"\\[{}]", "", text)
    depth = 0
    for ch in unescaped:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", text).group(1)
    assert len(spec) == len(table.headers)
    body = text.split("\\midrule\n")[1].split("\\bottomrule")[0]
    head = text.split("\\toprule\n")[1].split("\\midrule")[0]
    rows = [ln for ln in (head + body).splitlines() if ln.strip()]
    assert len(rows) == len(table.rows) + 1
    for ln in rows:
        assert ln.endswith(r" \\")
        assert len(re.findall(r"(?<!\\)&", ln)) == len(table.headers) - 1, ln
    printed = re.sub(r"\\label\{[^}]*\}", "", text)  # a label may hold "_"; cells may not
    printed = printed.replace(r"$\pm$", "").replace(r"$\Delta$", "").replace(" & ", " ")
    assert not re.search(r"(?<!\\)[%_#&$]", printed)
    assert "±" not in text and "Δ" not in text


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.stack: list[str] = []
        self.in_foot = False

    def handle_starttag(self, tag, attrs):
        if tag not in ("meta",):
            self.stack.append(tag)
        if tag == "tfoot":
            self.in_foot = True
        if tag == "tr" and not self.in_foot:
            self.rows.append([])
        if tag in ("td", "th") and not self.in_foot:
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, tag
        if tag == "tfoot":
            self.in_foot = False

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ("td", "th") and not self.in_foot:
            self.rows[-1][-1] += data


def check_html(table: Table, text: str) -> None:
    fragment = table.to_html()
    root = ET.fromstring(fragment)  # the embeddable part is well-formed XML
    assert root.tag == "table"
    assert len(root.find("thead").find("tr")) == len(table.headers)
    body = root.find("tbody")
    assert [[td.text or "" for td in tr] for tr in body] == table.rows
    parser = _Collect()
    parser.feed(text)  # the standalone file: balanced tags, same cells
    parser.close()
    assert not parser.stack
    assert parser.rows == [table.headers, *table.rows]
    assert "<b>" not in text


def check_csv(table: Table, text: str) -> None:
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == len(table.rows) + 1
    assert len({len(r) for r in rows}) == 1
    assert len(rows[0]) >= len(table.headers)


def check_json(table: Table, text: str) -> None:
    data = json.loads(text)  # strict: no NaN/Infinity tokens (allow_nan=False on writing)
    assert data["title"] == table.title
    assert data["headers"] == table.headers
    assert data["display"] == table.rows
    assert len(data["records"]) == len(table.rows)
    for rec in data["records"]:
        assert len(rec) == len(table.headers)


CHECKS = {"md": check_markdown, "tex": check_latex, "html": check_html, "csv": check_csv}
CHECKS["json"] = check_json


def test_every_format_parses(tmp_path, batch_table, nasty_table):
    tables = all_tables(batch_table, nasty_table)
    paths = write_tables(tables, tmp_path / "out", list(FORMATS))
    assert len(paths) == len(tables) * len(FORMATS)
    assert len(set(paths)) == len(paths)
    for i, table in enumerate(tables):
        for j, fmt in enumerate(FORMATS):
            path = paths[i * len(FORMATS) + j]
            assert path.suffix == f".{fmt}" and path.parent == tmp_path / "out"
            CHECKS[fmt](table, path.read_text(encoding="utf-8"))


def test_json_numbers_are_numbers(batch_table, nasty_table):
    data = json.loads(batch_table.to_json())
    cell = data["records"][0]["8"]
    assert isinstance(cell["mean"], float) and isinstance(cell["n"], int)
    assert data["records"][-1]["8"] is None
    assert isinstance(data["records"][-1]["64"]["p_value"], float)
    nasty = json.loads(nasty_table.to_json())
    assert nasty["records"][0] == {
        "name": "a|b",
        "value": 1.5,
        "value (2)": None,  # nan
        "note": 'x < y & "q" \\ ~ ^ $',
    }
    assert nasty["records"][1]["value (2)"] is None  # inf


def test_csv_spreads_estimates(batch_table):
    rows = list(csv.DictReader(io.StringIO(batch_table.to_csv())))
    first = rows[0]
    assert first["data.batch_size"] == "Max training accuracy"
    assert float(first["8 mean"]) == pytest.approx(mean_ci([0.92089, 0.915, 0.925]).mean * 100)
    assert int(first["8 n"]) == 3
    assert first["256 half_width"] == "" and first["256 mean"] == "73.596"
    assert rows[-1]["8 mean"] == "" and float(rows[-1]["64 p_value"]) < 0.05


def test_markdown_escapes_and_aligns(nasty_table, batch_table):
    text = nasty_table.to_markdown()
    assert r"a\|b" in text and "multi line" in text and r"x \< y" in text
    assert text.startswith("**Weird")
    rule = batch_table.to_markdown().splitlines()[3]
    assert rule.startswith("|---") and rule.endswith(":|")  # labels left, numbers right


def test_latex_escape():
    assert latex_escape("95% a_b & #1 {x} ± Δ —") == (r"95\% a\_b \& \#1 \{x\} $\pm$ $\Delta$ ---")
    assert latex_escape("a\\b") == r"a\textbackslash{}b"


# -- file names and formats --------------------------------------------------------------


@pytest.mark.parametrize(
    "title",
    ["../../etc/passwd", "..", ".", "/abs/path", "a/b\\c", "...hidden", "", "∆∆∆", "x" * 500],
)
def test_slugify_is_safe(title):
    slug = slugify(title)
    assert slug and "/" not in slug and "\\" not in slug and ".." not in slug
    assert not slug.startswith((".", "-")) and len(slug) <= 80
    assert re.fullmatch(r"[a-z0-9._-]+", slug)


def test_slugify_readable():
    assert slugify("Ablation: data.batch_size") == "ablation-data.batch_size"
    assert slugify("kfood_transfer: trials") == "kfood_transfer-trials"
    assert slugify("a..b -- c") == "a.b-c"  # runs of dots and of dashes inside shrink to one


def test_write_tables_stays_in_out_dir_and_dedupes(tmp_path):
    tables = [Table("../evil", ["a"], [["1"]]), Table("../evil", ["a"], [["2"]])]
    paths = write_tables(tables, tmp_path, "md")
    assert [p.name for p in paths] == ["evil.md", "evil-2.md"]
    assert all(p.resolve().parent == tmp_path.resolve() for p in paths)
    assert "2" in paths[1].read_text()


def test_parse_formats():
    assert parse_formats("md, CSV,latex,md") == ["md", "csv", "tex"]
    assert parse_formats(["markdown", "html", "json"]) == ["md", "html", "json"]
    # a leading dot (a file extension) is dropped; empty items are skipped, not an end
    assert parse_formats(".md, ,.CSV") == ["md", "csv"]
    assert parse_formats(["", "html"]) == ["html"]


@pytest.mark.parametrize(
    "formats, message",
    [
        ("mdd", "unknown format 'mdd'; valid formats: csv, html, json, md, tex; did you mean 'md'?"),
        ("md,latx", "unknown format 'latx'; valid formats: csv, html, json, md, tex; did you mean 'tex'?"),
        ("md, XLSX ", "unknown format 'XLSX'; valid formats: csv, html, json, md, tex"),
    ],
)  # fmt: skip
def test_unknown_format(tmp_path, formats, message):
    with pytest.raises(ValueError) as err:
        write_tables([Table("t", ["a"], [])], tmp_path / "out", formats)
    assert str(err.value) == message
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_no_format_and_file_as_dir(tmp_path):
    with pytest.raises(ValueError, match="no output format"):
        write_tables([], tmp_path, " , ")
    target = Path(tmp_path / "file")
    target.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        write_tables([], target, "md")


def test_final_results_publishes_the_best_confirmed_validation_mean_not_the_best_test():
    from search.report.tables import final_results_table

    def runs(vals, tests):
        return [
            {"seed": s, "val_acc": v, "test_acc": t}
            for s, (v, t) in enumerate(zip(vals, tests, strict=True))
        ]

    configs = [
        {"label": "A", "search_value": 0.99, "runs": runs([0.90, 0.91, 0.92], [0.80, 0.81, 0.83])},
        {"label": "B", "search_value": 0.97, "runs": runs([0.93, 0.94, 0.94], [0.78, 0.79, 0.80])},
        {"label": "C", "search_value": 0.95, "runs": runs([0.80, 0.82, 0.81], [0.90, 0.91, 0.92])},
    ]
    table = final_results_table(configs, search_trials=20)
    labels = [r[0] for r in table.rows]
    assert labels == ["A", "B [publish]", "C"]  # best val mean, though C tests best
    assert table.rows[1][5] == "—" and table.rows[1][6] == "—"
    d_test = table.raw[2][6]  # C minus B on test, paired by seed: +0.12 each
    assert d_test["mean"] == pytest.approx(12.0) and d_test["p_value"] == 0.0
    assert table.raw[0][1] == pytest.approx(99.0)
    assert "best of the 20 complete search trials" in table.notes[0]
    assert any(n.startswith("Publish B:") for n in table.notes)
    with pytest.raises(ValueError, match="at least one configuration"):
        final_results_table([])


# -- every renderer, byte for byte, on one small table ------------------------------------
# a text column, a number column with an empty cell, an estimate column, a one-letter column
# (markdown keeps 3 dashes) and an empty one (left-aligned: nothing reads as a number)
GOLDEN = Table(
    title="Loss | table",
    headers=["loss", "acc (%)", "Δ (p)", "k", "x"],
    rows=[
        ["ce", "91.33", "—", "1", ""],
        ["focal <b>", "9.5", "-0.67 ± 1.20 (p=0.214, n=3)", "2", ""],
        ["ls", "", "n/a", "3", ""],
    ],
    notes=["mean  ± CI"],
)


def test_markdown_rendering_byte_for_byte():
    assert GOLDEN.to_markdown() == (
        "**Loss \\| table**\n"
        "\n"
        "| loss       | acc (%) |                       Δ (p) |   k | x   |\n"
        "|------------|--------:|----------------------------:|----:|-----|\n"
        "| ce         |   91.33 |                           — |   1 |     |\n"
        "| focal \\<b> |     9.5 | -0.67 ± 1.20 (p=0.214, n=3) |   2 |     |\n"
        "| ls         |         |                         n/a |   3 |     |\n"
        "\n"
        "mean ± CI\n"
    )


def test_latex_rendering_byte_for_byte():
    assert GOLDEN.to_latex() == (
        "\\begin{table}[ht]\n"
        "\\centering\n"
        "\\caption{Loss \\textbar{} table}\n"
        "\\label{tab:loss-table}\n"
        "\\begin{tabular}{lrrrl}\n"
        "\\toprule\n"
        "loss & acc (\\%) & $\\Delta$ (p) & k & x \\\\\n"
        "\\midrule\n"
        "ce & 91.33 & --- & 1 &  \\\\\n"
        "focal \\textless{}b\\textgreater{} & 9.5 & -0.67 $\\pm$ 1.20 (p=0.214, n=3) & 2 &  \\\\\n"
        "ls &  & n/a & 3 &  \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\par\\smallskip{\\footnotesize mean $\\pm$ CI}\n"
        "\\end{table}\n"
    )
    assert "\\label{tab:mine}" in GOLDEN.to_latex(label="mine")


def test_html_rendering_byte_for_byte():
    right = ' style="text-align:right"'
    assert GOLDEN.to_html() == (
        '<table class="hpsearch-table">\n'
        "<caption>Loss | table</caption>\n"
        "<thead><tr>\n"
        f"<th>loss</th>\n<th{right}>acc (%)</th>\n<th{right}>Δ (p)</th>\n<th{right}>k</th>\n"
        "<th>x</th>\n"
        "</tr></thead>\n"
        "<tbody>\n"
        f"<tr><td>ce</td><td{right}>91.33</td><td{right}>—</td><td{right}>1</td><td></td></tr>\n"
        f"<tr><td>focal &lt;b&gt;</td><td{right}>9.5</td>"
        f"<td{right}>-0.67 ± 1.20 (p=0.214, n=3)</td><td{right}>2</td><td></td></tr>\n"
        f"<tr><td>ls</td><td{right}></td><td{right}>n/a</td><td{right}>3</td><td></td></tr>\n"
        "</tbody>\n"
        "<tfoot>\n"
        '<tr><td colspan="5">mean  ± CI</td></tr>\n'
        "</tfoot>\n"
        "</table>\n"
    )
    page = GOLDEN.to_html(standalone=True)
    assert page.startswith('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n')
    assert "<title>Loss | table</title>" in page and page.endswith("</table>\n</body>\n</html>\n")


def test_csv_writes_raw_numbers_and_spreads_estimates_over_columns():
    table = Table(
        title="t",
        headers=["name", "acc", "ok"],
        rows=[["a", "91.33 ± 0.42 (n=3)", "yes"], ["b", "—", "no"]],
        raw=[
            ["a", {"mean": 0.9133, "half_width": 0.0042, "n": 3}, True],
            ["b", None, False],
        ],
    )
    assert table.to_csv() == (
        "name,acc mean,acc half_width,acc n,ok\n"
        "a,0.9133,0.0042,3,true\n"
        "b,,,,false\n"
    )  # fmt: skip
    # without raw numbers the display text is written
    assert Table(title="t", headers=["a"], rows=[["x, y"]]).to_csv() == 'a\n"x, y"\n'


def test_write_tables_makes_nested_folders_and_writes_utf8_as_rendered(tmp_path):
    out = tmp_path / "deep" / "er"
    written = write_tables([GOLDEN], out, "md,csv")
    assert [p.name for p in written] == ["loss-table.md", "loss-table.csv"]
    assert (out / "loss-table.md").read_bytes() == GOLDEN.to_markdown().encode("utf-8")
    assert (out / "loss-table.csv").read_bytes() == GOLDEN.to_csv().encode("utf-8")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=f"output directory '{tmp_path / 'file'}' is a file"):
        write_tables([GOLDEN], tmp_path / "file", "md")


def test_final_results_table_in_full():
    from search.report.tables import final_results_table

    def runs(vals, tests):
        pairs = enumerate(zip(vals, tests, strict=True))
        return [{"seed": s, "val_acc": v, "test_acc": t} for s, (v, t) in pairs]

    configs = [
        # ties B on validation: the earlier (better searched) one is published
        {"label": "A", "name": "#1", "search_value": 0.99,
         "runs": runs([0.9, 0.8, 0.7], [0.5, 0.6, None])},  # one test value missing
        {"label": "B", "search_value": None, "runs": runs([0.7, 0.9, 0.8], [0.6, 0.7, 0.8])},
        {"label": "C", "search_value": 0.5, "runs": []},  # nothing confirmed yet
    ]  # fmt: skip
    table = final_results_table(configs, confidence=0.9, title="T")
    assert table.title == "T"
    assert table.headers == [
        "Configuration", "Search val acc (selection)", "Confirmed val acc", "Test acc", "n",
        "Δ val vs published (p)", "Δ test vs published (p)",
    ]  # fmt: skip

    def cell(values):
        return mean_ci(values, confidence=0.9).format(scale=100.0, show_n=False)

    d_val = paired_difference([0.7, 0.9, 0.8], [0.9, 0.8, 0.7], confidence=0.9)
    d_test = paired_difference([0.6, 0.7], [0.5, 0.6], confidence=0.9)  # seeds 0 and 1 only
    assert table.rows == [
        ["A [publish]", "99.00", cell([0.9, 0.8, 0.7]), cell([0.5, 0.6]), "3", "—", "—"],
        ["B", "—", cell([0.7, 0.9, 0.8]), cell([0.6, 0.7, 0.8]), "3",
         d_val.format(scale=100.0), d_test.format(scale=100.0)],
        ["C", "50.00", "—", "—", "0", "—", "—"],  # no pairs to compare
    ]  # fmt: skip
    assert table.raw[1][5] == d_val.to_dict(scale=100.0)
    assert table.raw[1][3] == mean_ci([0.6, 0.7, 0.8], confidence=0.9).to_dict(scale=100.0)
    assert table.raw[0][1] == pytest.approx(99.0) and table.raw[1][1] is None
    assert table.raw[0][2] == mean_ci([0.9, 0.8, 0.7], confidence=0.9).to_dict(scale=100.0)
    assert table.notes[0] == (
        "Search val acc: search on the validation split, the very value the configuration was "
        "selected on, so it is biased upwards; not a result to publish."
    )
    assert table.notes[2] == (
        "Δ: difference to the published configuration, paired by seed; p from a two-sided "
        "paired t-test."
    )
    assert "mean ± 90% t confidence interval" in table.notes[1]
    assert table.notes[0].startswith("Search val acc: search on the validation split")
    assert table.notes[-1] == (
        "Publish #1: the best confirmed validation mean (chosen on validation, not on test); "
        f"its test accuracy is {cell([0.5, 0.6])} % (n=2)."
    )


def test_json_rendering_byte_for_byte():
    import numpy as np

    table = Table(
        title="Δ",
        headers=["k", "v"],
        rows=[["1", "x"], ["2", "y"]],
        raw=[[np.int64(1), (np.float64(0.5), math.nan)], [2, Path("p")]],
    )
    assert table.to_json() == (
        "{\n"
        '  "title": "Δ",\n'
        '  "headers": [\n    "k",\n    "v"\n  ],\n'
        '  "records": [\n'
        '    {\n      "k": 1,\n      "v": [\n        0.5,\n        null\n      ]\n    },\n'
        '    {\n      "k": 2,\n      "v": "p"\n    }\n'
        "  ],\n"
        '  "display": [\n    [\n      "1",\n      "x"\n    ],\n    [\n      "2",\n      "y"\n    ]\n  ],\n'
        '  "notes": []\n'
        "}\n"
    )  # fmt: skip


def test_loss_table_in_full():
    runs = {
        "ce": [{"final_val_acc": 0.9}, {"final_val_acc": 0.8}],
        "focal": [{"final_val_acc": 0.7}],
    }
    table = loss_table(runs, confidence=0.9, title="L")
    ce = mean_ci([0.9, 0.8], confidence=0.9)
    assert (table.title, table.headers[0], table.headers[2]) == ("L", "Loss", "n")
    assert table.rows == [
        ["ce", ce.format(scale=100.0, show_n=False), "2"],
        ["focal", "70.00", "1"],
    ]
    ce_raw = ce.to_dict(scale=100.0)
    assert table.raw == [
        ["ce", {"mean": ce_raw["mean"], "half_width": ce_raw["half_width"]}, 2],
        ["focal", {"mean": 70.0, "half_width": None}, 1],
    ]
    assert table.notes == ["Mean ± 90% t confidence interval over n runs."]
    assert loss_table(runs).title == "Loss function comparison"


def test_expected_min_table_of_a_loss_in_its_own_units():
    values = [0.5, 0.25, 1.0]
    t = expected_max_table(values, [1, 3], scale=1.0, decimals=3, minimize=True, label="loss")
    assert t.title == "Expected lowest loss after k trials"
    assert t.headers == ["k", "Expected lowest", "Std"]
    curve = expected_max_curve(values, [1, 3], minimize=True)
    assert t.rows == [[str(p.k), f"{p.mean:.3f}", f"{p.std:.3f}"] for p in curve]
    assert t.raw == [[p.k, p.mean, p.std] for p in curve]
    assert curve[1].mean < curve[0].mean  # the lowest of three draws is lower
    assert t.notes == [
        "Expected lowest of k trials drawn with replacement from the 3 finished trials, with "
        'its standard deviation (Dodge et al., 2019, "Show Your Work").'
    ]


def test_tables_are_written_in_utf8_under_an_ascii_locale(tmp_path):
    code = (
        "import locale, sys\n"
        "from search.report.tables import Table, write_tables\n"
        "print(locale.getpreferredencoding(False))\n"
        "write_tables([Table('t', ['\\u00b1'], [['\\u2014']])], sys.argv[1], 'md,csv')\n"
    )  # ± and — as escapes: the command line itself is read in the locale's encoding
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True
    )
    if out.stdout.strip().lower().replace("-", "") == "utf8":
        pytest.skip("the C locale is UTF-8 on this system")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t.csv").read_bytes() == "±\n—\n".encode()
    assert (tmp_path / "t.md").read_text(encoding="utf-8").startswith("**t**\n\n|   ± |\n")


def test_html_files_are_standalone_pages(tmp_path):
    (path,) = write_tables([GOLDEN], tmp_path, "html")
    assert path.read_text(encoding="utf-8") == GOLDEN.to_html(standalone=True)


def test_final_results_publish_needs_a_confirmed_run_and_one_is_enough():
    from search.report.tables import final_results_table

    nothing = final_results_table([{"label": "A", "runs": []}, {"label": "B"}])  # no runs yet
    assert [r[0] for r in nothing.rows] == ["A", "B"]  # nothing confirmed: nothing to publish
    assert nothing.title == "Final results"
    assert not any(n.startswith("Publish") for n in nothing.notes)
    one = {"seed": 1, "val_acc": 0.5, "test_acc": 0.5}
    single = final_results_table([{"label": "A", "runs": [one]}, {"label": "B", "runs": []}])
    assert [r[0] for r in single.rows] == ["A [publish]", "B"]
    with pytest.raises(ValueError) as info:
        final_results_table([])
    assert str(info.value) == "final_results_table needs at least one configuration, but got none"


def test_expected_best_table_shows_the_spread_in_percent():
    t = expected_max_table([0.5, 0.7, 0.9], [2])
    (point,) = expected_max_curve([0.5, 0.7, 0.9], [2])
    assert t.rows == [["2", f"{point.mean * 100:.2f}", f"{point.std * 100:.2f}"]]
    assert t.raw == [[2, pytest.approx(point.mean * 100), pytest.approx(point.std * 100)]]


def test_tta_table_in_full_pairs_the_same_models_by_repeat():
    from search.report.tables import tta_table

    runs = [
        {"repeat": 0, "arm": "baseline", "test_acc": 0.70, "test_acc_tta": 0.74},
        {"repeat": 1, "arm": "baseline", "test_acc": 0.72, "test_acc_tta": 0.73},
        {"repeat": 2, "arm": "baseline", "test_acc": 0.68, "test_acc_tta": 0.71},
        {"repeat": 3, "arm": "baseline", "test_acc": 0.69, "test_acc_tta": None},  # no TTA
    ]
    table = tta_table(runs, views="flip,crop", confidence=0.9)
    plain = mean_ci([0.70, 0.72, 0.68, 0.69], confidence=0.9)
    viewed = mean_ci([0.74, 0.73, 0.71], confidence=0.9)
    diff = paired_difference([0.74, 0.73, 0.71], [0.70, 0.72, 0.68], confidence=0.9)
    assert table.title == "Ablation: test-time augmentation"
    assert table.headers == ["TTA", "none", "flip,crop"]
    label = "Test accuracy (held out)"
    assert table.rows == [
        [label, plain.format(scale=100.0, decimals=2), viewed.format(scale=100.0, decimals=2)],
        ["Δ test acc, TTA minus none (p)", "—", diff.format(scale=100.0, decimals=2)],
    ]
    assert table.raw == [
        [label, plain.to_dict(scale=100.0), viewed.to_dict(scale=100.0)],
        ["Δ test acc, TTA minus none (p)", None, diff.to_dict(scale=100.0)],
    ]
    assert diff.n == 3 and math.isclose(diff.mean_diff, (0.04 + 0.01 + 0.03) / 3)
    assert table.notes == [
        "The baseline's models on the held-out test split, without and with the views "
        "flip,crop; accuracies in %. Mean ± 90% t confidence interval over repeats (n = runs); "
        "Δ paired by repeat (the same model), p from a two-sided paired t-test."
    ]
    assert tta_table(runs, views="v", title="T").title == "T"


def test_tta_table_of_one_model_says_there_is_no_interval_and_of_two_gives_one():
    from search.report.tables import tta_table

    one = [{"repeat": 0, "arm": "baseline", "test_acc": 0.5, "test_acc_tta": 0.625}]
    table = tta_table(one, views="flip")
    assert table.rows[0] == ["Test accuracy (held out)", "50.00 (n=1)", "62.50 (n=1)"]
    assert table.notes[0].endswith(
        "accuracies in %. One run: each cell is one model, with no confidence interval and no "
        "t-test."
    )
    two = [*one, {"repeat": 1, "arm": "baseline", "test_acc": 0.5, "test_acc_tta": 0.5}]
    assert "Mean ± 95% t confidence interval" in tta_table(two, views="flip").notes[0]


@pytest.mark.parametrize(
    "runs, message",
    [
        ([{"test_acc": 0.5}], "runs of 'baseline' must carry 'repeat', but got keys ['test_acc']"),
        ([{"repeat": 0, "test_acc": 0.5}] * 2, "runs of 'baseline' hold repeat 0 twice"),
        ([{"repeat": 1, "test_acc_tta": 0.5}] * 2, "runs of 'baseline' hold repeat 1 twice"),
    ],
)
def test_tta_table_names_the_baselines_runs_when_they_cannot_be_paired(runs, message):
    from search.report.tables import tta_table

    with pytest.raises(ValueError) as info:
        tta_table(runs, views="flip")
    assert str(info.value) == message
