"""harness.core.metrics on hand-built curves with a known knee or step (pure numerics: no model, no report):
the measured extrapolation length of an aggregate per-length curve (`measured_limit`) and of per-position loss
buckets (`position_limit`)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from report_records import LENGTHS, knee_nll

from harness.core import metrics
from tasks.perplexity import MEASURE, POSITION_LOSS

LOG15 = math.log(1.5)


# ------------------------------------------------------------------------------------- measured length


def test_measured_limit_interpolates_the_knee():
    # knee at 6000: nll(8192) = 2.0 + 0.6*log2(8192/6000) passes (< 2 + log 1.5), nll(16384) fails.
    values = [math.exp(knee_nll(L, 6000)) for L in LENGTHS]
    limit = metrics.measured_limit(LENGTHS, values, 4096, MEASURE)
    assert not limit.censored
    g0, g1 = knee_nll(8192, 6000), knee_nll(16384, 6000)
    expected = 8192 * 2 ** ((2.0 + LOG15 - g0) / (g1 - g0))
    assert limit.value == pytest.approx(expected, rel=1e-9)
    # Exactly where the piecewise-linear-in-log-L curve crosses: knee + log2(1.5)/0.6 doublings.
    assert limit.value == pytest.approx(6000 * 2 ** (LOG15 / 0.6), rel=1e-9)
    assert limit.reference == pytest.approx(math.exp(2.0))
    assert limit.threshold == pytest.approx(1.5 * math.exp(2.0))


def test_measured_limit_ignores_short_lengths_and_uses_best_at_or_below_tune_len():
    # Short contexts are worse (less context) and must not count as failures; the 8K point is the best
    # overall but lies beyond tune_len, so the reference is the 4K value.
    nll = {1024: 3.0, 2048: 2.5, 4096: 2.0, 8192: 1.9, 16384: 2.0 + LOG15 + 0.5}
    limit = metrics.measured_limit(list(nll), [math.exp(v) for v in nll.values()], 4096, MEASURE)
    assert limit.reference == pytest.approx(math.exp(2.0))
    frac = (2.0 + LOG15 - 1.9) / (nll[16384] - 1.9)
    assert limit.value == pytest.approx(8192 * 2**frac)


def test_measured_limit_censored_and_factor_parameter():
    values = [math.exp(knee_nll(L, 6000)) for L in LENGTHS]
    loose = metrics.measured_limit(LENGTHS, values, 4096, MEASURE, factor=10.0)
    assert loose.censored and loose.value == 16384
    tight = metrics.measured_limit(LENGTHS, values, 4096, MEASURE, factor=1.05)
    assert not tight.censored and 4096 < tight.value < 8192


def test_measured_limit_higher_is_better_absolute_rule():
    spec = metrics.MeasureSpec(metric="correct", name="accuracy", higher_is_better=True, factor=None,
                              threshold=0.5, log_interp=False)
    limit = metrics.measured_limit([1000, 2000, 4000, 8000], [1.0, 1.0, 0.75, 0.25], 2000, spec)
    assert limit.value == pytest.approx(math.exp(math.log(4000) + 0.5 * math.log(2)))
    assert limit.bracket == (4000, 8000)  # the grid lengths that pass and fail around the crossing
    empty = metrics.measured_limit([1000, 2000], [math.nan, math.nan], 2000, spec)
    assert math.isnan(empty.value) and not empty.censored


def test_measured_limit_additive_delta_rule():
    # higher-is-better log-prob: passes while >= best at L <= tune_len - delta, interpolated linearly in value
    spec = metrics.MeasureSpec(metric="answer_logprob", name="log-prob", higher_is_better=True, factor=None,
                              delta=2.0, log_interp=False)
    assert spec.rule == "delta" and spec.key == "log-prob"
    limit = metrics.measured_limit([1000, 2000, 4000, 8000], [-1.0, -0.5, -1.5, -8.5], 2000, spec)
    assert limit.reference == -0.5 and limit.threshold == -2.5
    assert limit.value == pytest.approx(4000 * 2 ** ((-2.5 + 1.5) / (-8.5 + 1.5)))
    assert metrics.measured_limit([1000, 2000, 4000], [-1.0, -0.5, -1.5], 2000, spec, delta=0.5).value == \
        pytest.approx(2000 * 2 ** 0.5)  # the delta override; -1.5 fails a 0.5-nat margin halfway
    assert spec.param(factor=3.0) == 2.0  # a factor override leaves an additive rule alone


# ------------------------------------------------------------------------------- per-position measured length


WIDTH = 64


def step_buckets(step_at: int, length: int = 4096, low: float = 2.0, high: float = 4.0, width: int = WIDTH):
    """Uniform buckets [start, start + width) from position 1; loss `low` before `step_at`, `high` from it
    on."""
    starts = np.arange(1, length, width, dtype=float)
    ends = np.minimum(starts + width, length)
    loss = np.where(starts >= step_at, high, low)
    return starts, ends, (starts + ends - 1) / 2, loss, ends - starts


def log_between(x0: float, x1: float, frac: float) -> float:
    return math.exp(math.log(x0) + frac * (math.log(x1) - math.log(x0)))


def test_position_limit_finds_a_step_at_its_position():
    step = 1025  # positions >= 1025 jump by 2 nats; bucket centres 992.5 (last low) and 1056.5 (first high)
    _, _, x, loss, tokens = step_buckets(step)
    j = int(np.argmax(loss > 2.0))
    assert (x[j - 1], x[j]) == (992.5, 1056.5)
    # window 3, delta = half the step: smoothed (2+2+4)/3 and (2+4+4)/3 straddle 3.0 symmetrically -> halfway
    # in log(position) between the two centres, i.e. at the step (within a token)
    half = dataclasses.replace(POSITION_LOSS, delta=1.0)
    limit = metrics.position_limit(x, loss, tokens, 512, half)
    assert not limit.censored and limit.reference == 2.0 and limit.threshold == 3.0
    assert limit.value == pytest.approx(math.sqrt(992.5 * 1056.5), rel=1e-12)
    assert abs(limit.value - step) < 1
    # the default delta (0.5 nats): the smoothed curve reaches 2.5 three quarters of the way from the
    # centre before the last low bucket (smoothed 2.0) to the last low one (smoothed 2 + 2/3)
    default = metrics.position_limit(x, loss, tokens, 512, POSITION_LOSS)
    assert default.threshold == 2.5
    assert default.value == pytest.approx(log_between(928.5, 992.5, 0.5 / (2 / 3)), rel=1e-12)
    # no smoothing: the crossing sits a quarter of the way (0.5 of a 2-nat step) between the two centres
    raw = metrics.position_limit(x, loss, tokens, 512, dataclasses.replace(POSITION_LOSS, window=1))
    assert raw.value == pytest.approx(log_between(992.5, 1056.5, 0.25), rel=1e-12)
    assert metrics.position_limit(x, loss, tokens, 512, POSITION_LOSS, delta=1.0).value == limit.value


def test_position_limit_reference_window_and_token_weights():
    # the reference is the token-weighted mean over positions in [T/2, T]; earlier (worse, short-context)
    # positions and later dips do not count, and a dip below the reference is no failure
    starts, ends, x, loss, tokens = step_buckets(3000)
    loss = loss.copy()
    loss[x < 256] = 3.9  # short contexts: high loss, outside the reference window
    loss[(x > 1500) & (x < 2000)] = 1.0
    tokens = tokens.astype(float)
    in_ref = (x >= 256) & (x <= 512)
    loss[in_ref] = np.where(np.arange(in_ref.sum()) % 2, 2.2, 1.8)
    tokens[np.where(in_ref)[0][::2]] = 3 * WIDTH  # the 1.8 buckets weigh 3x: reference 1.9
    limit = metrics.position_limit(x, loss, tokens, 512, POSITION_LOSS)
    assert limit.reference == pytest.approx((1.8 * 3 + 2.2) / 4)
    assert 2900 < limit.value < 3000 and not limit.censored


def test_position_limit_censored_and_fallbacks():
    _, _, x, loss, tokens = step_buckets(1025, high=2.4)  # a rise below the 0.5-nat delta: never fails
    limit = metrics.position_limit(x, loss, tokens, 512, POSITION_LOSS)
    assert limit.censored and limit.value == x[-1] and limit.threshold == 2.5
    # tune_len beyond the data: the reference comes from the upper half of what lies below it, nothing to scan
    beyond = metrics.position_limit(x, loss, tokens, 10_000, POSITION_LOSS)
    assert math.isnan(beyond.value) and "nothing to measure" in beyond.note
    # tune_len below the first bucket: the first bucket is the reference
    below = metrics.position_limit(x, step_buckets(1025)[3], tokens, 8, POSITION_LOSS)
    assert below.reference == 2.0 and "first bucket" in below.note and below.value == pytest.approx(
        metrics.position_limit(x, step_buckets(1025)[3], tokens, 512, POSITION_LOSS).value)
    empty = metrics.position_limit([], [], [], 512, POSITION_LOSS)
    assert math.isnan(empty.value) and not empty.censored
