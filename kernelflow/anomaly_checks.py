"""The anomaly detector's statistics: pure functions of a history, no I/O.

Each check takes the history :class:`~kernelflow.baselines.History` gives
(or any sequence of numbers), the current figure and a
:class:`~kernelflow.alert_rules.Rule`, and returns a :class:`Finding` when the
figure is off, else ``None``. Every check returns ``None`` when its rule is
disabled or the history has fewer than ``rule.min_samples`` samples.

What "off" means is chosen so that the default rules (``alert_rules.DEFAULTS``)
stay quiet on normal noise and catch real changes; ``tests/test_anomaly_checks.py``
checks both on synthetic histories:

* normal noise = task durations with multiplicative (lognormal) jitter of
  10-20 % (coefficient of variation), and runs failing independently at a
  base rate of up to 1 % (a flaky dependency);
* real changes = a task 3x slower than usual (tasks of 50 ms and more, see
  :data:`MIN_EXCESS_S`), and a workflow whose failure rate jumps from 0 to 30 %.

Durations are compared on a log scale: run-to-run jitter of durations is
multiplicative (a task that takes 10 s wobbles by seconds, one that takes
10 ms by milliseconds) and right-skewed, so a z-score of the logarithm gives
about the same false-alarm rate whatever the task's noise level, where a
z-score of the seconds themselves fires ever more often on noisier tasks
(measured at 30 % jitter with z 4 and factor 2: 3.8e-3 false alarms per check
on seconds, 6.5e-5 as done here). The rates quoted in the docstrings were
measured on 200,000 simulated checks each with
``python benchmarks/bench_alerts.py --rates``;
tests/test_anomaly_checks.py checks the claims that matter at fixed seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from .alert_rules import Rule
from .durations import readable_duration as fmt_seconds

REL_SPREAD_FLOOR = 0.05
"""The smallest spread a baseline of durations is given: 5 % of the duration
(a standard deviation of 0.05 in log-duration). A task that always takes
exactly the same time would otherwise turn a 5 % wiggle into z = 1000."""
MIN_EXCESS_S = 0.1
"""A duration or trend finding also needs the duration to exceed its baseline
by at least this many seconds: scheduler and garbage-collector hiccups of a
few milliseconds are not slowdowns, however large they are relative to a
1 ms task. With the default factor of 2, tasks from 0.1 s up are checked in
full; a 3x slowdown is caught from 50 ms up. Every check takes
``min_excess_s=`` to change it."""
STUCK_MIN_EXCESS_S = 1.0
"""A task is only "stuck" once it has run at least this long past the
baseline's 95th percentile (besides ``factor`` x that percentile)."""
ERROR_RATE_ALPHA = 1e-3
"""The error-rate check's significance level: the recent failures must be that
unlikely (or less) at the baseline's failure rate."""
TREND_ALPHA = 1e-6
"""The trend check's significance level for the slope (one-sided t-test); the
tail of a 4.75-sigma normal event."""
TREND_MIN_R2 = 0.5
"""The trend check needs the line to explain at least half of the variance of
the recent (log) durations: one slow run at the end is a spike, not a trend."""
OUTLIER_Z = 3.5
"""Earlier durations this many robust standard deviations from the median (log
scale) are left out of a duration baseline."""
_EPS_S = 1e-6
"""Durations are floored at a microsecond before taking logarithms."""
_NORMAL = NormalDist()


@dataclass(frozen=True)
class Finding:
    """What a check found: the figure, what it was compared with, and how far off it is.

    The fields map one to one onto :class:`kernelflow.widgets.alert.Alert`
    (``value``, ``baseline``, ``spread``, ``score``, ``message``; ``history``
    needs times from :class:`~kernelflow.baselines.History` to become the
    alert's ``(time, value)`` pairs). Every number is finite and ``spread >= 0``.
    """

    kind: str
    """The rule that fired: ``duration``, ``error_rate``, ``trend`` or ``stuck`` (``Rule.kind``)."""
    metric: str
    """``duration_s`` (duration, trend), ``error_rate``, ``running_s`` (stuck)."""
    value: float
    """The figure that is off (seconds, or a failure rate in 0..1)."""
    baseline: float
    """What it is compared with (see each check)."""
    spread: float
    """The baseline's spread as used for the score, in the unit of ``baseline``; 0 where not meaningful."""
    score: float
    """How far off, always z-like (the alert widget shows it as "z"): a z-score on
    the log scale (duration, stuck), the z with the test's tail probability
    (error rate), the slope's t-statistic (trend)."""
    message: str
    """One plain sentence for people."""
    history: tuple[float, ...]
    """The baseline's values, oldest first (the alert widget plots them)."""


