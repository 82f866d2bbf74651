"""How large a pool makes its task and result pipes (python/rpool/_runtime.py, `pipe_bytes`).

What must hold: small pools get 1 MiB pipes (large payloads cross in few writes); a large pool
keeps all its pipes within a fixed budget, because the kernel counts pipe buffers per user and,
past 64 MiB, gives every new pipe of that user (in any program) 8 KiB.
"""

from __future__ import annotations

import fcntl
import os
import stat

import _tasks
import pytest
import rpool
from rpool import _runtime

MIB = 1 << 20


@pytest.mark.parametrize(
    ("processes", "expected"),
    [
        (1, MIB),
        (2, MIB),
        (8, MIB),
        (9, 512 << 10),
        (16, 512 << 10),
        (64, 128 << 10),
        (128, 64 << 10),
        (10_000, 64 << 10),
    ],
)
def test_pipe_sizes_stay_within_the_pool_budget(processes: int, expected: int) -> None:
    size = _runtime.pipe_bytes(processes)
    assert size == expected
    assert size & (size - 1) == 0
    assert 2 * processes * size <= _runtime.PIPE_BUDGET_BYTES or size == (64 << 10)


def pipe_sizes() -> list[int]:
    """F_GETPIPE_SZ of every pipe this process holds."""
    sizes = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISFIFO(os.fstat(int(name)).st_mode):
                sizes.append(fcntl.fcntl(int(name), fcntl.F_GETPIPE_SZ))
        except OSError:
            pass  # the directory's own descriptor, closed meanwhile
    return sizes


@pytest.mark.timeout(60)
def test_a_pool_sizes_its_pipes_by_its_worker_count() -> None:
    with rpool.Pool(2) as small:
        assert small.map(_tasks.square, range(4)) == [0, 1, 4, 9]
        assert pipe_sizes().count(MIB) >= 4  # the two workers' task and result pipes
    with rpool.Pool(12) as large:
        assert large.map(_tasks.square, range(24)) == [x * x for x in range(24)]
        sizes = pipe_sizes()
        assert sizes.count(512 << 10) >= 24
        assert MIB not in sizes
