"""The anomaly detector's statistics (kernelflow/anomaly_checks.py), on synthetic histories.

"Normal noise" here, as in the module's docstring:

* durations: every task has its own typical duration (0.1 s to 100 s) and
  multiplicative lognormal jitter with a coefficient of variation drawn from
  10-20 %; each run's duration is independent of the others;
* failures: every workflow has its own base failure rate drawn from 0-1 %
  (a flaky dependency), each run failing independently.

The default rules must raise nothing on it over thousands of checks, and must
catch a 3x slowdown and a jump from 0 to 30 % failures. The seeds are fixed.
False alarms on this noise are rare, not impossible (the module's docstrings
give the measured rates: about 3e-5 per duration check at 20 % jitter, 2e-5
per error-rate check at a 1 % base rate): with 150 other seeds the 9,000
duration, trend and stuck checks here raised nothing; with 400 other seeds
the 3,200 error-rate checks raised one in 14 of them.
"""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from kernelflow.alert_rules import DEFAULTS, Rule
from kernelflow.anomaly_checks import (
    MIN_EXCESS_S,
    Finding,
    binomial_sf,
    check_duration,
    check_error_rate,
    check_stuck,
    check_trend,
    fmt_seconds,
    quantile,
    split_runs,
    student_t_sf,
    z_of_tail,
)
from kernelflow.widgets.alert import Alert

DURATION, ERROR_RATE, TREND, STUCK = (DEFAULTS[k] for k in ("duration", "error_rate", "trend", "stuck"))


def jittered(rng: random.Random, base: float, cv: float, n: int) -> list[float]:
    """``n`` durations around ``base`` with lognormal jitter of coefficient of variation ``cv``."""
    s = math.sqrt(math.log(1 + cv * cv))
    return [base * rng.lognormvariate(-s * s / 2, s) for _ in range(n)]


def task_life(rng: random.Random, n: int = 70) -> list[float]:
    return jittered(rng, 10 ** rng.uniform(-1, 2), rng.uniform(0.10, 0.20), n)


def duration_checks(durations: list[float], i: int) -> list[Finding | None]:
    """What the detector checks after run ``i`` of a task: its duration
    against the 30 before, the trend over the last 10 (with 30 more for the
    noise), and "stuck" as if the run were still going at its final time."""
    history = durations[max(0, i - 30) : i]
    return [
        check_duration(history, durations[i], DURATION, what="t"),
        check_trend(durations[max(0, i - 39) : i + 1], TREND, what="t"),
        check_stuck(history, durations[i], STUCK, what="t"),
    ]


# --- normal noise raises nothing --------------------------------------------------------


def test_normal_duration_jitter_raises_nothing() -> None:
    rng = random.Random(20261121)
    checks = 0
    found = []
    for _ in range(50):
        durations = task_life(rng)
        for i in range(10, len(durations)):
            results = duration_checks(durations, i)
            checks += len(results)
            found += [f for f in results if f is not None]
    assert checks == 9_000
    assert found == []


def test_normal_failure_noise_raises_nothing() -> None:
    rng = random.Random(7)
    checks = 0
    found = []
    for _ in range(40):
        rate = rng.uniform(0.0, 0.01)
        outcomes = [rng.random() < rate for _ in range(100)]
        for i in range(20, len(outcomes)):
            baseline, recent = split_runs(outcomes[: i + 1], ERROR_RATE)
            checks += 1
            finding = check_error_rate(baseline, recent, ERROR_RATE, what="w")
            if finding is not None:
                found.append(finding)
    assert checks == 3_200
    assert found == []


# --- real changes are caught -------------------------------------------------------------


def test_a_3x_slowdown_is_caught() -> None:
    rng = random.Random(3)
    first = within_three = 0
    cases = 300
    for case in range(cases):
        cv = 0.10 + 0.10 * case / cases
        base = 10 ** rng.uniform(-1, 2)
        durations = jittered(rng, base, cv, 30) + [3 * d for d in jittered(rng, base, cv, 3)]
        hits = [check_duration(durations[i - 30 : i], durations[i], DURATION, what="load") for i in (30, 31, 32)]
        first += hits[0] is not None
        within_three += any(h is not None for h in hits)
        if cv <= 0.15:
            assert any(h is not None for h in hits), (case, cv)
    # Measured over many seeds: ~94 % at the first slow run, ~98 % within three (10-20 % jitter).
    assert first / cases >= 0.88
    assert within_three / cases >= 0.95


