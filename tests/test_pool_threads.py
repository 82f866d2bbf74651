"""One rpool.Pool hammered from many threads at once: every caller gets its own results."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import _tasks
import pytest
import rpool

THREADS = 8
GET_TIMEOUT = 60


def _work(pool, barrier, t):
    barrier.wait(timeout=GET_TIMEOUT)
    base = t * 1000
    asyncs = [pool.apply_async(_tasks.add, (base, i)) for i in range(30)]
    mapped = pool.map(_tasks.square, range(base, base + 100))
    # A list: chunks cut and sent as they go (the native path), many of them finishing while
    # this and the other threads still send theirs.
    listed = pool.map(_tasks.square, list(range(base, base + 2000)), chunksize=16)
    imapped = list(pool.imap(_tasks.square, range(base, base + 100), chunksize=7))
    unordered = sorted(pool.imap_unordered(_tasks.identity, range(base, base + 50)))
    starred = pool.starmap_async(_tasks.add, [(base, i) for i in range(20)])
    assert listed == [i * i for i in range(base, base + 2000)]
    return (
        [r.get(timeout=GET_TIMEOUT) for r in asyncs],
        mapped,
        imapped,
        unordered,
        starred.get(timeout=GET_TIMEOUT),
    )


@pytest.mark.timeout(120)
def test_one_pool_many_threads(ctx):
    barrier = threading.Barrier(THREADS)
    with rpool.Pool(2, context=ctx) as pool, ThreadPoolExecutor(THREADS) as threads:
        futures = [threads.submit(_work, pool, barrier, t) for t in range(THREADS)]
        outcomes = [f.result(timeout=GET_TIMEOUT) for f in futures]
    for t, (asyncs, mapped, imapped, unordered, starred) in enumerate(outcomes):
        base = t * 1000
        assert asyncs == [base + i for i in range(30)]
        assert mapped == [i * i for i in range(base, base + 100)]
        assert imapped == mapped
        assert unordered == list(range(base, base + 50))
        assert starred == [base + i for i in range(20)]


@pytest.mark.timeout(120)
def test_many_threads_with_failures_mixed_in(ctx):
    def work(pool, t):
        ok = pool.apply_async(_tasks.square, (t,))
        bad = pool.apply_async(_tasks.raise_value_error, ("thread", t))
        try:
            bad.get(timeout=GET_TIMEOUT)
        except ValueError as exc:
            error_args = exc.args
        else:
            error_args = None
        return ok.get(timeout=GET_TIMEOUT), error_args

    with rpool.Pool(2, context=ctx) as pool, ThreadPoolExecutor(THREADS) as threads:
        futures = [threads.submit(work, pool, t) for t in range(THREADS * 4)]
        outcomes = [f.result(timeout=GET_TIMEOUT) for f in futures]
    assert outcomes == [(t * t, ("thread", t)) for t in range(THREADS * 4)]


# Workers forked while the parent's engine threads are busy must still take their tasks. A
# worker once inherited a lock of the parent's locking table held by an engine thread and
# blocked on its first wait, which left one task pending for good (about 1 run in 5 of the
# first test; src/worker/inbox.rs has the deterministic Rust test of the cause).
FORK_STRESS_WAIT = 20


@pytest.mark.timeout(120)
def test_workers_forked_while_many_threads_wait():
    fork = multiprocessing.get_context("fork")

    def work(pool, t):
        return [
            pool.apply_async(_tasks.add, (t * 1000, i)).get(timeout=FORK_STRESS_WAIT)
            for i in range(50)
        ]

    # maxtasksperchild=1: a new worker is forked for every task, while other threads wait.
    with rpool.Pool(2, maxtasksperchild=1, context=fork) as pool, ThreadPoolExecutor(6) as threads:
        futures = [threads.submit(work, pool, t) for t in range(6)]
        outcomes = [f.result(timeout=GET_TIMEOUT) for f in futures]
    assert outcomes == [[t * 1000 + i for i in range(50)] for t in range(6)]


@pytest.mark.timeout(120)
def test_executor_started_and_shut_down_repeatedly():
    # Workers are forked on first submit while the executor's own threads start.
    fork = multiprocessing.get_context("fork")
    results = []
    for i in range(40):
        executor = rpool.ProcessPoolExecutor(2, mp_context=fork)
        try:
            results.append(executor.submit(_tasks.square, i).result(timeout=FORK_STRESS_WAIT))
        except BaseException:
            executor.kill_workers()  # a stuck worker would make shutdown(wait=True) wait forever
            raise
        finally:
            executor.shutdown(wait=True)
    assert results == [i * i for i in range(40)]


@pytest.mark.timeout(120)
def test_workers_outlive_the_thread_that_started_them(ctx):
    # Workers die with the thread that forked them (their parent-death signal is tied to that
    # thread), so rpool forks them from the pool's own supervisor thread, never from the
    # caller's: an executor first used from a short-lived thread must keep its workers.
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as executor:
        starter = threading.Thread(target=lambda: executor.submit(_tasks.square, 3).result(60))
        starter.start()
        starter.join(GET_TIMEOUT)
        assert not starter.is_alive()
        pids = {p.pid for p in executor._runtime.processes_alive()}
        time.sleep(0.2)  # a parent-death signal arrives at once; give it time to land
        assert list(executor.map(_tasks.square, range(20))) == [i * i for i in range(20)]
        assert {p.pid for p in executor._runtime.processes_alive()} == pids
