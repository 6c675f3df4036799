"""harness.core.heartbeat: a phase older than AFTER seconds gets a line, then one every EVERY seconds, with
its detail and age; nested phases restore the outer one; the engine reports its layers."""

from __future__ import annotations

import time

from harness.core import heartbeat


def test_a_long_phase_is_said_with_its_detail_and_age_then_every_few_seconds():
    now = time.monotonic()
    with heartbeat.phase("SmolLM2 passkey: L=10240"):
        assert heartbeat.line(now + 1) is None  # young: silent
        heartbeat.detail("layer 12/30")
        assert heartbeat.line(now + heartbeat.AFTER + 1) == \
            f"rope-harness: SmolLM2 passkey: L=10240 [layer 12/30]: {heartbeat.AFTER + 1:.0f} s"
        assert heartbeat.line(now + heartbeat.AFTER + 2) is None  # just said
        assert heartbeat.line(now + heartbeat.AFTER + 2 + heartbeat.EVERY) is not None
        with heartbeat.phase("inner"):
            assert "inner" in heartbeat.line(time.monotonic() + heartbeat.AFTER + 1)
        assert "L=10240" in heartbeat.line(time.monotonic() + 10 * heartbeat.EVERY)
    assert heartbeat.line(time.monotonic() + 100) is None  # no phase: silent


def test_the_engine_names_the_layer_a_long_pass_is_in(tiny_llama, monkeypatch):
    import harness.engine.engine as module
    from harness.model import models

    engine = module.Engine(models.load(str(tiny_llama)))
    seen: list[str] = []
    monkeypatch.setattr(module, "detail", seen.append)
    engine.token_nll(list(range(1, 40)))
    assert seen[-2:] == ["layer 1/2", "layer 2/2"]
