"""Task functions used by the benchmarks.

They live in an importable module (not in ``__main__``) so that every start method,
including ``spawn`` and ``forkserver``, can find them by name in the workers.
"""

from __future__ import annotations

import os
import time

GATE_ENV = "RPOOL_BENCH_GATE"
_gate_open = False


def inc(x: int) -> int:
    """The trivial task: one integer in, one integer out."""
    return x + 1


def add(a: int, b: int) -> int:
    """Trivial two-argument task for ``starmap``."""
    return a + b


def inc_list(chunk: list[int]) -> list[int]:
    """Process a hand-made chunk: how ``submit``/``apply_async`` users batch by hand."""
    return [x + 1 for x in chunk]


def echo(payload: bytes) -> bytes:
    """Return the argument unchanged (large-payload round trip)."""
    return payload


def spin(n: int) -> int:
    """Pure-Python CPU work; ``n`` iterations (calibrated to ~20 ms by run.py)."""
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1_000_003
    return acc


def gated(x: int) -> int:
    """``inc`` that first waits until the gate file named by ``$RPOOL_BENCH_GATE`` exists.

    Used by the memory workload to keep results pending: the workers block on the first
    tasks they receive, so everything submitted after that stays pending in the parent.
    """
    global _gate_open
    if not _gate_open:
        path = os.environ[GATE_ENV]
        while not os.path.exists(path):
            time.sleep(0.002)
        _gate_open = True
    return x + 1
