"""Cost of ``progress=`` on many tiny tasks: rpool ``Pool.map`` with and without it.

    python benches/progress_overhead.py               # 1,000,000 tasks, 2 workers, 5 rounds
    python benches/progress_overhead.py --tasks 200000 --rounds 3
    python benches/progress_overhead.py --chunksize 1000    # 1,000 progress updates per map

Runs the same map (``inc`` over ``range(tasks)``, automatic chunk size) with progress off, with
a no-op callback and with a tqdm bar writing to /dev/null, interleaved round by round; prints
the median time of each and the overhead against "off". Progress is updated once per finished
chunk in the notifier thread, so the overhead should stay within run-to-run noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rpool  # noqa: E402
from _bench_tasks import inc  # noqa: E402


def _noop(done: int, total: int | None) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunksize", type=int, default=None, help="default: automatic")
    args = parser.parse_args()
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed at the end
    modes: dict[str, Any] = {"off": lambda: None, "callback": lambda: _noop}
    if tqdm is not None:
        modes["tqdm"] = lambda: tqdm(file=devnull, mininterval=0.1)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    expected = args.tasks * (args.tasks + 1) // 2
    with rpool.Pool(args.workers) as pool:
        pool.map(inc, range(10_000))  # warm up the workers
        for _ in range(args.rounds):
            for mode, make in modes.items():
                progress = make()
                start = time.perf_counter()
                out = pool.map(inc, range(args.tasks), args.chunksize, progress=progress)
                times[mode].append(time.perf_counter() - start)
                if progress is not None and hasattr(progress, "close"):
                    progress.close()
                assert sum(out) == expected
    devnull.close()
    base = statistics.median(times["off"])
    chunks = "automatic" if args.chunksize is None else args.chunksize
    print(
        f"Pool.map(inc, range({args.tasks:,}), chunksize={chunks}), "
        f"{args.workers} workers, {args.rounds} rounds"
    )
    print(f"{'progress':<10} {'median s':>9} {'overhead':>9}")
    for mode, values in times.items():
        median = statistics.median(values)
        print(f"{mode:<10} {median:>9.3f} {100 * (median / base - 1):>+8.1f}%")


if __name__ == "__main__":
    main()
