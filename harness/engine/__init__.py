"""The in-process engine: the memory planner, single / layer-streamed / chunked scoring, its caches and
out-of-memory fallbacks."""

STRATEGIES = ("auto", "single", "stream", "prefill")  # how a sequence is scored (harness.engine.planner)
