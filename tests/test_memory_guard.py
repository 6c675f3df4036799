"""Under a CPU budget the process's memory follows its live tensors: what the planner estimates."""

import sys
from pathlib import Path

import pytest
import torch

from harness import memory_guard


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_freed_tensors_leave_the_process_under_a_cpu_budget():
    with memory_guard.address_space_limit(8 << 30, "cpu"):
        # glibc's default would now raise its mmap threshold to 16 MiB and keep the 8 MiB tensor in its heap
        torch.ones(4 << 20).sum()  # 16 MiB, freed
        tensor = torch.ones(2 << 20)  # 8 MiB, every page touched
        held = rss_kb()
        del tensor
        assert held - rss_kb() >= 7 * 1024  # its pages went back to the kernel
