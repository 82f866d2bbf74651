"""rpool.dask against Dask's own `client.map` and the local rpool pool, in the same run.

    python benches/dask_bench.py                    # 100k tiny items, 3 repetitions
    python benches/dask_bench.py --items 20000 --reps 5

Starts a `distributed.LocalCluster` with 2 worker processes of 1 thread each (the local pool
gets 2 workers too), warms every contender up once, then times ``map(inc, range(items))``
round-robin, so drift hits all contenders alike. Reports the median of the repetitions and
checks every result. Needs ``pip install "rpool[dask]"``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKERS = 2

# Dask workers are separate (spawned) processes: they find the task module by name.
sys.path.insert(0, str(HERE))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
)

import _bench_tasks  # noqa: E402


def _contenders(
    client: Any, local_pool: Any, dask_pool: Any, dask_executor: Any
) -> dict[str, tuple[str, Callable[[list[int]], list[int]]]]:
    """name -> (how many Dask tasks it sends, function mapping `inc` over the items)."""

    def dask_client_map(items: list[int]) -> list[int]:
        return list(client.gather(client.map(_bench_tasks.inc, items, pure=False)))

    def rpool_dask_pool(items: list[int]) -> list[int]:
        return list(dask_pool.map(_bench_tasks.inc, items))

    def rpool_dask_executor(items: list[int]) -> list[int]:
        return list(dask_executor.map(_bench_tasks.inc, items))

    def rpool_local(items: list[int]) -> list[int]:
        return list(local_pool.map(_bench_tasks.inc, items))

    return {
        "Dask `client.map` + `gather`": ("one per item", dask_client_map),
        "`rpool.dask.Pool.map`": ("one per chunk", rpool_dask_pool),
        "`rpool.dask.ProcessPoolExecutor.map`": ("one per chunk", rpool_dask_executor),
        "`rpool.Pool.map` (local, 2 processes)": ("none", rpool_local),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="items per map")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions")
    args = parser.parse_args()

    import distributed
    import rpool
    import rpool.dask

    items = list(range(args.items))
    expected = [x + 1 for x in items]
    warmup = items[: min(len(items), 2_000)]
    with (
        distributed.LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
        rpool.Pool(WORKERS) as local_pool,
        rpool.dask.Pool(client=client) as dask_pool,
        rpool.dask.ProcessPoolExecutor(client=client) as dask_executor,
    ):
        client.wait_for_workers(WORKERS)
        contenders = _contenders(client, local_pool, dask_pool, dask_executor)
        for _, run in contenders.values():
            assert run(warmup) == [x + 1 for x in warmup]
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.reps):
            for name, (_, run) in contenders.items():
                start = time.perf_counter()
                result = run(items)
                times[name].append(time.perf_counter() - start)
                assert result == expected, f"{name} returned a wrong result"

    baseline = statistics.median(times["Dask `client.map` + `gather`"])
    print(
        f"`map(inc, range({args.items:_}))`, 2 workers x 1 thread, median of {args.reps}; "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs\n"
    )
    print("| contender | Dask tasks | seconds | items/s | speed-up vs `client.map` |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, (tasks, _) in contenders.items():
        seconds = statistics.median(times[name])
        print(
            f"| {name} | {tasks} | {seconds:.3f} | {args.items / seconds:,.0f} "
            f"| {baseline / seconds:.1f}x |"
        )


if __name__ == "__main__":
    main()
