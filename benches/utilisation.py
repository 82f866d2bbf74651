"""Worker utilisation table from ``pool.stats()`` for a few workload shapes.

    python benches/utilisation.py

For each workload (uniform CPU tasks, skewed task lengths, many tiny tasks) runs a map on a
fresh 2-worker pool and prints ``PoolStats.table()``: per worker its pid, tasks (a map chunk
counts as one), busy and idle seconds and utilisation, then queue, restarts and throughput.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rpool  # noqa: E402
from _bench_tasks import inc, spin  # noqa: E402

# Native counters are published every ~0.1 s (and after the core's idle poll): wait for them.
SETTLE_SECONDS = 0.7

WORKLOADS = {
    "uniform: 64 x spin(200k), chunksize 1": (spin, [200_000] * 64, 1),
    "skewed: spin(20k..1.3M), chunksize 1": (spin, [20_000 * (1 + i % 64) for i in range(64)], 1),
    "tiny: 200k x inc, automatic chunks": (inc, list(range(200_000)), None),
}


def main() -> None:
    for title, (func, items, chunksize) in WORKLOADS.items():
        with rpool.Pool(2) as pool:
            start = time.perf_counter()
            pool.map(func, items, chunksize=chunksize)
            elapsed = time.perf_counter() - start
            time.sleep(SETTLE_SECONDS)
            print(f"== {title} (map took {elapsed:.2f} s)")
            print(pool.stats().table())
            print()


if __name__ == "__main__":
    main()
