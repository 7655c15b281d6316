"""Tables of single runs (an ablation of one repeat, as the quick profiles run): they say
plainly that they have no interval and no test, and how many repeats a difference of the
size shown would need."""

from __future__ import annotations

import math

import pytest
from conftest import TINY_DIGITS

from search.cli import main
from search.report.stats import repeats_needed
from search.report.tables import DELTA_LABEL, factor_table, loss_table


def run(repeat: int, final: float, *, val_images: int | None = 500) -> dict:
    return {
        "repeat": repeat, "max_train_acc": final, "max_val_acc": final, "final_val_acc": final,
        "train_seconds": 1.0, "epochs_run": 3, "val_images": val_images,
    }  # fmt: skip


@pytest.mark.parametrize(("effect", "n"), [(0.5, 34), (0.8, 15), (1.0, 10)])
def test_repeats_needed_is_the_paired_t_tests_sample_size(effect, n):
    # the textbook sample sizes of a two-sided paired t-test at 0.05 with 80% power (G*Power)
    assert repeats_needed(effect * 2.0, 2.0) == n
    assert repeats_needed(0.0, 1.0) is None and repeats_needed(0.001, 1.0, most=50) is None


def test_a_large_difference_needs_few_repeats_where_scipys_tail_is_nan():
    # n=2: power 0.53 (t with 1 df is heavy-tailed); n=3: 0.998. scipy's noncentral t
    # returns nan for the far tail here, which must count as 0, not stop the search
    assert repeats_needed(6.58, 1.0) == 3
    assert repeats_needed(100.0, 1.0) == 2  # the fewest a paired t-test can use
    # a shift of 1e10 sd: scipy gives nan for both tails; the near one is then the normal's (1)
    assert repeats_needed(1.0, 1e-10) == 2


def _paired_power(effect: float, n: int, alpha: float) -> float:
    """The power of a two-sided paired t-test on n pairs (noncentral t, both tails)."""
    from scipy import stats as st

    crit = st.t.ppf(1 - alpha / 2, n - 1)
    shift = effect * math.sqrt(n)
    return float(st.nct.sf(crit, n - 1, shift) + st.nct.cdf(-crit, n - 1, shift))


@pytest.mark.parametrize(
    "effect, alpha, power",
    [
        (0.3, 0.05, 0.8),
        (0.7, 0.01, 0.8),
        (1.3, 0.1, 0.8),
        (0.5, 0.05, 0.9),
        (0.9, 0.05, 0.9),  # 16 pairs: n - 1 degrees of freedom, not n + 1, say so
        (0.2, 0.1, 0.5),  # 69 pairs counting both tails; the upper alone needs 70
        (0.1, 0.05, 0.4),  # a goal under one half (a negative normal quantile)
        (0.5, 0.3, 0.6),  # lenient levels: the lower tail counts, with n - 1 df
        (0.7, 0.3, 0.6),
        (0.5, 0.5, 0.8),  # alpha = 0.5: the critical value is t's 75% quantile
        (0.1, 0.3, 0.8),  # 351: the normal approximation (352) overshoots here
    ],
)
def test_repeats_needed_is_the_least_n_whose_power_reaches_the_goal(effect, alpha, power):
    n = repeats_needed(effect * 0.02, 0.02, alpha=alpha, power=power)
    assert n is not None and n > 2
    assert _paired_power(effect, n, alpha) >= power > _paired_power(effect, n - 1, alpha)
    assert repeats_needed(-effect * 0.02, 0.02, alpha=alpha, power=power) == n  # a loss too


@pytest.mark.parametrize(
    "diff, sd", [(0.0, 1.0), (0.5, 0.0), (0.5, -1.0), (math.nan, 1.0), (0.5, math.inf)]
)
def test_repeats_needed_is_none_without_a_difference_or_a_spread(diff, sd):
    assert repeats_needed(diff, sd) is None