def test_a_3x_slowdown_reads_as_one_sentence() -> None:
    history = [1.0, 1.1, 0.9, 1.05, 0.95] * 6
    finding = check_duration(history, 3.0, DURATION, what="load")
    assert finding is not None
    assert (finding.kind, finding.metric, finding.value) == ("duration", "duration_s", 3.0)
    assert finding.baseline == pytest.approx(1.0)
    assert finding.history == tuple(history)
    assert finding.message == f"load took 3.0 s, 3.0x its usual 1.0 s (z = {finding.score:.1f})"
    assert finding.score > 10


def test_a_jump_from_0_to_30_percent_failures_is_caught() -> None:
    # The window itself: 3 of the last 10 runs failed, none of the 30 before.
    baseline, recent = [False] * 30, [False] * 5 + [True, False, True, False, True]
    finding = check_error_rate(baseline, recent, ERROR_RATE, what="etl")
    assert finding is not None
    assert (finding.kind, finding.metric, finding.value, finding.baseline) == ("error_rate", "error_rate", 0.3, 0.0)
    assert finding.message == "3 of the last 10 runs of etl failed (30 %), against 0 of the 30 before (0 %)"
    assert finding.score == pytest.approx(z_of_tail(binomial_sf(3, 10, 0.5 / 31)))
    # One point per earlier run: the failure rate of the 10 runs ending there.
    assert len(finding.history) == 39 and finding.history[:30] == (0.0,) * 30 and finding.history[-1] == pytest.approx(0.2)
    # Two failures are not enough; nor are three when the newest run did not fail
    # (the rise was reported by the failure that made it).
    assert check_error_rate(baseline, [False] * 8 + [True] * 2, ERROR_RATE, what="etl") is None
    assert check_error_rate(baseline, [False] * 5 + [True, False, True, True, False], ERROR_RATE, what="etl") is None

    # Run by run: 40 runs without failures, then each run fails with probability 0.3.
    rng = random.Random(11)
    caught_after: list[int | None] = []
    for _ in range(300):
        outcomes = [False] * 40
        found = None
        for k in range(1, 31):
            outcomes.append(rng.random() < 0.3)
            baseline, recent = split_runs(outcomes, ERROR_RATE)
            if check_error_rate(baseline, recent, ERROR_RATE, what="etl"):
                found = k
                break
        caught_after.append(found)
    within = lambda k: sum(1 for c in caught_after if c is not None and c <= k) / len(caught_after)  # noqa: E731
    # Measured over many seeds: ~62 % within 10 runs, ~85 % within 20, ~90 % within 30.
    assert within(10) >= 0.55
    assert within(20) >= 0.78


def test_a_steady_slowdown_is_a_trend() -> None:
    rng = random.Random(5)
    caught = 0
    for _ in range(100):
        durations = jittered(rng, 2.0, 0.05, 30) + [2.0 * (1 + k / 9) * d for k, d in enumerate(jittered(rng, 1.0, 0.05, 10))]
        finding = check_trend(durations, TREND, what="load")
        caught += finding is not None
    assert caught >= 97  # from 2 s to 4 s over 10 runs, 5 % jitter
    clean = [2.0] * 30 + [2.0 * (1 + k / 9) for k in range(10)]
    finding = check_trend(clean, TREND, what="load")
    assert finding is not None
    assert finding.value / finding.baseline == pytest.approx(2.0, rel=0.1)
    assert finding.message.startswith("load has been slowing down: from ")
    assert finding.history == tuple(clean[:-1])
    # One slow run at the end is a spike (the duration check's business), not a trend.
    assert check_trend([2.0] * 39 + [8.0], TREND, what="load") is None
    # Faster and faster is not a finding.
    assert check_trend(list(reversed(clean)), TREND, what="load") is None


def test_stuck() -> None:
    history = [10.0, 11.0, 9.0, 10.5, 9.5, 10.2, 9.8, 10.1, 9.9, 10.0] * 3
    p95 = quantile(history, 0.95)
    assert check_stuck(history, 2.9 * p95, STUCK, what="load") is None
    finding = check_stuck(history, 3.1 * p95, STUCK, what="load")
    assert finding is not None
    assert (finding.kind, finding.metric, finding.baseline) == ("stuck", "running_s", p95)
    assert finding.score > 20  # z on the log scale: far beyond anything in the history
    assert finding.message == f"load has been running for {fmt_seconds(3.1 * p95)}, 3.1x the {fmt_seconds(p95)} that 95 % of its runs stay under"
    # A 10 ms task is not stuck at 35 ms: it must also run a second past its p95.
    tiny = [0.01] * 30
    assert check_stuck(tiny, 0.035, STUCK, what="t") is None
    assert check_stuck(tiny, 1.02, STUCK, what="t") is not None