# --- the checks --------------------------------------------------------------------


def check_duration(
    history: Sequence[float],
    value: float,
    rule: Rule,
    *,
    what: str,
    min_excess_s: float = MIN_EXCESS_S,
) -> Finding | None:
    """A duration far above its baseline (``rule.kind == "duration"``).

    ``history``: earlier durations in seconds of the same task and workflow
    version (successful attempts, oldest first: ``History.durations`` for the
    rule's ``window`` or ``since_s``); ``value``: the duration just measured.

    The baseline is the history on a log scale, without its outliers: values
    more than :data:`OUTLIER_Z` robust standard deviations (1.4826 x the median
    absolute deviation) from the median are left out, so one earlier slow run
    neither hides the next ones nor becomes the norm. Of what is left, ``mean``
    is the mean duration and ``s`` the standard deviation of the log durations,
    floored at :data:`REL_SPREAD_FLOOR`; ``z = (ln value - mean(ln)) / s``.

    Fires when all of these hold:

    * ``z`` is as unlikely as a ``rule.z``-sigma normal event (``P = 3.2e-5``
      for z = 4), allowing for the baseline being a sample: the tail of
      Student's t with ``n - 1`` degrees of freedom at ``z / sqrt(1 + 1/n)``.
      With 30 samples that takes z >= 4.75, with 10 z >= 7.3, with 100 z >= 4.2;
    * ``value >= rule.factor * mean``: a tiny spread alone never alerts;
    * ``value - mean >= min_excess_s`` (:data:`MIN_EXCESS_S`).

    The finding's ``baseline`` is ``mean``, ``spread`` is ``s * mean`` (the
    relative spread in seconds, for the widget's band), ``score`` is ``z``.
    Measured with the defaults (z 4, factor 2) on 30 earlier runs, 200,000
    checks per jitter level: false alarms per check 0 at 10 % and 15 %
    jitter, ~3e-5 at 20 %, ~7e-5 at 30 %, ~9e-5 at 50 %; a 3x slowdown (every
    run from then on 3x slower, each with its own jitter) is caught at its
    first slow run always at 10 % jitter, 98.7 % of the time at 15 %, 78 % at
    20 %, and within its first three slow runs 100 %, 99.9 % and 93 % of the
    time (noisier tasks need a bigger change: at 30 % jitter a single 3x run is
    a 3.7-sigma event, below the default z).
    """
    if not rule.enabled:
        return None
    hist = _finite(history)
    if len(hist) < rule.min_samples or len(hist) < 2 or not _is_finite(value):
        return None
    value = max(float(value), 0.0)
    kept = _without_outliers(hist)
    n = len(kept)
    mean = math.fsum(kept) / n
    logs = [math.log(max(x, _EPS_S)) for x in kept]
    s = max(_stdev(logs), REL_SPREAD_FLOOR)
    z = (math.log(max(value, _EPS_S)) - math.fsum(logs) / n) / s
    if not (value >= rule.factor * mean and value - mean >= min_excess_s and z > 0):
        return None
    if student_t_sf(z / math.sqrt(1.0 + 1.0 / n), n - 1) > _normal_tail(rule.z):
        return None
    ratio = value / mean if mean > 0 else math.inf
    return Finding(
        kind="duration",
        metric="duration_s",
        value=value,
        baseline=mean,
        spread=s * mean,
        score=z,
        message=f"{what} took {fmt_seconds(value)}, {_ratio(ratio)} its usual {fmt_seconds(mean)} (z = {z:.1f})",
        history=tuple(hist),
    )


