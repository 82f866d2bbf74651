"""Parent-side helpers for the rpool tests: /proc scanning, polling waits, release files.

Task functions that run inside workers live in `_tasks.py`; this module only runs in the
test process (and in the small scripts that some reliability tests launch).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Helper processes multiprocessing starts on its own; they are not pool workers.
HELPER_MARKERS = (b"resource_tracker", b"forkserver")


def _read_stat(pid: int) -> tuple[str, int] | None:
    """Return (state, ppid) of `pid` from /proc/PID/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def is_helper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return any(marker in cmdline for marker in HELPER_MARKERS)


def child_processes(parent: int | None = None) -> dict[int, str]:
    """Map pid -> state for every child of `parent` (default: us), zombies included,
    the multiprocessing resource tracker and forkserver excluded."""
    parent = os.getpid() if parent is None else parent
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = _read_stat(pid)
        if stat is None or stat[1] != parent or is_helper(pid):
            continue
        found[pid] = stat[0]
    return found


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (a reparented zombie may never be reaped)."""
    stat = _read_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until it is truthy or `timeout` seconds pass; return its last truth."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def started_pids(started_dir: Path) -> set[int]:
    return {int(p.name) for p in started_dir.iterdir() if p.name.isdigit()}


def wait_started(started_dir: Path, count: int, timeout: float = 30.0) -> set[int]:
    """Wait until `count` distinct workers have entered `_tasks.block_until`."""
    ok = wait_until(lambda: len(started_pids(started_dir)) >= count, timeout)
    assert ok, f"only {len(started_pids(started_dir))} of {count} workers started a blocker"
    return started_pids(started_dir)


def release(path: Path) -> None:
    """Let every `_tasks.block_until(path, ...)` return."""
    path.touch()


def assert_same_values(a: Sequence[object], b: Sequence[object]) -> None:
    """Equal item by item, also in type, with nan == nan and -0.0 told from 0.0."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert type(x) is type(y), (x, y)
        if isinstance(x, float):
            assert isinstance(y, float)
            assert math.copysign(1.0, x) == math.copysign(1.0, y)
            assert (math.isnan(x) and math.isnan(y)) or x == y, (x, y)
        else:
            assert x == y, (x, y)


def run_in_threads(target, count, timeout):
    """Runs ``target(i)`` for i in range(count), each in its own thread, and joins them."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
