"""Out-of-memory is a recorded cell outcome, not a crash: recognise it, cap CPU memory, free GPU memory."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Iterator


@functools.cache
def available_at_start() -> int:
    """Bytes of memory available to this process when first asked (the run plan asks before any model
    loads): MemAvailable of /proc/meminfo (free + reclaimable), else free physical pages."""
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


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
    ones it underestimates. Only the soft limit is lowered, and it is restored afterwards. Freed tensors
    leave the address space from then on (`return_freed_tensors`), so the cap counts live tensors, which
    is what the planner estimates.
    """
    import resource

    if max_memory is None or not device.startswith("cpu") or not hasattr(resource, "RLIMIT_AS"):
        yield
        return
    return_freed_tensors()
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


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_freed_tensors() -> None:
    """Make this process's memory follow its live CPU tensors: glibc gives back the pages of blocks freed
    so far, and from now on serves every allocation of 64 KiB or more that its free blocks cannot with its
    own mapping, unmapped when freed. By default glibc raises that threshold after the first large frees
    and grows its heap for later tensors, keeping their pages when they are freed: benchmarks/memory.py saw
    RSS up to 0.19 GiB (13%) above the live peak of a pass. For the rest of the process; a no-op without
    glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 16)
    libc.malloc_trim(0)


def free_accelerator_memory() -> None:
    """After a CUDA OOM the caching allocator still holds the failed pass's blocks: release them."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
