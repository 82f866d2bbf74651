"""Large payloads through shared memory: arguments and results above the segment threshold
travel in memfd segments owned by the parent instead of the pipes (src/engine/segments.rs).

What must hold: every byte arrives (arguments, results, map chunks, both fronts); the segment
path is really taken (the pool's counters say so); segments are recycled and bounded, so the
parent's descriptor count returns to where it was; a worker that dies or exits after its last
task loses nothing it already sent.
"""

from __future__ import annotations

import os
import signal

import _tasks
import pytest
import rpool
from _helpers import wait_until

GET_TIMEOUT = 60
# Comfortably above the 512 KiB threshold; sizes differ so segments are reused and grown.
SIZES = [600_000, 3 << 20, 1 << 20, 5 << 20, 700_000]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_large_arguments_and_results_round_trip_through_segments(ctx):
    payloads = [_tasks.pattern_bytes(size, seed) for seed, size in enumerate(SIZES)]
    with rpool.Pool(2, context=ctx) as pool:
        results = [pool.apply_async(_tasks.checksum_and_echo, (p,)) for p in payloads]
        for payload, result in zip(payloads, results, strict=True):
            length, sample, echoed = result.get(GET_TIMEOUT)
            assert (length, sample) == (len(payload), sum(payload[::4096]))
            assert echoed == payload
        # Every argument goes through a segment; results do when the worker holds a grant
        # (it can run out for a moment, then that result uses the pipe).
        assert wait_until(lambda: pool.stats().shared_payloads == len(SIZES), GET_TIMEOUT)
        assert pool.stats().shared_results >= 1


def test_small_values_keep_using_the_pipe(ctx):
    with rpool.Pool(2, context=ctx) as pool:
        assert pool.map(_tasks.square, range(100)) == [x * x for x in range(100)]
        assert pool.apply(_tasks.identity, (b"x" * 1000,)) == b"x" * 1000
        assert wait_until(lambda: pool.stats().tasks_done >= 2, GET_TIMEOUT)
        stats = pool.stats()
        assert (stats.shared_payloads, stats.shared_results) == (0, 0)


def test_executor_submit_and_map_with_large_values(ctx):
    payloads = [_tasks.pattern_bytes(2 << 20, seed) for seed in range(6)]
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        futures = [ex.submit(_tasks.identity, p) for p in payloads]
        assert [f.result(GET_TIMEOUT) for f in futures] == payloads
        # Map chunks whose pickles are large take the same path.
        assert list(ex.map(_tasks.identity, payloads, chunksize=3, timeout=GET_TIMEOUT)) == payloads
        assert wait_until(lambda: ex.stats().shared_payloads == 8, GET_TIMEOUT)
        assert ex.stats().shared_results >= 1


def test_results_survive_workers_that_exit_after_each_task(ctx):
    payloads = [_tasks.pattern_bytes(1 << 20, seed) for seed in range(5)]
    with rpool.Pool(2, maxtasksperchild=1, context=ctx) as pool:
        results = [pool.apply_async(_tasks.identity, (p,)) for p in payloads]
        assert [r.get(GET_TIMEOUT) for r in results] == payloads


def test_worker_death_with_large_payloads_fails_only_its_task(ctx):
    big = _tasks.pattern_bytes(2 << 20)
    with rpool.Pool(2, context=ctx) as pool:
        doomed = pool.apply_async(_tasks.kill_self, (signal.SIGKILL,))
        with pytest.raises(rpool.WorkerLostError):
            doomed.get(GET_TIMEOUT)
        results = [pool.apply_async(_tasks.identity, (big,)) for _ in range(4)]
        assert all(r.get(GET_TIMEOUT) == big for r in results)


def test_segments_are_recycled_and_released_with_the_pool(ctx):
    before = open_fds()
    payload = _tasks.pattern_bytes(1 << 20)
    with rpool.Pool(2, context=ctx) as pool:
        for _ in range(3):
            results = [pool.apply_async(_tasks.identity, (payload,)) for _ in range(20)]
            assert all(r.get(GET_TIMEOUT) == payload for r in results)
            del results
        # 60 large round trips, yet only a bounded set of segments stays open.
        assert open_fds() - before < 40
        pool.close()
        pool.join()
    del pool
    assert wait_until(lambda: open_fds() <= before, GET_TIMEOUT)
