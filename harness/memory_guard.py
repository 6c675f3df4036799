"""Out-of-memory is a recorded cell outcome, not a crash: recognise it, cap CPU memory, free GPU memory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def is_oom(exc: BaseException) -> bool:
    """CUDA, CPU-allocator and address-space-cap failures all count as out-of-memory."""
    import torch

    text = str(exc).lower()
    return (isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in text
            or "can't allocate memory" in text or "cannot allocate memory" in text)


@contextlib.contextmanager
def address_space_limit(max_memory: int | None, device: str) -> Iterator[None]:
    """On CPU, cap this process's address space at its current size + `max_memory`.

    CPU out-of-memory is a kernel kill, not an exception; under this cap an allocation past the budget
    fails loudly instead (torch raises "can't allocate memory"), so the cell is recorded as oom and the
    run goes on. The planner's estimate already refuses cells it expects not to fit; this catches the
    ones it underestimates. Only the soft limit is lowered, and it is restored afterwards.
    """
    import resource

    if max_memory is None or not device.startswith("cpu") or not hasattr(resource, "RLIMIT_AS"):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as handle:
        current = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = current + max_memory
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def free_accelerator_memory() -> None:
    """After a CUDA OOM the caching allocator still holds the failed pass's blocks: release them."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
