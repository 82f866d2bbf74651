"""One rpool.Pool hammered from many threads at once: every caller gets its own results."""

from __future__ import annotations

import threading
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
    imapped = list(pool.imap(_tasks.square, range(base, base + 100), chunksize=7))
    unordered = sorted(pool.imap_unordered(_tasks.identity, range(base, base + 50)))
    starred = pool.starmap_async(_tasks.add, [(base, i) for i in range(20)])
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