def test_repeats_needed_is_none_beyond_the_most_it_may_ask_for():
    assert repeats_needed(0.1, 1.0) == 787
    assert repeats_needed(0.1, 1.0, most=786) is None
    assert repeats_needed(0.1, 1.0, most=787) == 787
    # an effect of 0.08865 sd needs 1001 pairs: one more than the default allows
    assert _paired_power(0.08865, 1001, 0.05) >= 0.8 > _paired_power(0.08865, 1000, 0.05)
    assert repeats_needed(0.08865, 1.0) is None
    assert repeats_needed(0.08865, 1.0, most=1001) == 1001


def test_a_power_reached_exactly_counts_and_two_pairs_can_be_enough():
    power = _paired_power(1.0, 10, 0.05)  # the power of 10 pairs at an effect of 1 sd
    assert _paired_power(1.0, 9, 0.05) < power
    assert repeats_needed(1.0, 1.0, power=power) == 10
    assert _paired_power(0.6, 2, 0.5) >= 0.6  # 0.602
    assert repeats_needed(0.6, 1.0, alpha=0.5, power=0.6) == 2


def test_a_factor_table_of_single_runs_says_it_has_no_interval_nor_test():
    runs = {"8": [run(0, 0.90)], "64": [run(0, 0.86)], "256": [run(0, 0.70)]}
    table = factor_table("data.batch_size", list(runs), runs, baseline_value="64")
    notes = " ".join(table.notes)
    assert "Single runs (n=1)" in notes and "no confidence interval and no t-test" in notes
    assert "t confidence interval over repeats" not in notes and "p from a" not in notes
    assert "search ablate --repeats N" in notes and "500 validation images" in notes
    assert table.notes[0] == (
        "Single runs (n=1): each cell is one run, not a mean; with one run per value there is "
        "no confidence interval and no t-test. Accuracies in %."
    )
    # sd of a difference of two runs: sqrt(2 * 0.82 * 0.18 / 500) = 2.43 points
    assert table.notes[1] == (
        "Δ: final validation accuracy minus the baseline's (data.batch_size = 64), in the same "
        "repeat. 'N repeats to test': the repeats per value with which a two-sided paired "
        "t-test (p < 0.05) would find a real difference of that size 80% of the time, if runs "
        "varied only as much as an accuracy measured on 500 validation images does (±2.43 "
        "points between two runs); runs with other seeds usually vary more, so N is a lower "
        "bound. search ablate --repeats N runs them."
    )
    delta = next(r for r in table.rows if r[0] == DELTA_LABEL)
    p = (0.90 + 0.86 + 0.70) / 3
    sd = math.sqrt(2 * p * (1 - p) / 500)
    for value, cell in zip(list(runs), delta[1:], strict=True):
        if value == "64":
            assert cell == "—"
            continue
        diff = runs[value][0]["final_val_acc"] - 0.86
        needed = repeats_needed(diff, sd)
        assert cell == f"{100 * diff:+.2f} (n=1; {needed} repeats to test)"
    # a bigger gap needs fewer repeats
    assert repeats_needed(0.16, sd) < repeats_needed(0.04, sd)


@pytest.mark.parametrize("repeats", [2, 3])
def test_with_repeats_the_table_keeps_its_intervals_and_tests(repeats):
    runs = {
        "8": [run(0, 0.90), run(1, 0.91), run(2, 0.89)][:repeats],
        "64": [run(0, 0.86), run(1, 0.87), run(2, 0.85)][:repeats],
    }
    table = factor_table("data.batch_size", list(runs), runs, baseline_value="64")
    notes = " ".join(table.notes)
    assert "Mean ± 95% t confidence interval over repeats" in notes and "paired t-test" in notes
    assert "Single runs" not in notes
    assert "repeats to test" not in " ".join(" ".join(r) for r in table.rows)


def test_a_pair_of_single_runs_names_the_repeats_its_gap_needs_in_cell_and_record():
    runs = {"a": [run(0, 0.80)], "b": [run(0, 0.815)]}
    table = factor_table("x", ["a", "b"], runs, baseline_value="a")
    p = (0.80 + 0.815) / 2
    effect = 0.015 / math.sqrt(2 * p * (1 - p) / 500)
    assert _paired_power(effect, 24, 0.05) >= 0.8 > _paired_power(effect, 23, 0.05)
    assert table.rows[-1] == [DELTA_LABEL, "—", "+1.50 (n=1; 24 repeats to test)"]
    assert table.raw[-1][2] == {
        "mean": 1.5, "half_width": None, "n": 1, "p_value": None, "repeats_needed": 24,
    }  # fmt: skip


