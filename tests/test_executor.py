"""rpool.ProcessPoolExecutor: the concurrent.futures.ProcessPoolExecutor contract.

Futures are real concurrent.futures.Future objects (as_completed, wait, asyncio), map
ordering/timeout/chunksize/buffersize, cancellation, shutdown, remote tracebacks, broken
pools from failing initializers, max_tasks_per_child, and terminate/kill of workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import errno
import itertools
import multiprocessing
import threading
import time
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    as_completed,
    wait,
)
from concurrent.futures.process import BrokenProcessPool

import _tasks
import pytest
import rpool
from _helpers import pid_alive, release, run_in_threads, wait_started, wait_until

RESULT_TIMEOUT = 30
MANY = 2000


@pytest.fixture
def executor(ctx):
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        yield ex


def test_is_an_executor():
    assert issubclass(rpool.ProcessPoolExecutor, concurrent.futures.Executor)


def test_submit_returns_future(executor):
    future = executor.submit(_tasks.add, 2, b=5)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=RESULT_TIMEOUT) == 7
    assert future.done() and not future.cancelled()
    assert future.exception(timeout=RESULT_TIMEOUT) is None


def test_as_completed_many(executor):
    futures = [executor.submit(_tasks.square, i) for i in range(MANY)]
    seen = [f.result(timeout=0) for f in as_completed(futures, timeout=RESULT_TIMEOUT * 2)]
    assert sorted(seen) == [i * i for i in range(MANY)]


def test_wait_all_completed_many(executor):
    futures = [executor.submit(_tasks.square, i) for i in range(MANY)]
    done, not_done = wait(futures, timeout=RESULT_TIMEOUT * 2, return_when=ALL_COMPLETED)
    assert not not_done
    assert len(done) == MANY
    assert [f.result(timeout=0) for f in futures] == [i * i for i in range(MANY)]


def test_wait_first_completed_many(executor, tmp_path):
    gate = tmp_path / "release"
    blocker = executor.submit(_tasks.block_until, str(gate))
    futures = [executor.submit(_tasks.square, i) for i in range(MANY)]
    done, not_done = wait([blocker, *futures], timeout=RESULT_TIMEOUT, return_when=FIRST_COMPLETED)
    assert done
    assert blocker in not_done
    assert all(f.done() for f in done)
    release(gate)
    done, not_done = wait([blocker, *futures], timeout=RESULT_TIMEOUT * 2)
    assert not not_done
    assert blocker.result(timeout=0)[0] > 0


def test_wait_first_exception_many(executor, tmp_path):
    gate = tmp_path / "release"
    blocker = executor.submit(_tasks.block_until, str(gate))
    futures = [executor.submit(_tasks.square, i) for i in range(MANY // 2)]
    failing = executor.submit(_tasks.raise_value_error, "first")
    futures += [executor.submit(_tasks.square, i) for i in range(MANY // 2)]
    done, not_done = wait(
        [blocker, failing, *futures], timeout=RESULT_TIMEOUT, return_when=FIRST_EXCEPTION
    )
    assert failing in done
    assert blocker in not_done
    assert isinstance(failing.exception(timeout=0), ValueError)
    release(gate)
    done, not_done = wait([blocker, *futures], timeout=RESULT_TIMEOUT * 2)
    assert not not_done


def test_add_done_callback(executor):
    calls = []
    future = executor.submit(_tasks.square, 9)
    future.add_done_callback(calls.append)
    assert future.result(timeout=RESULT_TIMEOUT) == 81
    assert wait_until(lambda: calls, RESULT_TIMEOUT)
    # Registered after completion: runs immediately, in this thread.
    future.add_done_callback(calls.append)
    assert calls == [future, future]


@pytest.mark.timeout(120)
def test_waiters_and_callbacks_racing_completion(executor):
    # Futures complete without a lock while nobody waits on them; threads that start waiting,
    # add callbacks or call wait() just as the results arrive must still see every result
    # once, and every callback must run exactly once.
    futures = [executor.submit(_tasks.square, i) for i in range(MANY)]
    calls = [0] * MANY
    calls_lock = threading.Lock()
    errors = []

    def count(index):
        def callback(future):
            with calls_lock:
                calls[index] += 1

        return callback

    def worker(offset):
        try:
            for index in range(offset, MANY, 4):
                future = futures[index]
                if offset == 0:
                    assert future.result(timeout=RESULT_TIMEOUT) == index * index
                elif offset == 1:
                    future.add_done_callback(count(index))
                elif offset == 2:
                    done, _ = wait([future], timeout=RESULT_TIMEOUT)
                    assert done == {future}
                else:
                    assert future.exception(timeout=RESULT_TIMEOUT) is None
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    run_in_threads(worker, 4, RESULT_TIMEOUT * 2)
    assert not errors
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [i * i for i in range(MANY)]
    assert wait_until(lambda: sum(calls) == len(range(1, MANY, 4)), RESULT_TIMEOUT)
    assert all(calls[i] == (1 if i % 4 == 1 else 0) for i in range(MANY))


@pytest.mark.timeout(120)
def test_result_in_several_threads_completes_each_future_once(executor, capfd):
    # result() on a future nobody else waits on completes it in the calling thread; two such
    # threads and the notifier may then all complete the same future. Each must see the
    # value, and the loser must not report an error (the notifier prints what fails).
    futures = [executor.submit(_tasks.square, i) for i in range(MANY)]
    seen: list[list[int]] = [[], []]
    errors = []

    def collect(slot):
        try:
            seen[slot] = [f.result(timeout=RESULT_TIMEOUT) for f in futures]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    run_in_threads(collect, 2, RESULT_TIMEOUT * 2)
    assert not errors
    assert seen[0] == seen[1] == [i * i for i in range(MANY)]
    executor.shutdown(wait=True)
    assert "Error" not in capfd.readouterr().err


def test_result_timeout_then_result(executor, tmp_path):
    gate = tmp_path / "release"
    future = executor.submit(_tasks.block_until, str(gate))
    with pytest.raises(TimeoutError):
        future.result(timeout=0.2)
    with pytest.raises(TimeoutError):
        future.result(timeout=0)
    assert not future.done()
    release(gate)
    pid, _, _ = future.result(timeout=RESULT_TIMEOUT)
    assert isinstance(pid, int)
    assert future.done() and not future.cancelled()


def test_cancel_while_another_thread_waits_in_result(executor, tmp_path):
    # The waiting thread waits on the task natively; cancel() must still end that wait with
    # CancelledError and leave the future cancelled (not finished with an error).
    gate, blockers = _occupy_both_workers(executor, tmp_path)
    queued = executor.submit(_tasks.square, 7)
    outcome = []

    def wait_for_it():
        try:
            outcome.append(queued.result(timeout=RESULT_TIMEOUT))
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome.append(exc)

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    threading.Event().wait(0.1)  # let the waiter block in result()
    assert queued.cancel() is True
    waiter.join(RESULT_TIMEOUT)
    assert not waiter.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], CancelledError)
    assert queued.cancelled()
    release(gate)
    for b in blockers:
        b.result(timeout=RESULT_TIMEOUT)


def test_a_failing_completion_fails_the_future():
    # If completing a future fails in the notifier (say, MemoryError while decoding), the
    # future gets that error instead of staying pending with its waiters hanging.
    from rpool.executor import RpoolFuture

    class FailingHandle:
        def _complete_future(self, future):
            raise MemoryError("decoding failed")

    future = RpoolFuture()
    future._rpool_handle = FailingHandle()
    with pytest.raises(MemoryError):
        future._rpool_complete()
    assert isinstance(future.exception(timeout=0), MemoryError)


def _occupy_both_workers(executor, tmp_path):
    """Starts a blocking task on each worker; returns (gate to release, their futures)."""
    gate = tmp_path / "release"
    started = tmp_path / "started"
    started.mkdir()
    blockers = [executor.submit(_tasks.block_until, str(gate), str(started)) for _ in range(2)]
    wait_started(started, 2)
    return gate, blockers


def test_cancel_before_start(executor, tmp_path):
    gate, blockers = _occupy_both_workers(executor, tmp_path)
    pending = [executor.submit(_tasks.square, i) for i in range(20)]
    last = pending[-1]
    assert last.cancel() is True
    assert last.cancelled()
    assert last.done()
    with pytest.raises(CancelledError):
        last.result(timeout=RESULT_TIMEOUT)
    release(gate)
    for b in blockers:
        b.result(timeout=RESULT_TIMEOUT)
    assert [f.result(timeout=RESULT_TIMEOUT) for f in pending[:-1]] == [i * i for i in range(19)]


def test_cancel_finished_future_returns_false(executor):
    future = executor.submit(_tasks.square, 3)
    assert future.result(timeout=RESULT_TIMEOUT) == 9
    assert future.cancel() is False
    assert not future.cancelled()


def test_asyncio_run_in_executor_gather(executor):
    async def main():
        loop = asyncio.get_running_loop()
        calls = [loop.run_in_executor(executor, _tasks.square, i) for i in range(20)]
        return await asyncio.wait_for(asyncio.gather(*calls), RESULT_TIMEOUT)

    assert asyncio.run(main()) == [i * i for i in range(20)]


def test_asyncio_wrap_future(executor):
    async def main():
        ok = await asyncio.wait_for(
            asyncio.wrap_future(executor.submit(_tasks.square, 12)), RESULT_TIMEOUT
        )
        with pytest.raises(ValueError, match="async"):
            await asyncio.wait_for(
                asyncio.wrap_future(executor.submit(_tasks.raise_value_error, "async")),
                RESULT_TIMEOUT,
            )
        return ok

    assert asyncio.run(main()) == 144


def test_map_ordering(executor):
    assert list(executor.map(_tasks.reverse_delay, range(20), timeout=RESULT_TIMEOUT)) == list(
        range(20)
    )
    assert list(executor.map(_tasks.add, range(10), range(10, 30))) == [
        i + i + 10 for i in range(10)
    ]


def test_map_empty(executor):
    assert list(executor.map(_tasks.square, [])) == []


def test_map_timeout(executor, tmp_path):
    gate = tmp_path / "release"
    results = executor.map(_tasks.block_until, [str(gate)], timeout=0.3)
    with pytest.raises(concurrent.futures.TimeoutError):
        next(results)
    release(gate)


def test_map_exception_propagates(executor):
    results = executor.map(_tasks.raise_value_error_if_odd, range(4))
    assert next(results) == 0
    with pytest.raises(ValueError, match="odd"):
        next(results)


@pytest.mark.parametrize("chunksize", [1, 7, 10_000], ids=["one", "seven", "large"])
def test_map_chunksize(executor, chunksize):
    out = executor.map(_tasks.square, range(300), chunksize=chunksize, timeout=RESULT_TIMEOUT)
    assert list(out) == [i * i for i in range(300)]


def test_map_buffersize_endless_input(executor):
    results = executor.map(_tasks.square, itertools.count(), buffersize=4)
    try:
        assert list(itertools.islice(results, 200)) == [i * i for i in range(200)]
    finally:
        results.close()


def test_shutdown_wait_finishes_all(ctx):
    ex = rpool.ProcessPoolExecutor(2, mp_context=ctx)
    futures = [ex.submit(_tasks.sleep_and_return, 0.01, i) for i in range(20)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result(timeout=0) for f in futures] == list(range(20))


def test_shutdown_cancel_futures(ctx, tmp_path):
    gate = tmp_path / "release"
    started = tmp_path / "started"
    started.mkdir()
    ex = rpool.ProcessPoolExecutor(2, mp_context=ctx)
    try:
        blockers = [ex.submit(_tasks.block_until, str(gate), str(started)) for _ in range(2)]
        wait_started(started, 2)
        pending = [ex.submit(_tasks.square, i) for i in range(20)]
        ex.shutdown(wait=False, cancel_futures=True)
        # Not wait(): the stdlib leaves such futures CANCELLED (not _AND_NOTIFIED).
        assert wait_until(pending[-1].done, RESULT_TIMEOUT)
        assert pending[-1].cancelled()
        with pytest.raises(CancelledError):
            pending[-1].result(timeout=0)
        release(gate)
        for b in blockers:
            assert b.result(timeout=RESULT_TIMEOUT)[0] > 0
        for f in pending:
            assert f.cancelled() or f.result(timeout=RESULT_TIMEOUT) == pending.index(f) ** 2
    finally:
        release(gate)
        ex.shutdown(wait=True)


def test_submit_after_shutdown(ctx):
    ex = rpool.ProcessPoolExecutor(2, mp_context=ctx)
    assert ex.submit(_tasks.square, 2).result(timeout=RESULT_TIMEOUT) == 4
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(_tasks.square, 3)


def _new_rpool_threads(before: set[threading.Thread]) -> list[str]:
    """rpool threads started since ``before`` and still alive (others, such as the asyncio
    helper's, belong to earlier tests and live on)."""
    return [t.name for t in threading.enumerate() if t not in before and t.name.startswith("rpool")]


def test_worker_that_cannot_start_fails_the_first_submit_and_the_next_retries():
    # Under spawn the initargs are pickled when a worker starts; a lock cannot be. The submit
    # that starts the workers raises it, like the stdlib's, and the next one tries afresh.
    spawn = multiprocessing.get_context("spawn")
    threads_before = set(threading.enumerate())
    ex = rpool.ProcessPoolExecutor(
        2, mp_context=spawn, initializer=_tasks.record_init, initargs=(threading.Lock(),)
    )
    try:
        for _ in range(2):
            with pytest.raises(TypeError, match="pickle"):
                ex.submit(_tasks.square, 3)
            assert ex._runtime is None
    finally:
        ex.shutdown(wait=True)
    assert _new_rpool_threads(threads_before) == []


def test_second_worker_failing_to_start_fails_the_submit_and_its_task_never_runs(tmp_path):
    # The first worker is up when the second cannot be started (fork refused): the submit
    # raises, so its task must not run either, or a caller that retries would run it twice.
    starts: list[object] = []

    class SecondStartFails(multiprocessing.context.ForkProcess):
        def start(self) -> None:
            starts.append(self)
            if len(starts) == 2:
                # Time for the first worker to come up and take a task, had it been given one.
                time.sleep(0.3)
                raise BlockingIOError(errno.EAGAIN, "simulated: fork refused")
            super().start()

    class Context(multiprocessing.context.ForkContext):
        Process = SecondStartFails

    marker = tmp_path / "ran"
    threads_before = set(threading.enumerate())
    ex = rpool.ProcessPoolExecutor(2, mp_context=Context())
    try:
        with pytest.raises(BlockingIOError, match="simulated"):
            ex.submit(_tasks.touch, str(marker))
        assert ex._runtime is None
        # The failed start was cleaned up: its first worker has been reaped, so a task that
        # had not run by now never will.
        assert multiprocessing.active_children() == []
        assert _new_rpool_threads(threads_before) == []
        assert not marker.exists()
        assert len(starts) == 2
    finally:
        ex.shutdown(wait=True)


def _submit_while_another_thread_shuts_down(ctx) -> None:
    ex = rpool.ProcessPoolExecutor(2, mp_context=ctx)
    outcome: list[object] = []

    def submit() -> None:
        try:
            outcome.append(ex.submit(_tasks.square, 5))
        except RuntimeError as exc:
            outcome.append(exc)

    submitter = threading.Thread(target=submit)
    submitter.start()
    assert wait_until(lambda: ex._runtime is not None or bool(outcome), RESULT_TIMEOUT)
    ex.shutdown(wait=True)
    submitter.join(RESULT_TIMEOUT)
    assert not submitter.is_alive()
    (got,) = outcome
    if isinstance(got, RuntimeError):  # refused: the shutdown came first
        assert "after shutdown" in str(got)
    else:  # accepted before the shutdown, so it ran to completion
        assert isinstance(got, concurrent.futures.Future)
        assert got.result(timeout=0) == 25


def test_shutdown_from_another_thread_while_the_first_submit_starts_workers(ctx):
    for _ in range(5):
        _submit_while_another_thread_shuts_down(ctx)


def test_context_manager_shuts_down(ctx):
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        future = ex.submit(_tasks.square, 4)
    assert future.done()
    assert future.result(timeout=0) == 16
    with pytest.raises(RuntimeError):
        ex.submit(_tasks.square, 3)


def test_exception_has_remote_traceback(executor):
    future = executor.submit(_tasks.raise_value_error, "remote", 2)
    with pytest.raises(ValueError) as info:
        future.result(timeout=RESULT_TIMEOUT)
    exc = info.value
    assert type(exc) is ValueError
    assert exc.args == ("remote", 2)
    assert isinstance(exc.__cause__, concurrent.futures.process._RemoteTraceback)
    assert "raise_value_error" in str(exc.__cause__)
    assert "_tasks.py" in str(exc.__cause__)
    assert isinstance(future.exception(timeout=0), ValueError)


def test_failing_initializer_breaks_pool(ctx):
    with rpool.ProcessPoolExecutor(2, mp_context=ctx, initializer=_tasks.failing_initializer) as ex:
        # Like CPython's own FailingInitializerTest: the pool may already be broken when
        # submit() runs (it then raises), otherwise the future fails.
        with pytest.raises(BrokenProcessPool):
            ex.submit(_tasks.square, 2).result(timeout=RESULT_TIMEOUT)
        # The broken state is sticky.
        with pytest.raises(BrokenProcessPool):
            ex.submit(_tasks.square, 3).result(timeout=RESULT_TIMEOUT)


def test_failing_initializer_is_initializer_error(ctx):
    with rpool.ProcessPoolExecutor(
        2, mp_context=ctx, initializer=_tasks.failing_initializer, initargs=(1, 2)
    ) as ex:
        with pytest.raises(rpool.InitializerError) as info:
            ex.submit(_tasks.square, 2).result(timeout=RESULT_TIMEOUT)
        assert "initializer" in str(info.value).lower()
        with pytest.raises(rpool.InitializerError):
            ex.submit(_tasks.square, 3).result(timeout=RESULT_TIMEOUT)
    assert issubclass(rpool.InitializerError, BrokenProcessPool)


def test_initializer_and_initargs(ctx):
    with rpool.ProcessPoolExecutor(
        2, mp_context=ctx, initializer=_tasks.record_init, initargs=("exec",)
    ) as ex:
        states = list(ex.map(_tasks.worker_state, range(20), timeout=RESULT_TIMEOUT))
    assert {(value, count) for _, value, count in states} == {("exec", 1)}


def test_max_tasks_per_child(ctx, start_method):
    if start_method == "fork":
        with pytest.raises(ValueError):
            rpool.ProcessPoolExecutor(2, mp_context=ctx, max_tasks_per_child=1)
        return
    with rpool.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as ex:
        pids = [ex.submit(_tasks.getpid).result(timeout=RESULT_TIMEOUT) for _ in range(3)]
    assert len(set(pids)) == 3


@pytest.mark.parametrize("max_workers", [0, -1])
def test_max_workers_must_be_positive(ctx, max_workers):
    with pytest.raises(ValueError):
        rpool.ProcessPoolExecutor(max_workers, mp_context=ctx)


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers(ctx, tmp_path, method):
    gate = tmp_path / "release"
    started = tmp_path / "started"
    started.mkdir()
    ex = rpool.ProcessPoolExecutor(2, mp_context=ctx)
    try:
        blockers = [ex.submit(_tasks.block_until, str(gate), str(started)) for _ in range(2)]
        pids = wait_started(started, 2)
        getattr(ex, method)()
        done, not_done = wait(blockers, timeout=10)
        assert not not_done
        for f in blockers:
            assert f.cancelled() or f.exception(timeout=0) is not None
        assert wait_until(lambda: not any(pid_alive(p) for p in pids), 10)
        with pytest.raises(RuntimeError):
            ex.submit(_tasks.square, 1)
    finally:
        release(gate)
        ex.shutdown(wait=True)
