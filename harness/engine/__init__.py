"""The in-process engine: the memory planner, single / layer-streamed / chunked scoring, its caches and
out-of-memory fallbacks."""
