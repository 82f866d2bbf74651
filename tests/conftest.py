"""Shared pytest setup for rpool: task import path, start-method fixtures, leak check.

- `_tasks` must be importable in spawned workers, which re-import a task's module by name,
  so the tests directory goes on sys.path here and on PYTHONPATH for every child process.
- `start_method`/`ctx` run a test under "fork" and "spawn".
- An autouse fixture fails a test that leaves child processes behind (zombies included),
  then kills and reaps them so one failure does not cascade into the next test.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
_pythonpath = os.environ.get("PYTHONPATH", "")
if TESTS_DIR not in _pythonpath.split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS_DIR, _pythonpath) if p)

from _helpers import child_processes  # noqa: E402

START_METHODS = ["fork", "spawn"]

# How long a pool gets, after a test, to finish reaping its workers.
REAP_GRACE_SECONDS = 3.0


@pytest.fixture(params=START_METHODS, ids=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def ctx(start_method: str) -> multiprocessing.context.BaseContext:
    return multiprocessing.get_context(start_method)


def _describe(pids: dict[int, str]) -> str:
    parts = []
    for pid, state in sorted(pids.items()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        parts.append(f"pid {pid} state {state} cmd {cmd[:120]!r}")
    return "; ".join(parts)


def _kill_and_reap(pids: dict[int, str]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5.0
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid  # somebody else reaped it
            if done:
                pending.discard(pid)
        if pending:
            time.sleep(0.02)


@pytest.fixture(autouse=True)
def no_leftover_children():
    yield
    deadline = time.monotonic() + REAP_GRACE_SECONDS
    left = child_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = child_processes()
    if left:
        description = _describe(left)
        _kill_and_reap(left)
        pytest.fail(f"test left child processes behind: {description}", pytrace=False)
