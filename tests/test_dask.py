"""rpool.dask: the Pool and executor API on a Dask cluster, checked against the local pools.

Behavioural tests run on both backends ("local" = rpool.Pool/ProcessPoolExecutor with 2 fork
workers, "dask" = rpool.dask on a 2-worker LocalCluster), so the Dask front is held to the local
semantics. Dask-only tests cover batching, clients given by address, cancellation on the
cluster and worker loss.

One LocalCluster serves the whole module. Its worker processes are children of the test
process, so this file overrides conftest's leftover-children check: cluster workers alive at
the end of a test are allowed, anything else is not; the cluster fixture itself checks that
closing it leaves no child behind.
"""

from __future__ import annotations

import concurrent.futures
import copyreg
import itertools
import multiprocessing
import os
import threading
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback

import _tasks
import pytest
import rpool
from _helpers import child_processes, release, wait_started, wait_until

# Importing distributed installs tblib's exception pickling for every exception class then
# loaded (copyreg), process-wide. That is Dask's behaviour, not rpool's, and it would change what
# the local pools' tests in this same pytest process observe (an exception that cannot be
# unpickled suddenly can). Put the table back as it was; the Dask client and the workers (their
# own processes) do not need it.
_DISPATCH_BEFORE_DASK = dict(copyreg.dispatch_table)
distributed = pytest.importorskip(
    "distributed", reason="rpool.dask needs 'distributed' (pip install 'rpool[dask]')"
)
import dask  # noqa: E402
import rpool.dask  # noqa: E402

copyreg.dispatch_table.clear()
copyreg.dispatch_table.update(_DISPATCH_BEFORE_DASK)

GET_TIMEOUT = 30
CLUSTER_START_TIMEOUT = 60

# A worker that dies is retried once by Dask, then the task fails (default is 3 retries, which
# makes the worker-loss tests slow without testing anything more).
ALLOWED_FAILURES = 1

BACKENDS = ["local", "dask"]


def _dask_children(client) -> set[int]:
    try:
        return set(client.run(os.getpid, wait=True).values())
    except Exception:
        return set()


@pytest.fixture(scope="module")
def cluster():
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        local = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            timeout=CLUSTER_START_TIMEOUT,
        )
    try:
        yield local
    finally:
        local.close(timeout=30)
        assert wait_until(lambda: not child_processes(), 10.0), child_processes()


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster, timeout=CLUSTER_START_TIMEOUT) as c:
        c.wait_for_workers(2, timeout=CLUSTER_START_TIMEOUT)
        yield c


@pytest.fixture(autouse=True)
def no_leftover_children(client):
    """conftest's check, except that the module's Dask workers may stay."""
    yield

    def foreign() -> dict[int, str]:
        allowed = _dask_children(client)
        return {pid: s for pid, s in child_processes().items() if pid not in allowed}

    # A test that killed a worker leaves Dask restarting it; let it come back first.
    client.wait_for_workers(2, timeout=CLUSTER_START_TIMEOUT)
    assert wait_until(lambda: not foreign(), 5.0), f"test left child processes: {foreign()}"


@pytest.fixture(params=BACKENDS)
def backend(request, client):
    return request.param


@pytest.fixture
def pool(backend, client):
    if backend == "local":
        p = rpool.Pool(2, context=multiprocessing.get_context("fork"))
    else:
        p = rpool.dask.Pool(client=client)
    with p:
        yield p


@pytest.fixture
def executor(backend, client):
    if backend == "local":
        ex = rpool.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
    else:
        ex = rpool.dask.ProcessPoolExecutor(client=client)
    with ex:
        yield ex


def _busy_workers(pool_or_executor, tmp_path, count=2):
    """Occupies `count` workers until `release(gate)`; returns (gate, results)."""
    gate = tmp_path / "go"
    started = tmp_path / "started"
    started.mkdir()
    submit = getattr(pool_or_executor, "apply_async", None)
    if submit is not None:
        held = [submit(_tasks.block_until, (str(gate), str(started))) for _ in range(count)]
    else:
        held = [
            pool_or_executor.submit(_tasks.block_until, str(gate), str(started))
            for _ in range(count)
        ]
    wait_started(started, count)
    return gate, held


# --- Pool: apply / map families --------------------------------------------------------------