def test_a_gap_too_small_to_test_says_so_and_no_gap_or_no_pair_says_nothing():
    runs = {"a": [run(0, 0.8)], "b": [run(0, 0.8001)], "c": [run(0, 0.8)], "d": [run(1, 0.9)]}
    table = factor_table("x", list(runs), runs, baseline_value="a")
    p = (0.8 + 0.8001 + 0.8 + 0.9) / 4
    assert _paired_power(0.0001 / math.sqrt(2 * p * (1 - p) / 500), 1000, 0.05) < 0.8
    assert table.rows[-1] == [
        DELTA_LABEL, "—", "+0.01 (n=1; over 1000 repeats to test)", "+0.00 (n=1)", "—",
    ]  # fmt: skip
    assert [raw.get("repeats_needed", "-") for raw in table.raw[-1][2:]] == [None, None, "-"]
    assert table.raw[-1][4] == {"mean": None, "half_width": None, "n": 0, "p_value": None}


def test_without_the_validation_size_the_count_is_said_to_be_unknown():
    runs = {"8": [run(0, 0.9, val_images=None)], "64": [run(0, 0.86, val_images=None)]}
    notes = " ".join(factor_table("b", list(runs), runs, baseline_value="64").notes)
    assert "Single runs (n=1)" in notes and "is unknown here" in notes
    assert "--repeats 3 or more" in notes
    table = factor_table("b", list(runs), runs, baseline_value="64")
    assert table.rows[-1] == [DELTA_LABEL, "+4.00 (n=1)", "—"]  # no count, not even "over"
    assert table.raw[-1][1]["repeats_needed"] is None
    assert notes.endswith(
        "in the same repeat. How many repeats a difference needs is unknown here (the runs do "
        "not record their validation size); rerun with --repeats 3 or more for intervals and "
        "tests."
    )


def test_a_loss_table_of_single_runs_names_the_gap_and_its_repeats():
    runs = {"ce": [run(0, 0.9133)], "focal": [run(0, 0.9067)], "ls": [run(0, 0.9033)]}
    notes = " ".join(loss_table(runs).notes)
    assert "Single runs (n=1)" in notes and "no confidence interval" in notes
    assert "Mean ±" not in notes
    sd = math.sqrt(2 * 0.9078 * (1 - 0.9078) / 500)
    needed = repeats_needed(0.9133 - 0.9067, sd)
    assert "The two best losses differ by 0.66 points" in notes
    assert f"with {needed} repeats per loss" in notes
    # sd of a difference of two runs at the mean accuracy 0.9078: 1.83 points
    assert loss_table(runs).notes == [
        "Single runs (n=1): each value is one run, with no confidence interval.",
        f"The two best losses differ by 0.66 points: with {needed} repeats per loss a two-sided "
        "paired t-test (p < 0.05) would find a real difference of that size 80% of the time, "
        "if runs varied only as much as an accuracy measured on 500 validation images does "
        f"(±1.83 points between two runs); runs with other seeds usually vary more, so {needed} "
        f"is a lower bound. search ablate --repeats {needed} runs them.",
    ]


def test_a_loss_table_of_two_single_runs_names_their_gap():
    notes = loss_table({"ce": [run(0, 0.9)], "focal": [run(0, 0.8)]}).notes
    assert len(notes) == 2
    assert notes[1].startswith("The two best losses differ by 10.00 points: with ")


def test_search_ablate_with_one_repeat_prints_it(write_study, storage_url, capsys):
    ablation = (
        '\n[ablation]\nrepeats = 1\n[ablation.fixed]\n"train.epochs" = 2\n'
        '[ablation.factors]\n"optim.lr" = [0.001, 0.01]\n'
    )
    write_study("tiny", TINY_DIGITS + ablation)
    assert main(["ablate", "--study", "tiny", "-q", "--storage", storage_url]) == 0
    out = capsys.readouterr().out
    assert "Single runs (n=1)" in out and "no t-test" in out
    assert "repeats to test)" in out and "360 validation images" in out  # the digits' val
