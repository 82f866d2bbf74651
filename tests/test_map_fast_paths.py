"""`Pool.map`'s fast paths: chunks of plain numbers are pickled straight from the input list
(`rpool._rpool.pickle_list_slice`) and result chunks of plain numbers are decoded straight into
the map's list (what arrives must equal what was sent, value and type); chunks finishing while
the map is still sent are set aside and handed back to the notifier."""

from __future__ import annotations

import enum
import pickle
import types

import _tasks
import pytest
import rpool
from _helpers import assert_same_values
from rpool import _rpool
from rpool._runtime import Runtime

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