def test_apply_and_apply_async(pool):
    assert pool.apply(_tasks.square, (7,)) == 49
    assert pool.apply(_tasks.add, (1,), {"b": 2}) == 3
    result = pool.apply_async(_tasks.add, (2, 3))
    assert result.get(timeout=GET_TIMEOUT) == 5
    assert result.ready() and result.successful()


def test_map_family(pool):
    assert pool.map(_tasks.square, range(50)) == [i * i for i in range(50)]
    assert pool.map(_tasks.square, []) == []
    assert pool.map(_tasks.square, (i for i in range(7)), chunksize=3) == [i * i for i in range(7)]
    assert pool.map_async(_tasks.square, range(20)).get(GET_TIMEOUT) == [i * i for i in range(20)]
    assert pool.starmap(_tasks.add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.starmap_async(_tasks.add, [(i, i) for i in range(10)]).get(GET_TIMEOUT) == [
        2 * i for i in range(10)
    ]


def test_imap_keeps_order_and_unordered_yields_all(pool):
    assert list(pool.imap(_tasks.reverse_delay, range(12), chunksize=1)) == list(range(12))
    assert sorted(pool.imap_unordered(_tasks.reverse_delay, range(12), chunksize=1)) == list(
        range(12)
    )
    assert list(pool.imap(_tasks.square, iter(range(100)))) == [i * i for i in range(100)]


def test_imap_reads_endless_input_lazily(pool):
    first = list(itertools.islice(pool.imap(_tasks.identity, itertools.count()), 500))
    assert first == list(range(500))


def test_imap_next_timeout(pool, tmp_path):
    gate, held = _busy_workers(pool, tmp_path)
    it = pool.imap(_tasks.square, [1, 2, 3])
    with pytest.raises(multiprocessing.TimeoutError):
        it.next(timeout=0.2)
    release(gate)
    assert list(it) == [1, 4, 9]
    for r in held:
        r.get(GET_TIMEOUT)


def test_get_timeout_raises_multiprocessing_timeout(pool, tmp_path):
    gate, held = _busy_workers(pool, tmp_path)
    result = pool.apply_async(_tasks.square, (3,))
    with pytest.raises(multiprocessing.TimeoutError):
        result.get(timeout=0.2)
    assert not result.ready()
    with pytest.raises(ValueError):
        result.successful()
    release(gate)
    assert result.get(GET_TIMEOUT) == 9
    for r in held:
        r.get(GET_TIMEOUT)


def test_callbacks_run_once_in_the_parent(pool):
    calls = []
    lock = threading.Lock()

    def record(kind):
        def callback(value):
            with lock:
                calls.append((kind, os.getpid(), value))

        return callback

    results = [pool.apply_async(_tasks.square, (i,), callback=record("ok")) for i in range(5)]
    failing = pool.apply_async(_tasks.raise_value_error, ("x",), error_callback=record("err"))
    mapped = pool.map_async(_tasks.square, range(4), callback=record("map"))
    for r in [*results, mapped]:
        r.get(GET_TIMEOUT)
    failing.wait(GET_TIMEOUT)
    assert wait_until(lambda: len(calls) == 7, 5.0)
    assert {pid for _, pid, _ in calls} == {os.getpid()}
    assert sorted(v for k, _, v in calls if k == "ok") == [0, 1, 4, 9, 16]
    [(_, _, error)] = [c for c in calls if c[0] == "err"]
    assert isinstance(error, ValueError) and error.args == ("x",)
    assert [v for k, _, v in calls if k == "map"] == [[0, 1, 4, 9]]


# --- Pool: errors ----------------------------------------------------------------------------


def test_task_exception_keeps_type_args_and_remote_traceback(pool):
    with pytest.raises(ValueError) as info:
        pool.apply(_tasks.raise_value_error, (1, "two"))
    assert info.value.args == (1, "two")
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise_value_error" in str(info.value.__cause__)
    result = pool.apply_async(_tasks.raise_value_error, ("y",))
    result.wait(GET_TIMEOUT)
    assert result.ready() and not result.successful()


def test_map_failure_raises_the_items_exception(pool):
    with pytest.raises(ValueError) as info:
        pool.map(_tasks.raise_value_error_if_odd, range(10), chunksize=2)
    assert info.value.args[0] == "odd"
    with pytest.raises(ValueError):
        list(pool.imap(_tasks.raise_value_error_if_odd, range(10)))


def test_unpicklable_result_is_maybe_encoding_error(pool):
    with pytest.raises(MaybeEncodingError):
        pool.apply(_tasks.return_unpicklable)
    assert pool.apply(_tasks.square, (4,)) == 16  # the pool keeps serving


def test_exception_that_cannot_travel_is_remote_error(pool):
    with pytest.raises(rpool.RemoteError) as info:
        pool.apply(_tasks.raise_unpicklable_exception)
    assert "TwoArgError" in info.value.type_name


def test_initializer_runs_in_workers(backend, client):
    kwargs = {"client": client} if backend == "dask" else {}
    cls = rpool.dask.Pool if backend == "dask" else rpool.Pool
    with cls(2, _tasks.record_init, ("hello",), **kwargs) as p:
        states = p.map(_tasks.worker_state, range(8), chunksize=1)
    assert {value for _, value, _ in states} == {"hello"}
    assert {count for _, _, count in states} >= {1}


# --- Pool: lifecycle -------------------------------------------------------------------------


def test_close_join_and_not_running(pool):
    result = pool.map_async(_tasks.square, range(10))
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(_tasks.square, (1,))
    pool.join()
    assert result.ready()
    assert result.get(0) == [i * i for i in range(10)]


def test_join_while_running_is_an_error(pool):
    with pytest.raises(ValueError):
        pool.join()


def test_terminate_fails_unfinished_results(pool, tmp_path):
    gate, held = _busy_workers(pool, tmp_path)
    queued = pool.apply_async(_tasks.square, (2,))
    pool.terminate()
    for r in [*held, queued]:
        r.wait(GET_TIMEOUT)
    assert queued.ready()
    release(gate)
    with pytest.raises(BrokenProcessPool):
        queued.get(0)


def test_repr_and_pickling(pool):
    assert "state=RUN" in repr(pool)
    import pickle

    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


# --- Executor --------------------------------------------------------------------------------


def test_submit_returns_real_future(executor):
    future = executor.submit(_tasks.add, 1, b=2)
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=GET_TIMEOUT) == 3
    futures = [executor.submit(_tasks.square, i) for i in range(20)]
    done = {f.result() for f in concurrent.futures.as_completed(futures, timeout=GET_TIMEOUT)}
    assert done == {i * i for i in range(20)}


