"""search.report.stats against values computed without scipy: closed forms, R's outputs for Student's
sleep data, brute-force enumeration and Monte Carlo."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from search.report.stats import (
    Estimate,
    ExpectedMax,
    PairedTest,
    expected_max,
    expected_max_curve,
    format_p,
    mean_ci,
    paired_difference,
)

# Student (1908) via R's `sleep` data: extra hours of sleep under two drugs, same 10 patients.
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_mean_ci_textbook_three_values():
    est = mean_ci([1, 2, 3])
    t_975_df2 = 4.302652729749464  # t table, 2 degrees of freedom
    assert est.mean == pytest.approx(2.0)
    assert est.n == 3
    assert est.half_width == pytest.approx(t_975_df2 / math.sqrt(3), rel=1e-12)
    assert (est.low, est.high) == pytest.approx((2 - est.half_width, 2 + est.half_width))


def test_mean_ci_matches_r_t_test():
    # R: t.test(sleep$extra[1:10]) -> mean 0.75, 95% CI -0.5297804 2.0297804
    est = mean_ci(SLEEP_1)
    assert est.mean == pytest.approx(0.75)
    assert est.low == pytest.approx(-0.5297804, abs=1e-7)
    assert est.high == pytest.approx(2.0297804, abs=1e-7)


def test_mean_ci_other_confidence_uses_df1_closed_form():
    # df = 1: t is Cauchy, t_q = tan(pi * (q - 1/2)); values [0, 2]: mean 1, sd sqrt(2)
    est = mean_ci([0.0, 2.0], confidence=0.9)
    t = math.tan(math.pi * (0.95 - 0.5))
    assert est.half_width == pytest.approx(t * math.sqrt(2) / math.sqrt(2), rel=1e-12)
    assert est.confidence == 0.9


def test_mean_ci_small_samples():
    one = mean_ci([0.9133])
    assert (one.mean, one.n) == (0.9133, 1) and math.isnan(one.half_width)
    none = mean_ci([])
    assert none.n == 0 and math.isnan(none.mean)
    same = mean_ci([0.5, 0.5, 0.5])
    assert same.half_width == 0.0


def test_estimate_format():
    est = Estimate(mean=0.91333, half_width=0.00421, n=3)
    assert est.format(scale=100) == "91.33 ± 0.42 (n=3)"
    assert est.format(scale=100, decimals=1, show_n=False) == "91.3 ± 0.4"
    assert str(est) == "0.91 ± 0.00 (n=3)"
    assert mean_ci([0.9133]).format(scale=100) == "91.33 (n=1)"
    assert mean_ci([]).format() == "—"
    assert mean_ci([1.0, 3.0]).to_dict() == {
        "mean": 2.0,
        "half_width": pytest.approx(12.706204736174707 * 1.0),
        "n": 2,
    }
    assert mean_ci([0.73596]).to_dict(scale=100) == {"mean": 73.596, "half_width": None, "n": 1}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"values": [1.0, math.nan]}, "finite"),
        ({"values": [1.0, math.inf]}, "finite"),
        ({"values": [1.0, 2.0], "confidence": 1.0}, "confidence"),
        ({"values": [1.0, 2.0], "confidence": 0.0}, "confidence"),
        ({"values": [[1.0, 2.0]]}, "flat"),
    ],
)
def test_mean_ci_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mean_ci(**kwargs)


def test_paired_difference_matches_r_sleep():
    # R: t.test(extra ~ group, data = sleep, paired = TRUE)
    #    t = -4.0621, df = 9, p-value = 0.002833; CI -2.4598858 -0.7001142; mean diff -1.58
    test = paired_difference(SLEEP_1, SLEEP_2)
    assert test.n == 10
    assert test.mean_diff == pytest.approx(-1.58)
    assert test.t == pytest.approx(-4.0621, abs=1e-4)
    assert test.p_value == pytest.approx(0.002833, abs=1e-6)
    assert test.low == pytest.approx(-2.4598858, abs=1e-7)
    assert test.high == pytest.approx(-0.7001142, abs=1e-7)


def test_paired_difference_df2_closed_form():
    # differences [1, 2, 3]: t = 2 / (1 / sqrt 3) = sqrt 12; with df = 2 the two-sided
    # p-value is 1 - |t| / sqrt(2 + t^2) = 1 - sqrt(6 / 7)
    test = paired_difference([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])
    assert test.t == pytest.approx(math.sqrt(12))
    assert test.p_value == pytest.approx(1 - math.sqrt(6 / 7), rel=1e-10)
    assert test.half_width == pytest.approx(4.302652729749464 / math.sqrt(3))


def test_paired_difference_sign_and_df1_closed_form():
    # df = 1 (Cauchy): p = 1 - (2 / pi) * atan(|t|); differences [-1, -2] -> t = -3
    test = paired_difference([0.0, 0.0], [1.0, 2.0])
    assert test.mean_diff == pytest.approx(-1.5)
    assert test.t == pytest.approx(-3.0)
    assert test.p_value == pytest.approx(1 - 2 / math.pi * math.atan(3.0), rel=1e-10)


def test_paired_difference_degenerate_cases():
    same = paired_difference([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert (same.mean_diff, same.half_width, same.t, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    shifted = paired_difference([2.0, 3.0], [1.0, 2.0])
    assert (shifted.mean_diff, shifted.half_width, shifted.t, shifted.p_value) == (
        1.0,
        0.0,
        math.inf,
        0.0,
    )
    down = paired_difference([0.0, 1.0], [1.0, 2.0])
    assert down.t == -math.inf and down.p_value == 0.0
    one = paired_difference([0.9], [0.8])
    assert one.n == 1 and one.mean_diff == pytest.approx(0.1)
    assert math.isnan(one.p_value) and math.isnan(one.half_width)
    empty = paired_difference([], [])
    assert empty.n == 0 and math.isnan(empty.mean_diff)


def test_paired_difference_bad_input():
    with pytest.raises(ValueError, match="pair up"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        paired_difference([1.0, math.nan], [1.0, 2.0])


def test_paired_test_format():
    test = PairedTest(mean_diff=-0.0067, half_width=0.012, t=-1.5, p_value=0.2143, n=3)
    assert test.format(scale=100) == "-0.67 ± 1.20 (p=0.214, n=3)"
    assert PairedTest(0.02, 0.001, 40.0, 1e-5, 4).format(scale=100) == "+2.00 ± 0.10 (p<0.001, n=4)"
    assert paired_difference([0.9], [0.8]).format(scale=100) == "+10.00 (n=1)"
    assert paired_difference([], []).format() == "—"
    assert format_p(math.nan) == "p=n/a"
    assert test.to_dict(scale=100) == {
        "mean": -0.67,
        "half_width": 1.2,
        "n": 3,
        "p_value": 0.2143,
    }


def _brute_force(values: list[float], k: int) -> tuple[float, float]:
    """Mean and std of the max over every one of the n^k equally likely draws."""
    maxima = [
        max(values[i] for i in idx) for idx in itertools.product(range(len(values)), repeat=k)
    ]
    return float(np.mean(maxima)), float(np.std(maxima))


@pytest.mark.parametrize(
    "values",
    [[0.3, 0.9, 0.5, 0.7], [0.5, 0.5, 0.8, 0.2, 0.8], [1.0], [0.1, 0.4, 0.4]],
)
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_expected_max_equals_enumeration(values, k):
    mean, std = _brute_force(values, k)
    assert expected_max(values, k) == pytest.approx(mean, rel=1e-12)
    ((kk, m, s),) = expected_max_curve(values, [k])
    assert (kk, m) == (k, pytest.approx(mean, rel=1e-12))
    assert s == pytest.approx(std, rel=1e-9, abs=1e-12)


def test_expected_max_matches_monte_carlo():
    rng = np.random.default_rng(0)
    values = rng.normal(0.8, 0.05, size=30)
    draws = rng.choice(values, size=(200_000, 7), replace=True).max(axis=1)
    point = expected_max_curve(values, [7])[0]
    se = draws.std() / math.sqrt(draws.size)
    assert abs(point.mean - draws.mean()) < 5 * se
    assert point.std == pytest.approx(draws.std(), rel=0.02)


def test_expected_max_curve_shape_and_limits():
    values = [0.6, 0.9, 0.7, 0.8]
    curve = expected_max_curve(values, [1, 2, 5, 1000])
    assert all(isinstance(p, ExpectedMax) for p in curve)
    assert [p.k for p in curve] == [1, 2, 5, 1000]
    assert curve[0].mean == pytest.approx(np.mean(values))  # k = 1: one random trial
    assert curve[0].std == pytest.approx(np.std(values))
    means = [p.mean for p in curve]
    assert means == sorted(means) and curve[-1].mean == pytest.approx(0.9)


def test_expected_max_minimize_is_expected_min():
    values = [0.3, 0.9, 0.5, 0.7]
    mins = [min(values[i] for i in idx) for idx in itertools.product(range(4), repeat=3)]
    assert expected_max(values, 3, minimize=True) == pytest.approx(np.mean(mins))


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "2"])
def test_expected_max_bad_k(k):
    with pytest.raises(ValueError, match=r"k must be an integer >= 1, but got k="):
        expected_max([0.5, 0.6], k)


def test_expected_max_needs_values():
    with pytest.raises(ValueError, match="at least one"):
        expected_max([], 1)
    with pytest.raises(ValueError, match="finite"):
        expected_max([0.5, math.nan], 1)


def test_stats_does_not_import_optuna():
    code = "import sys, search.report.stats; print('optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the edges a wrong line would move (mutation testing: scripts/mutation.sh) -------------


def test_degenerate_results_are_nan_with_the_confidence_asked():
    for got in (mean_ci([], confidence=0.9), mean_ci([0.5], confidence=0.9)):
        assert math.isnan(got.half_width) and got.confidence == 0.9
    assert math.isnan(mean_ci([], confidence=0.9).mean)
    for got, n in (
        (paired_difference([], [], confidence=0.9), 0),
        (paired_difference([0.5], [0.25], confidence=0.9), 1),
    ):
        assert (got.n, got.confidence) == (n, 0.9)
        assert all(math.isnan(x) for x in (got.half_width, got.t, got.p_value))
    assert math.isnan(paired_difference([], []).mean_diff)
    assert paired_difference([0.5], [0.25]).mean_diff == 0.25
    same = paired_difference([0.5, 0.7], [0.5, 0.7], confidence=0.9)
    assert same == PairedTest(0.0, 0.0, 0.0, 1.0, 2, 0.9)
    shifted = paired_difference([0.5, 0.75], [0.25, 0.5], confidence=0.9)
    assert shifted == PairedTest(0.25, 0.0, math.inf, 0.0, 2, 0.9)
    assert paired_difference([0.25, 0.5], [0.5, 0.75]).t == -math.inf


def test_one_value_has_no_spread_and_raises_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns of the std of one value (ddof=1)
        one = mean_ci([0.5])
        assert (one.mean, one.n) == (0.5, 1) and math.isnan(one.half_width)
        # nearly equal differences: scipy's precision-loss warning is silenced, nothing else
        got = paired_difference([1.0, 1.0 + 1e-15, 1.0], [0.0, 0.0, 1e-15])
    assert got.n == 3 and not math.isnan(got.p_value)


@pytest.mark.parametrize(("call", "name"), [
    (lambda: mean_ci([1.0, math.nan]), "values"),
    (lambda: mean_ci([1.0, None]), "values"),  # a run with no value recorded
    (lambda: paired_difference([1.0, math.inf], [1.0, 2.0]), "values"),
    (lambda: paired_difference([1.0, 2.0], [math.nan, 2.0]), "baseline_values"),
    (lambda: expected_max_curve([math.nan], [1]), "values"),
])  # fmt: skip
def test_a_non_finite_value_is_named_by_its_argument(call, name):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).startswith(f"{name} must be finite (drop missing runs first)")


def test_p_values_at_the_display_threshold():
    assert format_p(0.001) == "p=0.001"  # shown as a number from 0.001 on
    assert format_p(0.000999) == "p<0.001"
    assert format_p(math.nan) == "p=n/a"


def test_scaled_display_and_export_of_estimates_and_paired_tests():
    est = Estimate(0.5, 0.125, 3)
    assert est.to_dict() == {"mean": 0.5, "half_width": 0.125, "n": 3}
    assert est.to_dict(scale=100.0) == {"mean": 50.0, "half_width": 12.5, "n": 3}
    test = PairedTest(0.5, 0.125, 2.0, 0.04, 2)
    assert test.format() == "+0.50 ± 0.12 (p=0.040, n=2)"  # two pairs show their p
    assert test.format(show_n=False) == "+0.50 ± 0.12 (p=0.040)"
    assert test.to_dict() == {"mean": 0.5, "half_width": 0.125, "n": 2, "p_value": 0.04}
    assert PairedTest(0.5, math.nan, math.nan, math.nan, 1).format(show_n=False) == "+0.50"


def test_a_paired_test_keeps_the_confidence_it_was_computed_at():
    assert paired_difference(SLEEP_2, SLEEP_1, confidence=0.9).confidence == 0.9
    assert paired_difference(SLEEP_2, SLEEP_1).confidence == 0.95


def test_no_values_is_refused_in_one_sentence():
    with pytest.raises(ValueError) as info:
        expected_max_curve([], [1])
    assert str(info.value) == "values must hold at least one finished trial, but got none"
