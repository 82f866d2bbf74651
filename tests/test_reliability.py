"""What rpool promises beyond the stdlib when things go wrong.

Dead workers (SIGKILL, os._exit) fail only their task with rpool.WorkerLostError and are
replaced; `retries=` re-runs such tasks; per-task timeouts; prompt terminate; endless
imap input; a dropped pool; a pool used in a forked child; a SIGKILLed parent; Ctrl+C.
Every wait is bounded, and the "within N seconds" limits are generous upper bounds on
behaviour that would otherwise hang.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import wait
from concurrent.futures.process import BrokenProcessPool

import _tasks
import pytest
import rpool
from _helpers import child_processes, pid_alive, release, wait_started, wait_until

GET_TIMEOUT = 30
# A lost worker or an overrun task must be reported within this many seconds.
PROMPT = 10


def _check_lost(err: rpool.WorkerLostError, exitcode: int) -> None:
    assert isinstance(err, BrokenProcessPool)
    assert err.exitcode == exitcode
    assert isinstance(err.pid, int) and err.pid > 0
    message = str(err)
    assert str(err.pid) in message, message
    if exitcode < 0:
        assert re.search(rf"SIGKILL|signal {-exitcode}\b", message), message
    else:
        assert re.search(rf"\b{exitcode}\b", message), message


# --- dead workers: Pool ------------------------------------------------------------------


def test_sigkilled_worker_fails_only_its_task(ctx, tmp_path):
    gate = tmp_path / "release"
    started = tmp_path / "started"
    started.mkdir()
    with rpool.Pool(2, initializer=_tasks.record_init, initargs=("tag",), context=ctx) as pool:
        doomed = pool.apply_async(_tasks.kill_self, (signal.SIGKILL,))
        others = [pool.apply_async(_tasks.square, (i,)) for i in range(20)]
        start = time.monotonic()
        with pytest.raises(rpool.WorkerLostError) as info:
            doomed.get(timeout=GET_TIMEOUT)
        assert time.monotonic() - start < PROMPT
        _check_lost(info.value, -signal.SIGKILL)
        assert info.value.pid != os.getpid()
        assert wait_until(lambda: not pid_alive(info.value.pid), PROMPT)
        assert [r.get(timeout=GET_TIMEOUT) for r in others] == [i * i for i in range(20)]

        # Still serving, with two live workers; the replacement ran the initializer.
        assert pool.map(_tasks.square, range(10)) == [i * i for i in range(10)]
        blockers = [
            pool.apply_async(_tasks.block_until, (str(gate), str(started))) for _ in range(2)
        ]
        pids = wait_started(started, 2)
        release(gate)
        states = [b.get(timeout=GET_TIMEOUT) for b in blockers]
        assert info.value.pid not in pids
        assert {pid for pid, _, _ in states} == pids
        assert all(value == "tag" and count == 1 for _, value, count in states)


def test_os_exit_in_task_is_worker_lost_with_exitcode(ctx):
    with rpool.Pool(2, context=ctx) as pool:
        doomed = pool.apply_async(_tasks.os_exit, (3,))
        with pytest.raises(rpool.WorkerLostError) as info:
            doomed.get(timeout=GET_TIMEOUT)
        _check_lost(info.value, 3)
        assert pool.apply_async(_tasks.square, (6,)).get(timeout=GET_TIMEOUT) == 36


def test_worker_death_inside_map_fails_the_map_only(ctx):
    with rpool.Pool(2, context=ctx) as pool:
        with pytest.raises(rpool.WorkerLostError):
            pool.map_async(_tasks.os_exit, [5], chunksize=1).get(timeout=GET_TIMEOUT)
        assert pool.map(_tasks.square, range(30)) == [i * i for i in range(30)]


@pytest.mark.parametrize("kind", ["sigkill", "os_exit"])
def test_retries_rerun_a_task_lost_to_worker_death(ctx, tmp_path, kind):
    marker = str(tmp_path / "attempted")
    task, args = (
        (_tasks.kill_self_once, (marker, signal.SIGKILL))
        if kind == "sigkill"
        else (_tasks.exit_once, (marker, 3))
    )
    with rpool.Pool(2, context=ctx, retries=1) as pool:
        assert pool.apply_async(task, args).get(timeout=GET_TIMEOUT) == "survived"
        assert os.path.exists(marker)  # the first attempt really died


def test_retries_are_bounded(ctx):
    with rpool.Pool(2, context=ctx, retries=1) as pool:
        with pytest.raises(rpool.WorkerLostError):
            pool.apply_async(_tasks.os_exit, (4,)).get(timeout=GET_TIMEOUT)
        assert pool.apply(_tasks.square, (2,)) == 4


# --- dead workers: executor --------------------------------------------------------------


def test_executor_sigkilled_worker(ctx):
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        doomed = ex.submit(_tasks.kill_self, signal.SIGKILL)
        others = [ex.submit(_tasks.square, i) for i in range(20)]
        with pytest.raises(rpool.WorkerLostError) as info:
            doomed.result(timeout=GET_TIMEOUT)
        _check_lost(info.value, -signal.SIGKILL)
        assert isinstance(doomed.exception(timeout=0), BrokenProcessPool)
        assert [f.result(timeout=GET_TIMEOUT) for f in others] == [i * i for i in range(20)]
        # Deliberate difference from the stdlib: the executor is not broken.
        assert ex.submit(_tasks.square, 3).result(timeout=GET_TIMEOUT) == 9
        assert list(ex.map(_tasks.square, range(5), timeout=GET_TIMEOUT)) == [0, 1, 4, 9, 16]


def test_executor_os_exit(ctx):
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        with pytest.raises(rpool.WorkerLostError) as info:
            ex.submit(_tasks.os_exit, 3).result(timeout=GET_TIMEOUT)
        _check_lost(info.value, 3)
        assert ex.submit(_tasks.square, 4).result(timeout=GET_TIMEOUT) == 16


def test_executor_retries(ctx, tmp_path):
    marker = str(tmp_path / "attempted")
    with rpool.ProcessPoolExecutor(2, mp_context=ctx, retries=1) as ex:
        future = ex.submit(_tasks.kill_self_once, marker, signal.SIGKILL)
        assert future.result(timeout=GET_TIMEOUT) == "survived"
    assert os.path.exists(marker)


# --- per-task timeouts -------------------------------------------------------------------


def test_apply_async_timeout(ctx):
    with rpool.Pool(2, context=ctx) as pool:
        slow = pool.apply_async(time.sleep, (30,), timeout=0.5)
        quick = pool.apply_async(_tasks.square, (4,))
        start = time.monotonic()
        with pytest.raises(rpool.TaskTimeoutError) as info:
            slow.get(timeout=GET_TIMEOUT)
        assert time.monotonic() - start < PROMPT
        assert isinstance(info.value, multiprocessing.TimeoutError)
        assert isinstance(info.value, TimeoutError)
        assert quick.get(timeout=GET_TIMEOUT) == 16
        assert pool.map(_tasks.square, range(10)) == [i * i for i in range(10)]


def test_apply_timeout_not_hit(ctx):
    with rpool.Pool(2, context=ctx) as pool:
        assert pool.apply(_tasks.sleep_and_return, (0.05, "ok"), timeout=20) == "ok"
        with pytest.raises(rpool.TaskTimeoutError):
            pool.apply(time.sleep, (30,), timeout=0.5)


def test_map_task_timeout(ctx):
    with rpool.Pool(2, context=ctx) as pool:
        with pytest.raises(rpool.TaskTimeoutError):
            pool.map(time.sleep, [0, 30], task_timeout=0.5, chunksize=1)
        assert pool.map(_tasks.square, range(8), task_timeout=20) == [i * i for i in range(8)]
        with pytest.raises(rpool.TaskTimeoutError):
            list(pool.imap(time.sleep, [30], task_timeout=0.5))
        with pytest.raises(rpool.TaskTimeoutError):
            pool.starmap_async(_tasks.sleep_and_return, [(30, 1)], task_timeout=0.5).get(
                timeout=GET_TIMEOUT
            )
        assert pool.apply(_tasks.square, (3,)) == 9


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_submit_with_rejects_a_bad_timeout(bad):
    # Said as such (it was once reported as "cannot schedule new futures after shutdown").
    with rpool.ProcessPoolExecutor(2) as ex:
        with pytest.raises(ValueError, match="positive number of seconds"):
            ex.submit_with(_tasks.add, (1, 2), timeout=bad)
        assert ex.submit_with(_tasks.add, (1, 2), timeout=5).result(timeout=30) == 3


def test_submit_with_timeout(ctx):
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        slow = ex.submit_with(time.sleep, args=(30,), timeout=0.5)
        quick = ex.submit(_tasks.square, 5)
        with pytest.raises(rpool.TaskTimeoutError):
            slow.result(timeout=GET_TIMEOUT)
        assert quick.result(timeout=GET_TIMEOUT) == 25
        plain = ex.submit_with(_tasks.add, args=(1,), kwargs={"b": 2})
        assert plain.result(timeout=GET_TIMEOUT) == 3
        assert ex.submit(_tasks.square, 6).result(timeout=GET_TIMEOUT) == 36


# --- shutdown paths ----------------------------------------------------------------------


def test_terminate_with_running_tasks_is_prompt(ctx, tmp_path):
    gate = tmp_path / "release"
    started = tmp_path / "started"
    started.mkdir()
    pool = rpool.Pool(2, context=ctx)
    try:
        for _ in range(4):
            pool.apply_async(_tasks.block_until, (str(gate), str(started), 60))
        pids = wait_started(started, 2)
        start = time.monotonic()
        pool.terminate()
        pool.join()
        assert time.monotonic() - start < PROMPT
        assert child_processes() == {}
        assert not any(pid_alive(pid) for pid in pids)
    finally:
        release(gate)
        pool.terminate()
        pool.join()


def test_executor_shutdown_after_worker_loss(ctx):
    ex = rpool.ProcessPoolExecutor(2, mp_context=ctx)
    try:
        futures = [ex.submit(_tasks.os_exit, 2), *(ex.submit(_tasks.square, i) for i in range(5))]
        done, not_done = wait(futures, timeout=GET_TIMEOUT)
        assert not not_done
    finally:
        ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_imap_endless_input(ctx):
    with rpool.Pool(2, context=ctx) as pool:
        first = list(itertools.islice(pool.imap(_tasks.square, itertools.count()), 1000))
        assert first == [i * i for i in range(1000)]
        some = list(itertools.islice(pool.imap_unordered(_tasks.square, itertools.count()), 500))
        assert len(set(some)) == 500


def test_dropped_pool_warns_and_leaves_no_children(ctx):
    pool = rpool.Pool(2, context=ctx)
    assert pool.apply(_tasks.square, (3,)) == 9
    with pytest.warns(ResourceWarning):
        del pool
        gc.collect()
    assert wait_until(lambda: not child_processes(), PROMPT), child_processes()


def test_pool_in_forked_child_fails_fast(ctx):
    with rpool.Pool(2, context=ctx) as pool:
        assert pool.apply(_tasks.square, (2,)) == 4
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: report what pool.apply does, never return into pytest
            try:
                os.close(read_end)
                try:
                    outcome = f"ok:{pool.apply(_tasks.square, (3,))!r}"
                except BaseException as exc:
                    outcome = f"error:{type(exc).__name__}:{exc}"
                os.write(write_end, outcome.encode()[:4000])
            finally:
                os._exit(0)
        os.close(write_end)
        outcome = None
        try:
            readable, _, _ = select.select([read_end], [], [], PROMPT)
            if readable:
                outcome = os.read(read_end, 8192).decode(errors="replace")
        finally:
            os.close(read_end)
            if outcome is None:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert outcome is not None, "pool.apply in a forked child hung"
        assert outcome.startswith("error:"), outcome
        assert re.search(r"fork|process|pid", outcome, re.IGNORECASE), outcome
        # The parent's pool is unaffected.
        assert pool.apply(_tasks.square, (4,)) == 16


# --- the parent goes away ----------------------------------------------------------------

PARENT_SCRIPT = textwrap.dedent(
    """
    import multiprocessing
    import sys
    import time

    import _tasks
    import rpool

    if __name__ == "__main__":
        method, gate, started, mode = sys.argv[1:5]
        ctx = multiprocessing.get_context(method)
        if mode == "sleep":
            pool = rpool.Pool(2, context=ctx)
            for _ in range(2):
                pool.apply_async(_tasks.block_until, (gate, started))
            time.sleep(60)
        else:
            with rpool.Pool(2, context=ctx) as pool:
                pool.map(_tasks.block_on, [(gate, started)] * 4, chunksize=1)
    """
)


def _launch(tmp_path, start_method, mode):
    gate = tmp_path / "release"
    started = tmp_path / "started"
    started.mkdir()
    script = tmp_path / "parent_script.py"
    script.write_text(PARENT_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), start_method, str(gate), str(started), mode],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    return proc, gate, started


def _cleanup(proc, gate, pids):
    release(gate)
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=GET_TIMEOUT)
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_workers_ignore_sigint_and_python_knows_it(ctx):
    # Ctrl+C reaches the whole process group; only the parent reacts. Python's own record of
    # the handler must agree with the process's (tasks that save and restore it rely on it).
    with rpool.Pool(2, context=ctx) as pool:
        assert pool.apply(_tasks.sigint_handler) == signal.SIG_IGN
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as executor:
        assert executor.submit(_tasks.sigint_handler).result(timeout=GET_TIMEOUT) == signal.SIG_IGN


def test_programs_started_by_tasks_do_not_inherit_the_worker_pipes(ctx):
    with rpool.Pool(1, context=ctx) as pool:
        assert pool.apply(_tasks.pipes_leaked_to_programs) == []


@pytest.mark.timeout(90)
def test_workers_exit_when_parent_is_sigkilled(tmp_path, start_method):
    proc, gate, started = _launch(tmp_path, start_method, "sleep")
    pids = set()
    try:
        pids = wait_started(started, 2)
        proc.kill()
        proc.wait(timeout=GET_TIMEOUT)
        # The workers are busy in a task; they must still notice (2 s + slack).
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), 3.0), [
            p for p in pids if pid_alive(p)
        ]
    finally:
        _cleanup(proc, gate, pids)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("target", ["process_group", "main_only"])
def test_ctrl_c_in_map(tmp_path, start_method, target):
    proc, gate, started = _launch(tmp_path, start_method, "map")
    pids = set()
    try:
        pids = wait_started(started, 2)
        time.sleep(0.2)  # let the main thread settle into its wait inside map()
        start = time.monotonic()
        if target == "process_group":  # what a terminal's Ctrl+C does
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=GET_TIMEOUT)
        elapsed = time.monotonic() - start
        assert elapsed < 3.0, f"took {elapsed:.1f} s to exit after SIGINT"
        assert proc.returncode == -signal.SIGINT, (proc.returncode, stderr)
        assert stderr.count("Traceback (most recent call last)") == 1, stderr
        kbd_lines = [line for line in stderr.splitlines() if "KeyboardInterrupt" in line]
        assert len(kbd_lines) == 1, stderr
        assert stderr.rstrip().splitlines()[-1].startswith("KeyboardInterrupt"), stderr
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), 3.0), [
            p for p in pids if pid_alive(p)
        ]
    finally:
        _cleanup(proc, gate, pids)


def test_ctrl_c_while_a_result_is_unpickled_keeps_the_result(ctx, tmp_path):
    # Ctrl+C arriving while get() unpickles the result says nothing about the result: the
    # KeyboardInterrupt propagates, and the next get() still finds the value (before, the
    # interrupt was taken for an unpicklable result and became the task's failure).
    marker = tmp_path / "interrupt"
    marker.touch()
    with rpool.Pool(2, context=ctx) as pool:
        result = pool.apply_async(_tasks.interrupt_once_on_load, (42, str(marker)))
        with pytest.raises(KeyboardInterrupt):
            result.get(timeout=GET_TIMEOUT)
        assert result.get(timeout=GET_TIMEOUT) == 42
        assert result.successful()