def check_error_rate(
    baseline: Sequence[bool],
    recent: Sequence[bool],
    rule: Rule,
    *,
    what: str,
) -> Finding | None:
    """Recent runs failing more often than before (``rule.kind == "error_rate"``).

    ``baseline``: outcomes of the runs before the recent ones (``True`` =
    failed), oldest first, at least ``rule.min_samples`` of them;
    ``recent``: the latest ``rule.recent`` outcomes, the run just finished last
    (:func:`split_runs` cuts ``History.run_failures`` into the two).

    Fires when all of these hold:

    * the newest run failed: a rise in failures is reported by the failure
      that makes it significant, once, not again by each success after it
      while the failures are still in the recent window;
    * the recent failure rate exceeds the baseline's by at least ``rule.rate``;
    * the recent failures are significant: ``P(X >= failures)`` for ``X ~
      Binomial(len(recent), p0)`` is at most :data:`ERROR_RATE_ALPHA`, where
      ``p0 = (baseline failures + 0.5) / (len(baseline) + 1)`` (the Jeffreys
      estimate: a baseline without failures is not taken to mean failures are
      impossible).

    With the defaults (rate 0.2, recent 10, window 30) and a clean baseline,
    3 failures of the last 10 alert (0 to 30 %); with one failure in the
    baseline it takes 4, with two 5. False alarms per check, measured on
    200,000 checks each: ~5e-6 at a 0.5 % base failure rate, ~2e-5 at 1 %,
    ~1.4e-4 at 2 %, ~1e-3 at 5 % (there 3 failures in 10 runs are not rare
    enough to tell from a real change; raise ``recent`` for such workflows). A
    sustained jump from 0 to 30 % is caught within 10 runs ~62 % of the time,
    within 20 runs ~85 %, within 30 runs ~88 % (after that the failures reach
    the baseline, which then expects them).

    ``value`` and ``baseline`` are the two failure rates, ``spread`` the
    binomial standard deviation of the recent rate at ``p0``, ``score`` the
    z-score with the same one-sided tail probability as the test (3.1 at the
    threshold). ``history``: for each run but the last, the failure rate of the
    ``len(recent)`` runs ending at it (fewer at the start), baseline runs first.
    """
    if not rule.enabled:
        return None
    base = [bool(x) for x in baseline]
    rec = [bool(x) for x in recent]
    if len(base) < rule.min_samples or not rec or not rec[-1]:
        return None
    kb, nb, kr, nr = sum(base), len(base), sum(rec), len(rec)
    rate_b, rate_r = kb / nb, kr / nr
    if rate_r - rate_b < rule.rate:
        return None
    p0 = (kb + 0.5) / (nb + 1.0)
    p_value = binomial_sf(kr, nr, p0)
    if p_value > ERROR_RATE_ALPHA:
        return None
    outcomes = base + rec
    history = tuple(
        sum(outcomes[max(0, i + 1 - nr) : i + 1]) / (i + 1 - max(0, i + 1 - nr)) for i in range(len(outcomes) - 1)
    )
    return Finding(
        kind="error_rate",
        metric="error_rate",
        value=rate_r,
        baseline=rate_b,
        spread=math.sqrt(p0 * (1.0 - p0) / nr),
        score=z_of_tail(p_value),
        message=(
            f"{kr} of the last {nr} runs of {what} failed ({_pct(rate_r)}), "
            f"against {kb} of the {nb} before ({_pct(rate_b)})"
        ),
        history=history,
    )