# --- degenerate baselines ------------------------------------------------------------------


def test_a_constant_baseline_does_not_turn_a_wiggle_into_an_alert() -> None:
    history = [2.0] * 30
    assert check_duration(history, 2.1, DURATION, what="t") is None  # +5 %
    assert check_duration(history, 3.9, DURATION, what="t") is None  # under 2x
    finding = check_duration(history, 4.0, DURATION, what="t")
    assert finding is not None
    assert finding.spread == pytest.approx(0.05 * 2.0)  # floored at 5 %
    assert finding.score == pytest.approx(math.log(2) / 0.05)
    assert math.isfinite(finding.score)


def test_tiny_tasks_need_a_real_excess() -> None:
    history = [0.001] * 30
    assert check_duration(history, 0.05, DURATION, what="t") is None  # 50x, but only 49 ms
    assert check_duration(history, 0.05, DURATION, what="t", min_excess_s=0.01) is not None
    assert check_duration(history, 0.2, DURATION, what="t") is not None
    assert MIN_EXCESS_S == 0.1


def test_zeros_negatives_and_non_finite_values_are_handled() -> None:
    assert check_duration([0.0] * 30, 5.0, DURATION, what="t") is not None
    assert check_duration([1.0] * 30, math.nan, DURATION, what="t") is None
    assert check_duration([1.0] * 29 + [math.inf], 5.0, DURATION, what="t") is not None  # inf left out
    finding = check_duration([1.0] * 28 + [-3.0, 1.0], 5.0, DURATION, what="t")
    assert finding is not None and math.isfinite(finding.score)
    assert check_stuck([0.0] * 30, 2.0, STUCK, what="t") is not None
    assert check_trend([0.0] * 40, TREND, what="t") is None


def test_split_runs() -> None:
    outcomes = [bool(i % 2) for i in range(50)]
    baseline, recent = split_runs(outcomes, ERROR_RATE)
    assert recent == outcomes[-10:] and baseline == outcomes[10:40]
    assert split_runs([True] * 5, ERROR_RATE) == ([], [True] * 5)


# --- properties ---------------------------------------------------------------------------

durations_st = st.lists(st.floats(min_value=0.01, max_value=10_000.0), min_size=0, max_size=45)
rules_st = st.builds(
    Rule,
    kind=st.just("duration"),
    z=st.floats(min_value=0.5, max_value=10.0),
    factor=st.floats(min_value=1.01, max_value=5.0),
    rate=st.floats(min_value=0.01, max_value=1.0),
    window=st.integers(min_value=1, max_value=40),
    recent=st.integers(min_value=1, max_value=20),
    min_samples=st.integers(min_value=1, max_value=40),
)


@settings(max_examples=300, deadline=None)
@given(history=durations_st, value=st.floats(min_value=0.01, max_value=1e5), rule=rules_st, k=st.integers(-4, 8))
def test_scaling_all_durations_does_not_change_what_fires(history: list[float], value: float, rule: Rule, k: int) -> None:
    scale = 2.0**k  # exact in floating point
    for check, args in (
        (check_duration, (history, value)),
        (check_trend, (history + [value],)),
    ):
        plain = check(*args, rule, what="t", min_excess_s=0.0)
        scaled = check(*[[x * scale for x in a] if isinstance(a, list) else a * scale for a in args], rule, what="t", min_excess_s=0.0)
        assert (plain is None) == (scaled is None), check.__name__
        if plain is not None and scaled is not None:
            assert scaled.score == pytest.approx(plain.score, rel=1e-6, abs=1e-9)
            assert scaled.baseline == pytest.approx(plain.baseline * scale, rel=1e-9)


@settings(max_examples=300, deadline=None)
@given(
    history=durations_st,
    value=st.floats(min_value=0.0, max_value=1e6),
    rule=rules_st,
    outcomes=st.lists(st.booleans(), max_size=60),
)
def test_too_few_samples_or_a_disabled_rule_never_fire(history: list[float], value: float, rule: Rule, outcomes: list[bool]) -> None:
    baseline, recent = split_runs(outcomes, rule)
    off = dataclasses.replace(rule, enabled=False)
    assert check_duration(history, value, off, what="t") is None
    assert check_trend(history + [value], off, what="t") is None
    assert check_stuck(history, value, off, what="t") is None
    assert check_error_rate(baseline, recent, off, what="w") is None
    short = dataclasses.replace(rule, min_samples=len(history) + 2)
    assert check_duration(history, value, short, what="t") is None
    assert check_trend(history + [value], short, what="t") is None
    assert check_stuck(history, value, short, what="t") is None
    assert check_error_rate(baseline, recent, dataclasses.replace(rule, min_samples=len(baseline) + 1), what="w") is None