def test_future_exception_and_done_callback(executor):
    seen = []
    future = executor.submit(_tasks.raise_value_error, "bad", 2)
    future.add_done_callback(lambda f: seen.append((os.getpid(), f.exception())))
    with pytest.raises(ValueError) as info:
        future.result(timeout=GET_TIMEOUT)
    assert info.value.args == ("bad", 2)
    assert isinstance(info.value.__cause__, _RemoteTraceback)
    assert wait_until(lambda: len(seen) == 1, 5.0)
    assert seen[0][0] == os.getpid() and isinstance(seen[0][1], ValueError)


def test_cancel_before_start(executor, tmp_path):
    gate, held = _busy_workers(executor, tmp_path)
    queued = executor.submit(_tasks.square, 5)
    assert queued.cancel()
    assert queued.cancelled()
    done, _ = concurrent.futures.wait([queued], timeout=GET_TIMEOUT)
    assert done == {queued}
    release(gate)
    for f in held:
        f.result(GET_TIMEOUT)
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(0)


def test_executor_map(executor):
    assert list(executor.map(_tasks.add, range(100), range(100))) == [2 * i for i in range(100)]
    assert list(executor.map(_tasks.square, [])) == []
    assert list(executor.map(_tasks.square, range(10), chunksize=3)) == [i * i for i in range(10)]
    endless = executor.map(_tasks.identity, itertools.count(), buffersize=4)
    assert list(itertools.islice(endless, 50)) == list(range(50))
    endless.close()
    with pytest.raises(ValueError):
        list(executor.map(_tasks.raise_value_error_if_odd, range(4)))


def test_executor_map_timeout(executor, tmp_path):
    gate, held = _busy_workers(executor, tmp_path)
    results = executor.map(_tasks.square, range(3), timeout=0.2)
    with pytest.raises(TimeoutError):
        list(results)
    release(gate)
    for f in held:
        f.result(GET_TIMEOUT)


def test_shutdown_semantics(backend, client, tmp_path):
    if backend == "dask":
        ex = rpool.dask.ProcessPoolExecutor(client=client)
    else:
        ex = rpool.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"))
    futures = [ex.submit(_tasks.square, i) for i in range(10)]
    ex.shutdown(wait=True)
    assert [f.result(0) for f in futures] == [i * i for i in range(10)]
    with pytest.raises(RuntimeError):
        ex.submit(_tasks.square, 1)


