"""The scaling law against the paper's numbers and its own properties (pure arithmetic, no torch)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from harness.core.errors import InputError
from harness.law import liu as law

LLAMA2 = {"rotary_dim": 128, "train_len": 4096, "pretrain_base": 10000.0}


def test_paper_values_llama2():
    assert law.critical_dim(128, 4096, 10000.0) == 92
    p = law.predict(128, 4096, 1e6)
    assert (p.regime, p.critical_dim, round(p.extrapolation_limit)) == ("larger-base", 92, 129027)
    assert p.base == 1e6


def test_critical_base_is_b0_when_tuned_at_train_length():
    assert law.critical_base(4096) == 10000.0
    assert law.critical_base(4096, 4096, 500000.0) == 500000.0
    # Longer tuning needs a larger base before the larger-base regime starts.
    assert law.critical_base(4096, 16384) > 10000.0


def test_small_base_thresholds_at_4096():
    t = law.small_base_thresholds(4096)
    assert [round(t[k]) for k in ("beta1", "beta2", "beta3")] == [2608, 1304, 652]


def test_critical_dim_is_capped_at_d():
    # b0 below T_train/2pi: every dimension completed a period in pre-training.
    assert law.critical_dim(128, 4096, 100.0) == 128


def test_regimes_llama2():
    assert law.predict(**LLAMA2, base=1e4).regime == "tuning-bounded"  # beta == beta0 belongs here
    assert law.predict(**LLAMA2, base=1e4).extrapolation_limit == 4096
    assert law.predict(**LLAMA2, base=652.0).regime == "tuning-bounded"
    unbounded = law.predict(**LLAMA2, base=600.0)
    assert ((unbounded.regime, unbounded.extrapolation_limit, unbounded.critical_dim)
            == ("unbounded", None, 128))
    assert {law.predict(**LLAMA2, base=b).regime for b in (2.0, 1e3, 1e5)} <= set(law.REGIMES)


def test_limit_jumps_at_critical_base():
    at = law.predict(**LLAMA2, base=1e4).extrapolation_limit
    above = law.predict(**LLAMA2, base=1e4 * (1 + 1e-12)).extrapolation_limit
    assert at == 4096
    assert round(above) == 4712


@pytest.mark.parametrize("tune_len", [None, 16384])
def test_limit_non_decreasing_in_base(tune_len):
    beta3 = law.small_base_thresholds(tune_len or 4096)["beta3"]
    beta0 = law.critical_base(4096, tune_len)
    # Dense log sweep from beta3 to 1e9, plus the points right around beta0.
    sweep = [beta3 * (1e9 / beta3) ** (i / 2000) for i in range(2001)]
    sweep += [beta0 * (1 - 1e-9), beta0, beta0 * (1 + 1e-9)]
    limits = [law.predict(**LLAMA2, base=b, tune_len=tune_len).extrapolation_limit for b in sorted(sweep)]
    assert all(limit is not None for limit in limits)
    assert limits == sorted(limits)


def test_tuning_bounded_critical_dim_grows_as_base_shrinks():
    beta3 = law.small_base_thresholds(4096)["beta3"]
    bases = [1e4 * (beta3 / 1e4) ** (i / 50) for i in range(51)]  # 1e4 down to beta3
    dims = [law.predict(**LLAMA2, base=b).critical_dim for b in bases]
    assert dims[0] == 92 and dims[-1] == 128
    assert dims == sorted(dims)
    assert all(d % 2 == 0 and d <= 128 for d in dims)


@pytest.mark.parametrize("target", [5000, 16384, 129027, 1e6])
def test_base_for_target_round_trip(target):
    beta = law.base_for_target(target, 128, 4096)
    assert beta > 1e4
    p = law.predict(**LLAMA2, base=beta)
    assert p.regime == "larger-base"
    assert p.extrapolation_limit == pytest.approx(target, rel=1e-9)


def test_base_for_target_below_critical_base_returns_it():
    assert law.base_for_target(4500, 128, 4096) == 1e4
    assert law.base_for_target(1000, 128, 4096, 16384) == law.critical_base(4096, 16384)


def test_base_for_target_llama2_1e6():
    assert law.base_for_target(129027, 128, 4096) == pytest.approx(1e6, rel=1e-4)


def test_ntk_is_covered_other_scalings_are_not():
    ntk = law.predict(**LLAMA2, base=1e6, rope_type="ntk")
    assert ntk == law.predict(**LLAMA2, base=1e6)
    for kind in ("linear", "yarn", "llama3", "longrope", "dynamic", "something-new"):
        p = law.predict(**LLAMA2, base=1e6, rope_type=kind)
        assert (p.regime, p.critical_dim, p.extrapolation_limit) == ("not-covered", None, None)


def test_numpy_like_integers_accepted():
    class Index:  # stands in for numpy/torch integer scalars
        def __index__(self):
            return 128

    assert law.critical_dim(Index(), 4096) == 92


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: law.critical_dim(127, 4096), "positive even integer"),
        (lambda: law.critical_dim(0, 4096), "positive even integer"),
        (lambda: law.critical_dim(128.0, 4096), "positive even integer"),
        (lambda: law.critical_dim(True, 4096), "positive even integer"),
        (lambda: law.critical_dim(128, 6), "2*pi"),
        (lambda: law.critical_dim(128, float("nan")), "finite"),
        (lambda: law.critical_dim(128, 4096, 1.0), "greater than 1"),
        (lambda: law.predict(128, 4096, 0.5), "greater than 1"),
        (lambda: law.predict(128, 4096, float("inf")), "finite"),
        (lambda: law.predict(128, 4096, float("nan")), "such as 1e6"),  # an example that fits a base
        (lambda: law.critical_dim(128, float("nan")), "such as 4096"),
        (lambda: law.check_inputs(256, 100), "tune length 100 is shorter than train length 256"),
        (lambda: law.check_inputs(256, 1024, 1.0), "pre-training base 1 must be greater than 1"),
        (lambda: law.predict(128, 4096, "1e6"), "finite"),
        (lambda: law.predict(128, 4096, 1e6, tune_len=2048), "--tune-len"),
        (lambda: law.critical_base(4096, 5.0), "2*pi"),
        (lambda: law.small_base_thresholds(-1), "2*pi"),
        (lambda: law.base_for_target(3, 128, 4096), "2*pi"),
        (lambda: law.predict(128, 4096, 1e6, rope_type=None), "rope type"),
    ],
)
def test_bad_input_is_one_line_input_error(call, fragment):
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_law_imports_only_arithmetic():
    tree = ast.parse(Path(law.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "math", "dataclasses", "harness.core.errors"}


def test_prediction_is_frozen():
    p = law.predict(**LLAMA2, base=1e6)
    with pytest.raises(AttributeError):
        p.base = 2.0  # type: ignore[misc]
    assert math.isfinite(p.extrapolation_limit)