@settings(max_examples=300, deadline=None)
@given(
    history=durations_st,
    value=st.floats(min_value=0.0, max_value=1e7),
    rule=rules_st,
    outcomes=st.lists(st.booleans(), max_size=60),
)
def test_every_finding_is_finite_and_makes_an_alert(history: list[float], value: float, rule: Rule, outcomes: list[bool]) -> None:
    baseline, recent = split_runs(outcomes, rule)
    findings = [
        check_duration(history, value, rule, what="t", min_excess_s=0.0),
        check_trend(history + [value], rule, what="t", min_excess_s=0.0),
        check_stuck(history, value, rule, what="t", min_excess_s=0.0),
        check_error_rate(baseline, recent, rule, what="w"),
    ]
    start = datetime(2026, 11, 21, tzinfo=timezone.utc)
    for f in findings:
        if f is None:
            continue
        numbers = (f.value, f.baseline, f.spread, f.score, *f.history)
        assert all(math.isfinite(x) for x in numbers), f
        assert f.spread >= 0 and f.message
        alert = Alert(
            workflow="wf", task=None, run_id="r1", metric=f.metric, value=f.value, baseline=f.baseline,
            spread=f.spread, score=f.score, rule=f.kind, severity="warning", message=f.message,
            raised_at=start + timedelta(hours=1),
            history=tuple((start + timedelta(seconds=i), v) for i, v in enumerate(f.history)),
        )  # fmt: skip
        assert Alert.from_dict(alert.to_dict()) == alert


@settings(max_examples=300, deadline=None)
@given(history=durations_st, value=st.floats(min_value=0.0, max_value=1e6), more=st.floats(min_value=0.0, max_value=1e6), rule=rules_st)
def test_a_longer_duration_fires_whenever_a_shorter_one_does(history: list[float], value: float, more: float, rule: Rule) -> None:
    if check_duration(history, value, rule, what="t") is not None:
        assert check_duration(history, value + more, rule, what="t") is not None
    if check_stuck(history, value, rule, what="t") is not None:
        assert check_stuck(history, value + more, rule, what="t") is not None


@settings(max_examples=300, deadline=None)
@given(
    baseline=st.lists(st.sampled_from([False] * 9 + [True]), min_size=1, max_size=40),
    earlier=st.lists(st.booleans(), min_size=1, max_size=19),
    rule=rules_st,
    data=st.data(),
)
def test_one_more_recent_failure_never_silences_an_error_rate_finding(
    baseline: list[bool], earlier: list[bool], rule: Rule, data: st.DataObject
) -> None:
    recent = earlier + [True]  # a finding needs the newest run to have failed
    successes = [i for i, failed in enumerate(earlier) if not failed]
    assume(successes)
    worse = list(recent)
    worse[data.draw(st.sampled_from(successes))] = True
    if check_error_rate(baseline, recent, rule, what="w") is not None:
        assert check_error_rate(baseline, worse, rule, what="w") is not None


# --- the statistics helpers -------------------------------------------------------------------


def test_statistics_helpers_match_scipy() -> None:
    from scipy import stats  # the reference implementation (test extra): kernelflow itself does not need scipy
    rng = random.Random(0)
    for _ in range(500):
        df = rng.choice([1, 2, 3, 5, 9, 29, 37, 100])
        t = rng.uniform(-8, 40)
        expected = stats.t.sf(t, df)
        assert student_t_sf(t, df) == pytest.approx(expected, rel=1e-9, abs=1e-300)
        n = rng.randint(1, 60)
        k = rng.randint(0, n + 1)
        p = rng.uniform(0.0, 1.0)
        assert binomial_sf(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=1e-9, abs=1e-300)
    assert z_of_tail(0.001) == pytest.approx(3.0902, abs=1e-4)
    assert math.isfinite(z_of_tail(0.0)) and math.isfinite(z_of_tail(1.0))
    assert quantile([1, 2, 3, 4], 0.95) == pytest.approx(3.85)


def test_seconds_read_naturally() -> None:
    assert [fmt_seconds(x) for x in (0.0042, 0.85, 3.14, 250.0, 9000.0)] == ["4.2 ms", "850 ms", "3.1 s", "4.2 min", "2.5 h"]