def test_initializer_in_executor(backend, client):
    if backend == "dask":
        ex = rpool.dask.ProcessPoolExecutor(
            initializer=_tasks.record_init, initargs=("hi",), client=client
        )
    else:
        ex = rpool.ProcessPoolExecutor(
            2, multiprocessing.get_context("fork"), _tasks.record_init, ("hi",)
        )
    with ex:
        assert ex.submit(_tasks.worker_state).result(GET_TIMEOUT)[1] == "hi"


# --- Dask only -------------------------------------------------------------------------------


class _CountingCluster:
    """Counts the Dask tasks an rpool.dask pool sends."""

    def __init__(self, monkeypatch):
        self.sent = 0
        original = rpool.dask._Cluster.submit

        def counting(cluster, *args, **kwargs):
            self.sent += 1
            return original(cluster, *args, **kwargs)

        monkeypatch.setattr(rpool.dask._Cluster, "submit", counting)


def test_map_sends_one_dask_task_per_chunk(client, monkeypatch):
    counter = _CountingCluster(monkeypatch)
    with rpool.dask.Pool(client=client) as p:
        assert p.map(_tasks.square, range(20_000)) == [i * i for i in range(20_000)]
        # 2 cluster threads: the local rule gives len/(4*2) per chunk, i.e. 8 tasks.
        assert counter.sent == 8
        assert sum(1 for _ in p.imap(_tasks.identity, iter(range(20_000)))) == 20_000
    assert counter.sent < 200
    with rpool.dask.ProcessPoolExecutor(client=client) as ex:
        before = counter.sent
        assert len(list(ex.map(_tasks.add, range(10_000), range(10_000)))) == 10_000
        assert counter.sent - before == 8


def test_lambdas_and_closures_travel(client):
    with rpool.dask.Pool(client=client) as p:
        assert p.map(lambda x: x + 1, range(5)) == [1, 2, 3, 4, 5]
        assert p.apply(_tasks.make_adder(10), (1,)) == 11


def test_client_given_by_address_is_closed_but_cluster_kept(cluster, client):
    with rpool.dask.ProcessPoolExecutor(client=cluster.scheduler_address) as ex:
        assert ex.submit(_tasks.square, 6).result(GET_TIMEOUT) == 36
        own = ex._cluster.client
        assert own is not client
    assert own.status == "closed"
    with rpool.dask.Pool(client=cluster.scheduler_address) as p:
        assert p.apply(_tasks.square, (3,)) == 9
    assert client.submit(_tasks.square, 2).result(GET_TIMEOUT) == 4  # cluster still serving
    assert client.status == "running"


def test_default_client_is_used(client):
    with rpool.dask.Pool() as p:
        assert p._cluster.client is client
        assert p.apply(_tasks.square, (5,)) == 25


def test_bad_client_argument():
    with pytest.raises(TypeError):
        rpool.dask.Pool(client=42)


def _rpool_keys_on_scheduler(client) -> list[str]:
    def keys(dask_scheduler):
        return [str(k) for k in dask_scheduler.tasks if str(k).startswith("rpool-")]

    return client.run_on_scheduler(keys)


def _assert_no_rpool_keys(client) -> None:
    def describe(dask_scheduler):
        return [
            (str(key), task.state, [str(who) for who in task.who_wants])
            for key, task in dask_scheduler.tasks.items()
        ]

    ok = wait_until(lambda: not _rpool_keys_on_scheduler(client), 10.0)
    assert ok, f"rpool tasks still on the scheduler: {client.run_on_scheduler(describe)}"


def test_terminate_and_shutdown_release_cluster_futures(client, tmp_path):
    p = rpool.dask.Pool(client=client)
    gate, held = _busy_workers(p, tmp_path)
    queued = [p.apply_async(_tasks.square, (i,)) for i in range(5)]
    p.terminate()
    for r in queued:
        with pytest.raises(BrokenProcessPool):
            r.get(GET_TIMEOUT)
    release(gate)
    _assert_no_rpool_keys(client)

    ex = rpool.dask.ProcessPoolExecutor(client=client)
    gate2, held2 = _busy_workers(ex, _fresh(tmp_path))
    waiting = [ex.submit(_tasks.square, i) for i in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in waiting)
    release(gate2)
    _assert_no_rpool_keys(client)
    assert client.status == "running"


@pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
def test_terminate_workers_cancels_this_executors_tasks_only(client, tmp_path, method):
    ex = rpool.dask.ProcessPoolExecutor(client=client)
    gate, held = _busy_workers(ex, tmp_path)
    waiting = [ex.submit(_tasks.square, i) for i in range(5)]
    getattr(ex, method)()
    assert all(f.cancelled() for f in waiting)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(_tasks.square, 1)
    release(gate)
    _assert_no_rpool_keys(client)
    # The cluster is not ours: it keeps serving other clients' work.
    assert client.submit(_tasks.square, 3).result(timeout=GET_TIMEOUT) == 9


def _fresh(tmp_path):
    path = tmp_path / "again"
    path.mkdir()
    return path


def test_worker_loss_is_retried_by_dask(client, tmp_path):
    with rpool.dask.Pool(client=client) as p:
        assert p.apply(_tasks.kill_self_once, (str(tmp_path / "marker"),)) == "survived"


def test_task_that_keeps_killing_workers_is_worker_lost_error(client):
    with rpool.dask.ProcessPoolExecutor(client=client) as ex:
        future = ex.submit(_tasks.kill_self)
        with pytest.raises(rpool.WorkerLostError):
            future.result(timeout=GET_TIMEOUT)
        client.wait_for_workers(2, timeout=CLUSTER_START_TIMEOUT)
        assert ex.submit(_tasks.square, 3).result(GET_TIMEOUT) == 9


def test_failing_initializer_is_initializer_error(client):
    with rpool.dask.Pool(initializer=_tasks.failing_initializer, client=client) as p:
        with pytest.raises(rpool.InitializerError) as info:
            p.apply(_tasks.square, (2,))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_import_error_names_the_extra(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.delitem(sys.modules, "rpool.dask")
    with pytest.raises(ImportError, match=r"rpool\[dask\]"):
        importlib.import_module("rpool.dask")
    monkeypatch.undo()
    assert importlib.import_module("rpool.dask") is rpool.dask


def test_per_task_time_limits_fail_only_the_slow_task(client):
    with rpool.dask.Pool(client=client) as p:
        slow = p.apply_async(_tasks.sleep_and_return, (3, "late"), timeout=0.3)
        quick = p.apply_async(_tasks.square, (5,), timeout=10)
        with pytest.raises(rpool.TaskTimeoutError, match="0.3 s time limit"):
            slow.get(GET_TIMEOUT)
        assert quick.get(GET_TIMEOUT) == 25
        with pytest.raises(rpool.TaskTimeoutError):
            p.map(_tasks.sleep_and_return, [3], task_timeout=0.3)
        assert p.map(_tasks.square, range(6), task_timeout=10) == [i * i for i in range(6)]
        with pytest.raises(ValueError, match="timeout"):
            p.apply_async(_tasks.square, (1,), timeout=0)
    with rpool.dask.ProcessPoolExecutor(client=client) as ex:
        future = ex.submit_with(_tasks.sleep_and_return, (3,), timeout=0.3)
        with pytest.raises(rpool.TaskTimeoutError):
            future.result(timeout=GET_TIMEOUT)
        assert ex.submit_with(_tasks.add, (2, 3), timeout=10).result(timeout=GET_TIMEOUT) == 5


def test_stats_count_this_pools_tasks_per_dask_worker(client):
    with rpool.dask.Pool(client=client) as p:
        assert p.map(_tasks.square, range(40), chunksize=5) == [i * i for i in range(40)]
        assert p.apply(_tasks.square, (3,)) == 9
        stats = p.stats()
    assert stats.tasks_done == 9  # 8 chunks + 1 call
    assert stats.in_flight == 0 and stats.restarts == 0
    assert sum(w.tasks_done for w in stats.workers) == 9
    worker_pids = set(client.run(os.getpid).values())
    assert {w.pid for w in stats.workers} <= worker_pids
    assert all(w.busy_seconds >= 0 and w.idle_seconds >= 0 for w in stats.workers)
    with rpool.dask.ProcessPoolExecutor(client=client) as ex:
        assert ex.submit(_tasks.square, 2).result(timeout=GET_TIMEOUT) == 4
        assert ex.stats().tasks_done == 1
