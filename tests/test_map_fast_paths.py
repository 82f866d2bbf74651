"""`Pool.map`'s fast paths: chunks of plain numbers are pickled straight from the input list
(`rpool._rpool.pickle_list_slice`) and result chunks of plain numbers are decoded straight into
the map's list (what arrives must equal what was sent, value and type); chunks finishing while
the map is still sent are set aside and handed back to the notifier."""

from __future__ import annotations

import enum
import functools
import operator
import pickle
import types

import _tasks
import pytest
import rpool
from _helpers import assert_same_values
from rpool import _rpool
from rpool._codec import run_map, run_starmap
from rpool._runtime import Runtime

GET_TIMEOUT = 30

EDGES = [
    0,
    1,
    255,
    256,
    65535,
    65536,
    -1,
    -256,
    2**31 - 1,
    2**31,
    -(2**31),
    -(2**31) - 1,
    2**32,
    2**63 - 1,
    -(2**63),
    0.0,
    -0.0,
    1.5,
    -2.25e300,
    float("inf"),
    float("-inf"),
    None,
    True,
    False,
]


def test_edges_round_trip():
    items = EDGES + [float("nan")]
    data = _rpool.pickle_list_slice(items, 0, len(items))
    assert data is not None
    assert_same_values(pickle.loads(data), items)


@pytest.mark.parametrize(("start", "stop"), [(0, 0), (3, 3), (2, 9), (0, 2500), (1234, 2500)])
def test_slices_round_trip_across_batches(start, stop):
    items = [i * 7919 - 10**6 for i in range(2500)]
    data = _rpool.pickle_list_slice(items, start, stop)
    assert data is not None
    assert pickle.loads(data) == items[start:stop]


class Colour(enum.IntEnum):
    RED = 1


class MyFloat(float):
    pass


@pytest.mark.parametrize(
    "odd", [2**64, -(2**63) - 1, "text", b"bytes", (1,), Colour.RED, MyFloat(1)]
)
def test_anything_else_is_left_to_pickle(odd):
    assert _rpool.pickle_list_slice([1, 2, odd, 3], 0, 4) is None
    # Only the slice asked for matters.
    assert pickle.loads(_rpool.pickle_list_slice([1, 2, odd, 3], 0, 2)) == [1, 2]


def test_slices_past_the_end_are_refused():
    assert _rpool.pickle_list_slice([1, 2, 3], 2, 4) is None
    assert _rpool.pickle_list_slice([1, 2, 3], 3, 2) is None


def test_map_mixes_native_and_pickled_chunks(ctx):
    # Chunks of plain numbers go natively; the chunk holding a string or a big int does not.
    items = list(range(100)) + ["x"] + [2**70] + [1.5, None, True] * 10
    with rpool.Pool(2, context=ctx) as pool:
        assert pool.map(_tasks.identity, items, chunksize=7) == items
        assert pool.map(_tasks.square, list(range(1000))) == [i * i for i in range(1000)]


def test_plain_results_arrive_unchanged(ctx):
    # Every edge value (and nan) as a result, natively decoded or not, in order and type.
    items = (EDGES + [float("nan"), 2**64, -(2**70)]) * 50
    with rpool.Pool(2, context=ctx) as pool:
        assert_same_values(pool.map(_tasks.identity, items, chunksize=9), items)
        assert_same_values(pool.map(_tasks.identity, items), items)
        assert_same_values(pool.map(_tasks.identity, tuple(items), chunksize=9), items)
        # A lazy map's chunks are pickled by `pickle` (framed, memoized); the worker still
        # reads them natively.
        assert_same_values(list(pool.imap(_tasks.identity, items, chunksize=9)), items)


class _Entry:
    def __init__(self, task_id):
        self.handle = types.SimpleNamespace(task_id=task_id)
        self.completed = 0

    def _rpool_complete(self):
        self.completed += 1


@pytest.mark.parametrize("stopping", [False, True])
def test_set_aside_chunks_are_completed_even_if_the_notifier_is_stopping(stopping):
    # `Runtime.hand_back` returns a map's set-aside chunks to the notifier; when the notifier
    # is stopping (it may not look again), the handing thread completes them itself.
    renotified = []
    runtime = types.SimpleNamespace(
        pending={},
        core=types.SimpleNamespace(renotify=renotified.extend),
        _notifier_stop=stopping,
    )
    entries = [_Entry(7), _Entry(8)]
    Runtime.hand_back(runtime, entries)  # type: ignore[arg-type]
    assert renotified == [7, 8]
    if stopping:
        assert [e.completed for e in entries] == [1, 1]
        assert runtime.pending == {}
    else:
        assert [e.completed for e in entries] == [0, 0]
        assert runtime.pending == {7: entries[0], 8: entries[1]}


