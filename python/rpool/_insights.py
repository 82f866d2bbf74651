"""`pool.stats()` / `executor.stats()`: what the workers are doing, from the native counters.

The native core publishes its counters (queue length, tasks in flight, tasks done, worker
deaths, per-worker tasks and busy time) about every 100 ms; this module adds what only the
parent's Python side knows: how long each worker process has been alive (from
``/proc/PID/stat``), hence its idle time, and the pool's age, hence its throughput.

A "task" is what the core dispatches: one `apply_async`/`submit` call, or one map chunk.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

# Clock ticks per second, the unit of a process's start time in /proc/PID/stat.
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class WorkerStats:
    """One live worker process.

    ``busy_seconds`` counts the compute time of the tasks it finished; ``idle_seconds`` is the
    rest of its life (``alive_seconds - busy_seconds``, including the task it is running now).
    """

    worker_id: int
    pid: int
    tasks_done: int
    busy_seconds: float
    idle_seconds: float
    alive_seconds: float
    in_flight: int

    @property
    def utilisation(self) -> float:
        """Fraction of its life this worker spent computing finished tasks (0.0 to 1.0)."""
        return self.busy_seconds / self.alive_seconds if self.alive_seconds > 0 else 0.0


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool (`Pool.stats()`, `ProcessPoolExecutor.stats()`).

    ``restarts`` counts workers that died abnormally and were replaced; ``throughput`` is
    ``tasks_done / uptime_seconds`` (tasks per second since the pool was created);
    ``shared_payloads`` / ``shared_results`` count task arguments and results large enough to
    travel through shared memory instead of a pipe.
    """

    workers: tuple[WorkerStats, ...]
    queued: int
    in_flight: int
    tasks_done: int
    restarts: int
    uptime_seconds: float
    throughput: float
    shared_payloads: int = 0
    shared_results: int = 0

    def table(self) -> str:
        """The snapshot as a plain-text utilisation table, one row per worker."""
        header = f"{'worker':>6} {'pid':>8} {'tasks':>9} {'busy s':>9} {'idle s':>9} {'util':>6}"
        lines = [header, "-" * len(header)]
        for w in self.workers:
            lines.append(
                f"{w.worker_id:>6} {w.pid:>8} {w.tasks_done:>9} {w.busy_seconds:>9.2f} "
                f"{w.idle_seconds:>9.2f} {w.utilisation:>6.0%}"
            )
        lines.append(
            f"queued {self.queued}, in flight {self.in_flight}, done {self.tasks_done}, "
            f"restarts {self.restarts}, uptime {self.uptime_seconds:.2f} s, "
            f"throughput {self.throughput:.1f} tasks/s"
        )
        return "\n".join(lines)


def _system_uptime() -> float | None:
    try:
        with open("/proc/uptime", "rb") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive_seconds(pid: int, uptime: float | None, fallback: float) -> float:
    """Seconds since `pid` started (``/proc``, 1/CLK_TCK resolution), else `fallback`."""
    if uptime is None or pid <= 0:
        return fallback
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        # Fields after the parenthesised command name start at field 3; starttime is field 22.
        start_ticks = int(data[data.rfind(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return fallback
    return max(0.0, uptime - start_ticks / _CLOCK_TICKS)


def collect(raw: dict[str, Any] | None, created: float) -> PoolStats:
    """Builds a `PoolStats` from ``Core.stats()`` (None: no workers started yet) and the pool's
    creation time (``time.monotonic()``)."""
    age = max(0.0, time.monotonic() - created)
    if raw is None:
        return PoolStats((), 0, 0, 0, 0, age, 0.0)
    uptime = _system_uptime()
    workers = []
    for entry in raw.get("workers", []):
        busy = float(entry["busy_seconds"])
        alive = max(busy, _alive_seconds(int(entry["pid"]), uptime, age))
        workers.append(
            WorkerStats(
                worker_id=int(entry["worker_id"]),
                pid=int(entry["pid"]),
                tasks_done=int(entry["tasks_done"]),
                busy_seconds=busy,
                idle_seconds=alive - busy,
                alive_seconds=alive,
                in_flight=int(entry["in_flight"]),
            )
        )
    workers.sort(key=lambda w: w.worker_id)
    done = int(raw["tasks_done"])
    return PoolStats(
        workers=tuple(workers),
        queued=int(raw["queued"]),
        in_flight=int(raw["in_flight"]),
        tasks_done=done,
        restarts=int(raw["worker_deaths"]),
        uptime_seconds=age,
        throughput=done / age if age > 0 else 0.0,
        shared_payloads=int(raw.get("shared_payloads", 0)),
        shared_results=int(raw.get("shared_results", 0)),
    )