def check_trend(
    durations: Sequence[float],
    rule: Rule,
    *,
    what: str,
    min_excess_s: float = MIN_EXCESS_S,
) -> Finding | None:
    """A task slowing down run after run (``rule.kind == "trend"``).

    ``durations``: successful durations in seconds, oldest first, the newest
    last (the run just finished). The line is fitted (least squares) to the
    logarithms of the last ``rule.recent`` of them; any earlier ones only help
    to estimate the noise. Pass as many as the duration check uses (its
    window plus the recent ones, e.g. ``History.durations(n=rule.recent + 30)``):
    with only the recent runs the noise estimate has few degrees of freedom
    and the test (rightly) needs a much cleaner line to fire.

    Fires when all of these hold:

    * the fitted duration at the newest run is at least ``rule.factor`` times
      the fitted one at the oldest of the recent runs;
    * the slope is significant: one-sided t-test at :data:`TREND_ALPHA`, the
      noise estimated from the fit's residuals pooled with the spread of the
      earlier durations around their mean (floored at
      :data:`REL_SPREAD_FLOOR`);
    * the fit explains the recent durations: R² >= :data:`TREND_MIN_R2`;
    * the fitted increase is at least ``min_excess_s`` seconds.

    ``value`` and ``baseline`` are the fitted durations at the newest and the
    oldest of the recent runs, ``spread`` the noise in seconds at the baseline,
    ``score`` the slope's t-statistic. Measured with the defaults (factor 1.5,
    recent 10) and 30 earlier runs, 200,000 checks per jitter level: false
    alarms per check at most 5e-6 at 5-30 % jitter; a steady slowdown from 1x
    to 2x over 10 runs is caught 100 % of the time at 5 % jitter, 86 % at 10 %,
    3 % at 20 %; from 1x to 3x: 100 % at 10 %, ~45 % at 20 %. A trend is only
    told apart from jitter when it is large against it: noisy tasks rely on
    the duration check.
    """
    if not rule.enabled:
        return None
    values = _finite(durations)
    if len(values) < rule.min_samples:
        return None
    window = values[-rule.recent :]
    older = values[: len(values) - len(window)]
    n = len(window)
    if n < 3:
        return None
    y = [math.log(max(x, _EPS_S)) for x in window]
    mx = (n - 1) / 2.0
    my = math.fsum(y) / n
    sxx = math.fsum((i - mx) ** 2 for i in range(n))
    sxy = math.fsum((i - mx) * (v - my) for i, v in enumerate(y))
    syy = math.fsum((v - my) ** 2 for v in y)
    slope = sxy / sxx
    if slope <= 0 or syy <= 0:
        return None
    rss = max(syy - slope * sxy, 0.0)
    r2 = min(1.0, slope * sxy / syy)
    df = n - 2
    ss = rss
    if len(older) >= 2:
        lo = [math.log(max(x, _EPS_S)) for x in older]
        mo = math.fsum(lo) / len(lo)
        ss += math.fsum((v - mo) ** 2 for v in lo)
        df += len(lo) - 1
    if df < 1:
        return None
    noise = max(math.sqrt(ss / df), REL_SPREAD_FLOOR)
    t = slope / (noise / math.sqrt(sxx))
    first = math.exp(my - slope * mx)
    last = math.exp(my + slope * mx)
    ratio = math.exp(slope * (n - 1))
    if not (
        ratio >= rule.factor
        and r2 >= TREND_MIN_R2
        and last - first >= min_excess_s
        and student_t_sf(t, df) <= TREND_ALPHA
    ):
        return None
    return Finding(
        kind="trend",
        metric="duration_s",
        value=last,
        baseline=first,
        spread=noise * first,
        score=t,
        message=(
            f"{what} has been slowing down: from {fmt_seconds(first)} to {fmt_seconds(last)} "
            f"over the last {n} runs ({_ratio(ratio)}, R² = {r2:.2f})"
        ),
        history=tuple(values[:-1]),
    )


