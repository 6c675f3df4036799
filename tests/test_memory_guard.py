"""Under a CPU budget the process's memory follows its live tensors: what the planner estimates."""

import subprocess
import sys

import pytest

# a fresh interpreter: glibc's heap holds no free blocks yet that the 8 MiB tensor could reuse
CHECK = """
import sys
from pathlib import Path

import torch

from harness.engine import memory_guard


def rss_kb():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1])


with memory_guard.address_space_limit(8 << 30, "cpu"):
    torch.ones(4 << 20).sum()  # 16 MiB, freed: glibc's default now raises its mmap threshold to 16 MiB
    tensor = torch.ones(2 << 20)  # 8 MiB, every page touched (by default: from the heap, kept on free)
    held = rss_kb()
    del tensor
    print(held - rss_kb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_freed_tensors_leave_the_process_under_a_cpu_budget():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 7 * 1024  # its pages went back to the kernel
