"""rpool extension ``rpool.worker_state()``: a namespace per worker process, across its tasks.

The initializer fills it (one sqlite3 connection per worker), tasks read and update it, a
replaced worker starts empty, and a forked worker never inherits the parent's namespace.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict

import _tasks
import pytest
import rpool

GET_TIMEOUT = 30


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "kv.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE kv (key INTEGER PRIMARY KEY, value TEXT)")
        conn.executemany("INSERT INTO kv VALUES (?, ?)", [(i, f"v{i}") for i in range(100)])
    conn.close()
    return str(path)


def test_one_sqlite_connection_per_worker(ctx, db_path):
    with rpool.Pool(2, initializer=_tasks.open_db, initargs=(db_path,), context=ctx) as pool:
        rows = pool.map(_tasks.db_lookup, range(100), chunksize=5)
    assert [value for *_, value in rows] == [f"v{i}" for i in range(100)]
    per_worker = defaultdict(list)
    for pid, conn_id, queries, _ in rows:
        per_worker[pid].append((conn_id, queries))
    for seen in per_worker.values():
        assert len({conn_id for conn_id, _ in seen}) == 1  # one connection, reused
        assert sorted(q for _, q in seen) == list(range(1, len(seen) + 1))


def test_state_persists_across_tasks(ctx):
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        results = [ex.submit(_tasks.count_in_state).result(timeout=GET_TIMEOUT) for _ in range(10)]
    counts = defaultdict(list)
    for pid, count in results:
        counts[pid].append(count)
    for seen in counts.values():
        assert seen == list(range(1, len(seen) + 1))


def test_replaced_worker_starts_empty(ctx):
    with rpool.Pool(1, maxtasksperchild=2, context=ctx) as pool:
        results = pool.map(_tasks.count_in_state, range(4), chunksize=1)
    assert [count for _, count in results] == [1, 2, 1, 2]
    assert results[0][0] != results[2][0]


def test_forked_worker_does_not_inherit_parent_state(ctx):
    state = rpool.worker_state()
    state.parent_only = "not for workers"
    try:
        with rpool.Pool(1, context=ctx) as pool:
            assert pool.apply(_tasks.state_keys) == []
    finally:
        del state.parent_only
    assert rpool.worker_state() is state
