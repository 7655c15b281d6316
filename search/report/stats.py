"""Statistics for ablation and search reports: pure numpy/scipy, no storage, no Optuna.

- ``mean_ci``: mean with a Student-t confidence interval over repeats.
- ``paired_difference``: difference to a baseline, paired by repeat (same seed, same initial
  weights and batch order), with a two-sided paired t-test.
- ``expected_max`` / ``expected_max_curve``: the expected best score after k trials drawn
  from the finished ones (Dodge et al., 2019, "Show Your Work").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import stats as _st

__all__ = [
    "Estimate",
    "ExpectedMax",
    "PairedTest",
    "expected_max",
    "expected_max_curve",
    "format_p",
    "mean_ci",
    "paired_difference",
    "repeats_needed",
]


def _finite_array(values: Iterable[float], name: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, but got shape {arr.shape}")
    bad = arr[~np.isfinite(arr)]
    if bad.size:
        raise ValueError(f"{name} must be finite (drop missing runs first), but got {bad[0]!r}")
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), but got {confidence=}")


def _t_half_width(sd: float, n: int, confidence: float) -> float:
    """Half width of the two-sided Student-t interval for a mean; nan when n < 2."""
    if n < 2:
        return math.nan
    return float(_st.t.ppf(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n))


def _num(x: float, *, scale: float, decimals: int, sign: bool = False) -> str:
    return f"{x * scale:{'+' if sign else ''}.{decimals}f}"


def format_p(p: float) -> str:
    """``p=0.214``, ``p<0.001``, or ``p=n/a`` when the test is undefined."""
    if math.isnan(p):
        return "p=n/a"
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.3f}"


@dataclass(frozen=True)
class Estimate:
    """A mean with a two-sided t confidence interval ``mean ± half_width``.

    ``half_width`` is nan when n < 2 (no spread to estimate); ``mean`` is nan when n == 0.
    """

    mean: float
    half_width: float
    n: int
    confidence: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def format(self, *, scale: float = 1.0, decimals: int = 2, show_n: bool = True) -> str:
        """``"91.33 ± 0.42 (n=3)"``; ``scale=100`` shows a fraction as percent.

        One run shows no interval (``"91.33 (n=1)"``); no runs show ``"—"``.
        """
        if self.n == 0:
            return "—"
        text = _num(self.mean, scale=scale, decimals=decimals)
        if not math.isnan(self.half_width):
            text += " ± " + _num(self.half_width, scale=scale, decimals=decimals)
        return f"{text} (n={self.n})" if show_n else text

    def to_dict(self, *, scale: float = 1.0) -> dict[str, float | int | None]:
        """Numbers for csv/json (in the displayed scale); undefined values are None."""
        return {
            "mean": _none_if_nan(self.mean * scale),
            "half_width": _none_if_nan(self.half_width * scale),
            "n": self.n,
        }

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True)
class PairedTest:
    """Mean paired difference ``values - baseline`` with its t interval and paired t-test.

    Degenerate cases, chosen so that tables stay readable:

    - n == 0: everything nan; n == 1: ``mean_diff`` is the one difference, the rest nan.
    - zero variance of the differences (n >= 2): all differences 0 gives t = 0, p = 1.0 (no
      evidence of any difference; typical of an arm identical to the baseline); a constant
      non-zero difference gives t = ±inf, p = 0.0 (the limit of the t-test as the spread
      vanishes). The half width is 0 in both cases.
    """

    mean_diff: float
    half_width: float
    t: float
    p_value: float
    n: int
    confidence: float = 0.95

    @property
    def low(self) -> float:
        return self.mean_diff - self.half_width

    @property
    def high(self) -> float:
        return self.mean_diff + self.half_width

    def format(self, *, scale: float = 1.0, decimals: int = 2, show_n: bool = True) -> str:
        """``"-0.67 ± 1.20 (p=0.214, n=3)"``; ``"—"`` when there are no pairs."""
        if self.n == 0:
            return "—"
        text = _num(self.mean_diff, scale=scale, decimals=decimals, sign=True)
        if not math.isnan(self.half_width):
            text += " ± " + _num(self.half_width, scale=scale, decimals=decimals)
        extra = [format_p(self.p_value)] if self.n >= 2 else []
        if show_n:
            extra.append(f"n={self.n}")
        return f"{text} ({', '.join(extra)})" if extra else text

    def to_dict(self, *, scale: float = 1.0) -> dict[str, float | int | None]:
        """Numbers for csv/json; ``mean`` is the mean difference, in the displayed scale."""
        return {
            "mean": _none_if_nan(self.mean_diff * scale),
            "half_width": _none_if_nan(self.half_width * scale),
            "n": self.n,
            "p_value": _none_if_nan(self.p_value),
        }

    def __str__(self) -> str:
        return self.format()


def repeats_needed(
    diff: float, sd: float, *, alpha: float = 0.05, power: float = 0.8, most: int = 1000
) -> int | None:
    """The repeats (pairs) a two-sided paired t-test at level ``alpha`` needs to find a true
    mean difference ``diff`` with probability ``power`` when the differences have standard
    deviation ``sd``: the least n >= 2 whose power (noncentral t) reaches it. None for a zero
    or undefined difference or spread, or beyond ``most``."""
    if not (math.isfinite(diff) and math.isfinite(sd)) or diff == 0 or sd <= 0:
        return None
    effect = abs(diff) / sd

    def reaches(n: int) -> bool:
        crit = _st.t.ppf(1 - alpha / 2, n - 1)
        shift = effect * math.sqrt(n)
        # scipy's noncentral t gives nan far in a tail (a large shift): there the far tail is
        # 0, and the near one the normal's
        upper = float(_st.nct.sf(crit, n - 1, shift))
        if math.isnan(upper):
            upper = float(_st.norm.sf(crit - shift))
        lower = float(_st.nct.cdf(-crit, n - 1, shift))
        return upper + (0.0 if math.isnan(lower) else lower) >= power

    # Start the exact search at the normal approximation, which ignores the far tail: it
    # is a lower bound at the usual levels, but can overshoot at a lenient alpha (0.3).
    z = _st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)
    n = max(2, math.floor((z / effect) ** 2))
    while n > 2 and reaches(n - 1):
        n -= 1
    while n <= most:
        if reaches(n):
            return n
        n += 1
    return None


def _none_if_nan(x: float) -> float | None:
    # 12 significant digits drop the last-bit noise of scaling (0.73596 * 100 = 73.59599999999999)
    return None if math.isnan(x) else float(f"{x:.12g}")


def mean_ci(values: Iterable[float], *, confidence: float = 0.95) -> Estimate:
    """Mean and Student-t confidence interval (sample sd, n - 1 degrees of freedom).

    An empty input gives n = 0 and nan mean (a table cell for an arm with no finished runs);
    non-finite values are an error: drop missing runs before calling.
    """
    _check_confidence(confidence)
    arr = _finite_array(values, "values")
    n = int(arr.size)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, confidence)
    sd = float(arr.std(ddof=1)) if n > 1 else math.nan
    return Estimate(float(arr.mean()), _t_half_width(sd, n, confidence), n, confidence)


def paired_difference(
    values: Sequence[float], baseline_values: Sequence[float], *, confidence: float = 0.95
) -> PairedTest:
    """Paired difference ``values[i] - baseline_values[i]`` and a two-sided paired t-test.

    The two sequences must be aligned (same repeat at the same index); see ``PairedTest`` for
    the degenerate cases (n < 2, zero variance).
    """
    _check_confidence(confidence)
    x = _finite_array(values, "values")
    b = _finite_array(baseline_values, "baseline_values")
    if x.size != b.size:
        raise ValueError(
            f"values and baseline_values must pair up, but got {x.size} and {b.size} values"
        )
    n = int(x.size)
    if n == 0:
        return PairedTest(math.nan, math.nan, math.nan, math.nan, 0, confidence)
    d = x - b
    mean = float(d.mean())
    if n == 1:
        return PairedTest(mean, math.nan, math.nan, math.nan, 1, confidence)
    if np.all(d == d[0]):  # zero variance: scipy gives nan (0/0) or inf with a warning
        if d[0] == 0:
            return PairedTest(0.0, 0.0, 0.0, 1.0, n, confidence)
        return PairedTest(mean, 0.0, math.copysign(math.inf, mean), 0.0, n, confidence)
    with warnings.catch_warnings():
        # nearly-equal differences trip scipy's cancellation warning; the result is still right
        warnings.filterwarnings("ignore", message="Precision loss", category=RuntimeWarning)
        res = _st.ttest_rel(x, b)
    sd = float(d.std(ddof=1))
    return PairedTest(
        mean,
        _t_half_width(sd, n, confidence),
        float(res.statistic),
        float(res.pvalue),
        n,
        confidence,
    )


class ExpectedMax(NamedTuple):
    """One point of the expected-best curve: after ``k`` trials, ``mean ± std``."""

    k: int
    mean: float
    std: float


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, but got k={k!r}")
    return int(k)


def _max_weights(n: int, ks: np.ndarray) -> np.ndarray:
    """P(the largest of k uniform draws from n sorted items is item i), shape (len(ks), n)."""
    i = np.arange(1, n + 1, dtype=float)
    return (i / n) ** ks[:, None] - ((i - 1) / n) ** ks[:, None]


def expected_max_curve(
    values: Iterable[float], ks: Iterable[int], *, minimize: bool = False
) -> list[ExpectedMax]:
    """Expected best of k i.i.d. draws (with replacement) from the empirical distribution of
    ``values``, and its standard deviation, for each k (Dodge et al., 2019, eq. 1).

    With ``v_1 <= ... <= v_n`` sorted, the largest of k draws is ``v_i`` with probability
    ``(i/n)^k - ((i-1)/n)^k``; mean and std are those of this distribution (exact, ties
    included). ``minimize=True`` gives the expected smallest (for a loss-like objective).
    """
    arr = _finite_array(values, "values")
    if arr.size == 0:
        raise ValueError("values must hold at least one finished trial, but got none")
    ks_arr = np.array([_check_k(k) for k in ks], dtype=float)
    v = np.sort(-arr if minimize else arr)
    w = _max_weights(v.size, ks_arr)
    mean = w @ v
    # centred second moment: E[(V - mean)^2] avoids the cancellation of E[V^2] - mean^2
    var = np.einsum("kn,kn->k", w, (v[None, :] - mean[:, None]) ** 2)
    sign = -1.0 if minimize else 1.0
    return [
        ExpectedMax(int(k), float(sign * m), float(math.sqrt(max(s, 0.0))))
        for k, m, s in zip(ks_arr, mean, var, strict=True)
    ]


def expected_max(values: Iterable[float], k: int, *, minimize: bool = False) -> float:
    """Expected best of ``k`` trials drawn from ``values``; see ``expected_max_curve``."""
    return expected_max_curve(values, [k], minimize=minimize)[0].mean
