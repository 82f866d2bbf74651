"""rpool extension ``pool.stats()`` / ``executor.stats()``: workers, counters, throughput.

The native counters are published a few times a second, so every check polls with a timeout.
"""

from __future__ import annotations

import signal

import _tasks
import pytest
import rpool
from _helpers import pid_alive, wait_until

GET_TIMEOUT = 30


def test_pool_stats_after_work(ctx):
    with rpool.Pool(2, context=ctx) as pool:
        pids = set(pool.map(_tasks.busy_for, [0.05] * 8, chunksize=1))
        assert wait_until(lambda: pool.stats().tasks_done >= 8, GET_TIMEOUT)
        stats = pool.stats()
        assert isinstance(stats, rpool.PoolStats)
        assert {w.pid for w in stats.workers} == pids
        assert all(pid_alive(w.pid) for w in stats.workers)
        assert sum(w.tasks_done for w in stats.workers) == 8
        assert sum(w.busy_seconds for w in stats.workers) >= 8 * 0.05 * 0.9
        for worker in stats.workers:
            assert worker.alive_seconds >= worker.busy_seconds
            assert worker.idle_seconds == pytest.approx(worker.alive_seconds - worker.busy_seconds)
            assert 0.0 <= worker.utilisation <= 1.0
        assert stats.throughput > 0 and stats.uptime_seconds > 0
        assert stats.restarts == 0 and stats.queued == 0
        table = stats.table()
        assert all(str(w.pid) in table for w in stats.workers)


def test_queued_and_in_flight(ctx):
    with rpool.Pool(1, context=ctx) as pool:
        results = [pool.apply_async(_tasks.sleep_and_return, (0.3,)) for _ in range(4)]
        assert wait_until(lambda: pool.stats().queued + pool.stats().in_flight >= 2, 10)
        for r in results:
            r.get(timeout=GET_TIMEOUT)
        assert wait_until(lambda: pool.stats().in_flight == 0, 10)


def test_restarts_count_dead_workers(ctx):
    with rpool.Pool(2, context=ctx) as pool:
        with pytest.raises(rpool.WorkerLostError):
            pool.apply(_tasks.kill_self, (signal.SIGKILL,))
        assert wait_until(lambda: pool.stats().restarts == 1, GET_TIMEOUT)
        assert wait_until(lambda: len(pool.stats().workers) == 2, GET_TIMEOUT)


def test_executor_stats(ctx):
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        empty = ex.stats()
        assert empty.workers == () and empty.tasks_done == 0
        futures = [ex.submit(_tasks.square, i) for i in range(20)]
        assert [f.result(timeout=GET_TIMEOUT) for f in futures] == [i * i for i in range(20)]
        assert wait_until(lambda: ex.stats().tasks_done >= 20, GET_TIMEOUT)
        assert len(ex.stats().workers) == 2
