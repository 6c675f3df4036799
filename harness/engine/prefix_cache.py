"""The engine's one-entry prefix cache (only `harness.engine.engine` uses it).

A one-row generation prompt's KV cache is kept until the next verb; a next prompt that starts with the same
tokens takes it, cropped to them, and is prefilled only past them. Cells run length -> depth -> key, so a
passkey grid's keys at one depth share everything before the needle. The prefill on top of the cache is a
chunked prefill with its boundary at the shared length: exact to float rounding, like any chunked prefill.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_SHARED_PREFIX = 64  # tokens: a shorter prefix shared with the last prompt is recomputed, not reused
# a prefill on top of a cache runs masked attention, slower per token than a causal pass on CPU: below half
# the prompt a reuse saves little or loses (benchmarks/speed.py, prefix-reuse rows)
MIN_SHARED_FRACTION = 0.5


def croppable(cache) -> bool:
    """Every layer holds every position's K/V, so a crop restores the cache of a prefix exactly (not a
    sliding window's ring or a recurrent state)."""
    return not any(cache.is_sliding) and not any(getattr(cache, "is_linear", ()))


@dataclass
class PrefixCache:
    enabled: bool = True
    ids: list[int] = field(default_factory=list)  # the prompt whose K/V `cache` holds in its first positions
    cache: object = None  # later positions (a teacher-forced answer, greedy tokens) are cropped before reuse
    rope_length: int = 0  # length-dependent RoPE was fixed at this length

    def clear(self) -> None:
        self.ids, self.cache = [], None

    def keep(self, rows: list[list[int]], cache, rope_length: int) -> None:
        """Hold `cache` of a one-row prompt (`rows` = [ids]) for the next prompt, where a crop restores it."""
        if self.enabled and len(rows) == 1 and croppable(cache):
            self.ids, self.cache, self.rope_length = rows[0], cache, rope_length

    def take(self, rows: list[list[int]], same_length_only: bool) -> tuple[int, object]:
        """(tokens a one-row prompt (`rows` = [ids]) shares with the kept one, the kept cache cropped to
        them) when at least MIN_SHARED_PREFIX and half of ids are shared (the last token always runs: its
        logits are needed), else (0, None). The kept cache is released either way. `same_length_only`: RoPE
        depends on the length, so only a prompt of the kept one's length may reuse it."""
        kept, cache = self.ids, self.cache
        self.clear()
        ids = rows[0]
        if cache is None or len(rows) != 1 or (same_length_only and self.rope_length != len(ids)):
            return 0, None
        shared = 0
        for a, b in zip(kept, ids[:-1], strict=False):
            if a != b:
                break
            shared += 1
        if shared < max(MIN_SHARED_PREFIX, MIN_SHARED_FRACTION * len(ids)):
            return 0, None
        cache.crop(shared - cache.get_seq_length())
        return shared, cache