def check_stuck(
    history: Sequence[float],
    running_s: float,
    rule: Rule,
    *,
    what: str,
    min_excess_s: float = STUCK_MIN_EXCESS_S,
) -> Finding | None:
    """A task still running far longer than it ever takes (``rule.kind == "stuck"``).

    ``history``: earlier successful durations in seconds (oldest first);
    ``running_s``: how long the attempt has been running so far.

    Fires when ``running_s >= rule.factor * p95`` and ``running_s - p95 >=
    min_excess_s`` (:data:`STUCK_MIN_EXCESS_S`), where ``p95`` is the 95th
    percentile of the history (linear interpolation, as ``task_baselines``).
    ``baseline`` is that percentile, ``spread`` the history's standard
    deviation in seconds, ``score`` a z-score on the log scale as in
    :func:`check_duration` (how far the running time is from the usual
    durations; the ratio to the percentile is in the message). With the
    default factor of 3, a task with 20 % jitter runs past 3x its 95th
    percentile with probability below 1e-9.
    """
    if not rule.enabled:
        return None
    hist = _finite(history)
    if len(hist) < rule.min_samples or not hist or not _is_finite(running_s):
        return None
    running_s = max(float(running_s), 0.0)
    p95 = quantile(hist, 0.95)
    if not (running_s >= rule.factor * p95 and running_s - p95 >= min_excess_s):
        return None
    logs = [math.log(max(x, _EPS_S)) for x in _without_outliers(hist)]
    z = (math.log(max(running_s, _EPS_S)) - math.fsum(logs) / len(logs)) / max(_stdev(logs), REL_SPREAD_FLOOR)
    ratio = running_s / max(p95, _EPS_S)
    return Finding(
        kind="stuck",
        metric="running_s",
        value=running_s,
        baseline=p95,
        spread=_stdev(hist),
        score=z,
        message=(
            f"{what} has been running for {fmt_seconds(running_s)}, {_ratio(ratio)} the "
            f"{fmt_seconds(p95)} that 95 % of its runs stay under"
        ),
        history=tuple(hist),
    )


def split_runs(outcomes: Sequence[bool], rule: Rule) -> tuple[list[bool], list[bool]]:
    """Cut run outcomes (oldest first, ``History.run_failures``) into the
    error-rate check's ``(baseline, recent)``: the last ``rule.recent`` runs,
    and up to ``rule.window`` runs before them."""
    items = [bool(x) for x in outcomes]
    cut = max(0, len(items) - rule.recent)
    return items[max(0, cut - rule.window) : cut], items[cut:]


# --- statistics helpers -------------------------------------------------------------


def binomial_sf(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``, exact (summed in log space)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def student_t_sf(t: float, df: float) -> float:
    """``P(T >= t)`` for Student's t with ``df`` degrees of freedom."""
    if math.isnan(t):
        return 1.0
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def z_of_tail(p: float) -> float:
    """The z-score whose upper tail probability is ``p`` (finite for any p)."""
    p = min(max(p, 1e-300), 1.0 - 1e-16)
    return -_NORMAL.inv_cdf(p)


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation (numpy's default)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("quantile of no values")
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = (m * (b - m) * x) / ((a + 2.0 * m - 1.0) * (a + 2.0 * m))
        else:
            num = -((a + m) * (a + b + m) * x) / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return front * (f - 1.0)


def _normal_tail(z: float) -> float:
    """``P(Z >= z)`` for a standard normal ``Z``."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _without_outliers(values: list[float]) -> list[float]:
    """``values`` without those :data:`OUTLIER_Z` robust standard deviations from
    the median of their logarithms (all of them if that would leave fewer than 2)."""
    logs = [math.log(max(x, _EPS_S)) for x in values]
    med = _median(logs)
    spread = max(1.4826 * _median([abs(v - med) for v in logs]), REL_SPREAD_FLOOR)
    kept = [x for x, v in zip(values, logs) if abs(v - med) <= OUTLIER_Z * spread]
    return kept if len(kept) >= 2 else values


def _median(xs: Sequence[float]) -> float:
    ys = sorted(xs)
    mid = len(ys) // 2
    return ys[mid] if len(ys) % 2 else (ys[mid - 1] + ys[mid]) / 2.0


def _finite(values: Sequence[float]) -> list[float]:
    """The finite values, negatives (a clock stepped back) as 0."""
    out = []
    for v in values:
        if _is_finite(v):
            out.append(max(float(v), 0.0))
    return out


def _is_finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _stdev(xs: Sequence[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    m = math.fsum(xs) / n
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1))


# --- words ---------------------------------------------------------------------------


def _ratio(r: float) -> str:
    return f"{r:.1f}x" if math.isfinite(r) and r < 1000 else "over 1000x"


def _pct(rate: float) -> str:
    return f"{rate * 100:.0f} %"