# --- the worker's chunk runners ------------------------------------------------------------


class _Adder:
    def __init__(self, k):
        self.k = k

    def add(self, x):
        return x + self.k


@pytest.mark.parametrize(
    "func",
    [_tasks.square, _Adder(5).add, abs, str, functools.partial(operator.mul, 3), lambda x: -x],
    ids=["function", "bound method", "builtin", "type", "partial", "lambda"],
)
def test_run_map_matches_the_builtin_map_for_every_kind_of_callable(func):
    items = list(range(-50, 50))
    assert run_map(func, items) == list(map(func, items))


def test_run_starmap_unpacks_each_item():
    items = list(range(-50, 50))
    assert run_starmap(operator.add, [(i, 1) for i in items]) == [i + 1 for i in items]


@pytest.mark.parametrize("func", [_tasks.stop_at_three, next], ids=["function", "builtin"])
def test_run_map_reports_stop_iteration_instead_of_cutting_the_chunk(func):
    items = [0, 1, 2, 3, 4] if func is _tasks.stop_at_three else [iter([1]), iter([])]
    with pytest.raises(RuntimeError, match="raised StopIteration in a map") as info:
        run_map(func, items)
    if func is _tasks.stop_at_three:  # the comprehension keeps the original as the cause
        assert isinstance(info.value.__cause__, StopIteration)
    with pytest.raises(RuntimeError, match="raised StopIteration in a map"):
        run_starmap(_tasks.stop_at_three, [(i,) for i in range(5)])


def test_stop_iteration_in_a_task_fails_every_map_kind_loudly(ctx):
    # `list(map(...))` in the worker used to end the chunk early: Pool.map returned None in
    # the missing places and imap/Executor.map dropped items without a word.
    items = list(range(8))
    with rpool.Pool(2, context=ctx) as pool:
        pairs = [(i,) for i in items]
        calls = {
            "map": lambda: pool.map_async(_tasks.stop_at_three, items, 4).get(GET_TIMEOUT),
            "starmap": lambda: pool.starmap_async(_tasks.stop_at_three, pairs).get(GET_TIMEOUT),
            "imap": lambda: [
                it.next(GET_TIMEOUT)
                for it in [pool.imap(_tasks.stop_at_three, items, chunksize=4)]
                for _ in items
            ],
            "imap_unordered": lambda: [
                it.next(GET_TIMEOUT)
                for it in [pool.imap_unordered(_tasks.stop_at_three, items)]
                for _ in items
            ],
        }
        for name, call in calls.items():
            with pytest.raises(RuntimeError, match="StopIteration") as info:
                call()
            remote = str(info.value.__cause__)
            # Where the worker ran a comprehension (a plain function), the original shows.
            assert ("StopIteration: three" in remote) == (name != "starmap"), name
        # The pool still works.
        assert pool.map_async(_tasks.square, items).get(GET_TIMEOUT) == [i * i for i in items]
    with rpool.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        with pytest.raises(RuntimeError, match="StopIteration"):
            list(ex.map(_tasks.stop_at_three, items, chunksize=4, timeout=GET_TIMEOUT))


def test_large_plain_result_chunks_and_the_worker_after_them(ctx):
    # A 300k-float chunk's results (2.7 MB pickled) leave from the worker's scratch buffer (by
    # a shared-memory segment if one is granted in time, else through the pipe); a 600k-float
    # chunk (5.4 MB) grows that buffer past what is kept between tasks (4 MiB), so it is
    # dropped; small chunks follow. Either way every value must arrive, in order.
    items = [i / 7 for i in range(600_000)]
    with rpool.Pool(2, context=ctx) as pool:
        assert pool.map(_tasks.identity, items, chunksize=300_000) == items
        big = [float(i) for i in range(1_200_000)]
        assert pool.map(_tasks.identity, big, chunksize=600_000) == big
        assert pool.map(_tasks.square, range(3000)) == [i * i for i in range(3000)]
