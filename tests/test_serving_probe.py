"""The served-engine probe's arithmetic and its prompt (harness/serving/probe.py); the probe against real
llama.cpp servers is in tests/test_serving_run.py."""

from __future__ import annotations

import pytest

from harness.serving.probe import CLEAR, judge, probe_ids

SERVED = [-1.0, -2.0, -0.5, -3.0]


@pytest.mark.parametrize("asked, unchanged, verdict", [
    ([-1.1, -2.0, -0.5, -3.1], [-1.5, -2.6, -0.1, -3.9], "override applied"),  # 0.05 vs 0.575
    ([-1.5, -2.6, -0.1, -3.9], [-1.1, -2.0, -0.5, -3.1], "override NOT applied"),
    ([-1.1, -2.1, -0.6, -3.1], [-1.15, -2.15, -0.65, -3.15], "inconclusive"),  # 0.1 vs 0.15: under CLEAR
    ([-1.1, -2.1, -0.6, -3.1], None, "no override"),
    ([-3.0, -4.0, -2.0, -5.0], None, "serves another model"),  # 1.875 nats from the only variant
    ([-3.0, -4.0, -2.0, -5.0], [-2.5, -3.5, -1.9, -4.4], "serves another model"),  # > 1 nat from both
])
def test_the_verdict_needs_one_gap_clearly_below_the_other(asked, unchanged, verdict):
    probe = judge(100, [5, 6, 7, 8], SERVED, asked, [5, 6, 9, 8], unchanged)
    assert probe.verdict == verdict
    assert probe.refuses == (verdict in ("override NOT applied", "serves another model"))
    assert probe.greedy_agree == 2 and probe.tokens == 4 and probe.length == 100
    assert probe.gap == pytest.approx(sum(abs(a - b) for a, b in zip(SERVED, asked, strict=True)) / 4)
    assert probe.gap_max == pytest.approx(max(abs(a - b) for a, b in zip(SERVED, asked, strict=True)))
    fields = probe.fields()
    assert fields["probe_verdict"] == verdict
    assert fields["probe_gap_without_override"] == probe.gap_without_override


def test_clear_is_a_margin_not_a_tie():
    asked = [s - 0.1 for s in SERVED]
    past_margin = [s - 0.1 * CLEAR - 0.01 for s in SERVED]
    assert judge(10, [1] * 4, SERVED, asked, [1] * 4, past_margin).verdict == "override applied"
    assert judge(10, [1] * 4, SERVED, asked, [1] * 4, [s - 0.15 for s in SERVED]).verdict == "inconclusive"


class _Tok:
    """A character-level tokenizer whose BOS (id 1) is `bos` (None: it has none); encoding never adds it."""

    def __init__(self, bos: int | None):
        self.bos_token_id = bos

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [2 + (ord(c) % 50) for c in text]}


@pytest.mark.parametrize("bos", [1, None])
def test_the_probe_prompt_is_exactly_its_length_with_bos_by_the_runs_own_rule(bos):
    ids = probe_ids(_Tok(bos), 300)  # BOS exactly where a task's prompt gets one (corpus.bos_ids)
    assert len(ids) == 300
    assert (ids[0] == 1) == (bos is not None) and 1 not in ids[1:]


def test_the_report_names_the_engine_its_command_and_the_probe_verdict():
    from harness.report.page import served_item

    line = served_item("b=2e5", {"engine": "llama.cpp", "engine_version": "0.3.36",
                                 "serve_command": "srv --x 1", "probe_verdict": "override applied",
                                 "probe_gap": 0.0152, "probe_gap_without_override": 0.0656})
    assert line == ("b=2e5: served by llama.cpp 0.3.36: `srv --x 1`; probe: override applied; mean log-prob "
                    "gap 0.015 nats to the in-process model, 0.066 without the override")
    skipped = served_item("x", {"engine": "server", "server_urls": ["http://h:1"],
                                "probe_verdict": "skipped: --no-probe"})
    assert skipped == "x: served by server: http://h:1; probe: skipped: --no-probe"
