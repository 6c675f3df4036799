"""Multi-rank runs: which rank am I, which cells are mine, and the one barrier at the end."""

from __future__ import annotations

import os

from tasks.base import Cell


def rank_and_world() -> tuple[int, int]:
    """torchrun / accelerate launch export RANK and WORLD_SIZE: ranks split the cells."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed() -> bool:
    """Under torchrun / accelerate launch (WORLD_SIZE > 1 with a rendezvous), join a gloo group.

    Cells are split by rank without any communication; the group only provides the final barrier
    so rank 0 reports once every shard is complete.
    """
    _, world = rank_and_world()
    if world <= 1 or "MASTER_ADDR" not in os.environ:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return True


def any_rank_failed(exit_code: int) -> bool:
    """After init_distributed: wait until every rank's shard is complete; True if any rank had failed
    cells. Leaves the group: a gloo group still alive at interpreter exit can abort the process."""
    import torch
    import torch.distributed as dist

    failed = torch.tensor([exit_code])
    dist.all_reduce(failed)
    dist.barrier()
    dist.destroy_process_group()
    return bool(failed.item())


def is_rank_zero() -> bool:
    return rank_and_world()[0] == 0


def shard_cells(cells: list[Cell], world: int, offset: int) -> dict[Cell, int]:
    """Rank of each cell: units of (sample, depth) dealt round-robin, so a sample's lengths stay on one
    rank (perplexity scores them in one pass) and ranks get equal shares; `offset` (the setting's
    index) rotates the deal so uneven remainders do not all land on rank 0."""
    units = sorted({(c.sample, -1.0 if c.depth is None else c.depth) for c in cells})
    index = {unit: i for i, unit in enumerate(units)}
    return {c: (index[(c.sample, -1.0 if c.depth is None else c.depth)] + offset) % world for c in cells}
