"""Perplexity vs context length: ppl@L, per-position loss, ppl_sliding@L,S and key-token ppl_key@L.

task.py holds the task and its measured-length definitions; key_tokens.py the LongPPL key-token
selection (evaluator contrast, character spans, the run folder's spans cache).
"""

from tasks.perplexity.task import (
    BUCKETS,
    KEY_MEASURE,
    MEASURE,
    MEASURES,
    POSITION_LOSS,
    TASK,
    PerplexityTask,
    Samples,
)

__all__ = ["BUCKETS", "KEY_MEASURE", "MEASURE", "MEASURES", "POSITION_LOSS", "TASK", "PerplexityTask",
           "Samples"]
