"""Split pickles: large buffers pickled out of band (pickle protocol 5) into shared memory.

Owns which values qualify, how they are pickled, and the layout a shared-memory segment holds
(segments themselves: src/engine/segments.rs). A segment holds either a plain pickle or a split
pickle:

    MAGIC | count u32 | reserved u32 | head_len u64
    | count x (offset u64, length u64, flags u64)
    | head: the pickle, whose NEXT_BUFFER opcodes refer to the buffers
    | the buffers, each at a 64-byte aligned offset

Each large ``bytes``/``bytearray`` found near the top of a value (a call's arguments, a result,
the items of small tuples, lists and dicts in them) is replaced while pickling by a `_Detached`
stand-in whose reduction hands the buffer to the pickler out of band. Its bytes are then copied
once into the segment, straight from the object (one ``pwritev`` of the pinned `parts()`: by the
parent's I/O thread when the task is dispatched, by a worker for its result), and once out of
it (``pread`` straight into the new object, ``_rpool.pread_bytes``), instead of passing through
an 8 MiB intermediate pickle on each side. Objects that produce out-of-band buffers themselves
(NumPy arrays under protocol 5) take the same route; each of their buffers is read into a
private ``bytearray`` (one copy), as the segment is reused as soon as the value is loaded.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from typing import Any

from rpool import _rpool

#: A buffer at least this large makes a value travel as a split pickle (the segment threshold).
SPLIT_MIN: int = _rpool.SHARED_PAYLOAD_MIN

#: Containers with more items than this are not searched for large buffers: the search runs on
#: every call, and a call with a large buffer deep inside a big list is rare.
_MAX_SEARCHED_ITEMS = 16

#: How deep into nested tuples/lists/dicts the search goes (the call's argument tuple is level 1).
_SEARCH_DEPTH = 3

_MAGIC: bytes = bytes(_rpool.SPLIT_PICKLE_MAGIC)
_HEADER = struct.Struct("<8sIIQ")
_ENTRY = struct.Struct("<QQQ")
_ALIGN = 64
#: Entry flag: the buffer was detached by rpool from a bytes/bytearray, whose rebuild copies it,
#: so the loader may pass a view of the mapping instead of a private copy.
_COPIED_ON_LOAD = 1

_PROTOCOL = 5
_PLAIN_TYPES = frozenset({int, float, str, bool, type(None), complex})
_CONTAINERS = frozenset({tuple, list, dict})

#: Per type: whether its instances may hand out large out-of-band buffers (they have `nbytes`).
_buffer_types: dict[type, bool] = {}


class _Detached:
    """Stands in for a large bytes/bytearray while pickling; rebuilt as the original type."""

    __slots__ = ("data", "marks")

    def __init__(self, data: bytes | bytearray, marks: list[pickle.PickleBuffer]) -> None:
        self.data = data
        self.marks = marks

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        buffer = pickle.PickleBuffer(self.data)
        self.marks.append(buffer)
        return (type(self.data), (buffer,))


def _has_own_buffers(cls: type) -> bool:
    known = _buffer_types.get(cls)
    if known is None:
        known = _buffer_types[cls] = hasattr(cls, "nbytes")
    return known


def _large(value: Any, depth: int) -> bool:
    """Whether `value` holds a buffer of at least `SPLIT_MIN` bytes within the searched depth."""
    cls = type(value)
    if cls in _PLAIN_TYPES:
        return False
    if cls is bytes or cls is bytearray:
        return len(value) >= SPLIT_MIN
    if cls in _CONTAINERS:
        if depth <= 0 or len(value) > _MAX_SEARCHED_ITEMS:
            return False
        items = value.values() if cls is dict else value
        return any(_large(item, depth - 1) for item in items)
    if _has_own_buffers(cls):
        try:
            return int(value.nbytes) >= SPLIT_MIN
        except Exception:
            return False
    return False


def call_is_large(args: tuple[Any, ...], kwds: dict[str, Any] | None) -> bool:
    """Whether a call's arguments should travel as a split pickle (cheap for small calls)."""
    for arg in args:
        if type(arg) not in _PLAIN_TYPES and _large(arg, _SEARCH_DEPTH - 1):
            return True
    return bool(kwds) and _large(kwds, _SEARCH_DEPTH - 1)


def result_is_large(value: Any) -> bool:
    """Whether a task's result should travel as a split pickle."""
    return type(value) not in _PLAIN_TYPES and _large(value, _SEARCH_DEPTH - 1)


def _detach(value: Any, depth: int, marks: list[pickle.PickleBuffer], memo: dict[int, Any]) -> Any:
    """`value` with its large bytes/bytearrays replaced by `_Detached` stand-ins (new containers
    only where something changed; `memo` keeps an object seen twice the same object)."""
    cls = type(value)
    if cls is bytes or cls is bytearray:
        if len(value) < SPLIT_MIN:
            return value
    elif cls not in _CONTAINERS or depth <= 0 or len(value) > _MAX_SEARCHED_ITEMS:
        return value
    key = id(value)
    if key in memo:
        return memo[key]
    if cls is bytes or cls is bytearray:
        replaced: Any = _Detached(value, marks)
    elif cls is dict:
        pairs = {k: _detach(v, depth - 1, marks, memo) for k, v in value.items()}
        changed = any(pairs[k] is not v for k, v in value.items())
        replaced = pairs if changed else value
    else:
        items = [_detach(item, depth - 1, marks, memo) for item in value]
        changed = any(new is not old for new, old in zip(items, value, strict=True))
        replaced = (tuple(items) if cls is tuple else items) if changed else value
    memo[key] = replaced
    return replaced


class SplitPickle:
    """A value pickled with its large buffers out of band, ready to be written to a segment."""

    __slots__ = ("head", "buffers", "flags", "size", "value")

    def __init__(self, value: Any, search_depth: int = _SEARCH_DEPTH) -> None:
        marks: list[pickle.PickleBuffer] = []
        buffers: list[pickle.PickleBuffer] = []
        detached = _detach(value, search_depth, marks, {})
        self.head = pickle.dumps(detached, _PROTOCOL, buffer_callback=buffers.append)
        marked = {id(buffer) for buffer in marks}
        self.buffers = [buffer.raw() for buffer in buffers]
        self.flags = [_COPIED_ON_LOAD if id(b) in marked else 0 for b in buffers]
        self.value = value
        table = _HEADER.size + _ENTRY.size * len(self.buffers)
        self.size = _aligned(table + len(self.head))
        for view in self.buffers:
            self.size = _aligned(self.size + view.nbytes)

    def parts(self) -> list[bytes | memoryview]:
        """The segment's contents as the buffers to write, in order (padding included): the
        payload a front submits, written into a segment when the task is dispatched."""
        entries = []
        offset = _aligned(_HEADER.size + _ENTRY.size * len(self.buffers) + len(self.head))
        for view, flags in zip(self.buffers, self.flags, strict=True):
            entries.append(_ENTRY.pack(offset, view.nbytes, flags))
            offset = _aligned(offset + view.nbytes)
        table = _HEADER.pack(_MAGIC, len(self.buffers), 0, len(self.head)) + b"".join(entries)
        parts: list[bytes | memoryview] = [table, self.head]
        written = len(table) + len(self.head)
        for view in self.buffers:
            padding = _aligned(written) - written
            if padding:
                parts.append(bytes(padding))
                written += padding
            parts.append(view)
            written += view.nbytes
        return parts

    def plain(self) -> bytes:
        """The value as an ordinary pickle (when no segment is available)."""
        return pickle.dumps(self.value, _PROTOCOL)


def _aligned(offset: int) -> int:
    return (offset + _ALIGN - 1) // _ALIGN * _ALIGN


def loads_segment(fd: int, length: int) -> Any:
    """Unpickles the first `length` bytes of a shared-memory segment (a plain or split pickle).
    Used on both sides; see src/engine/segments.rs.

    A split pickle is read with ``pread`` straight into the objects it rebuilds: each large
    ``bytes`` is the very object ``pread`` returns (one copy, no mapping to set up and tear
    down). A plain pickle is unpickled from a mapping of the segment."""
    header = _read_exactly(fd, min(length, _HEADER.size), 0)
    if len(header) < _HEADER.size or not header.startswith(_MAGIC):
        import mmap  # here, not at the top: most workers never see a large payload

        with mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as mapping:
            return pickle.loads(mapping)
    return _loads_split(
        header, length, lambda size, offset, writable: _read_exactly(fd, size, offset, writable)
    )


def loads_buffer(data: bytes) -> Any:
    """Unpickles a plain or split pickle held in memory (a split pickle that went through the
    pipe because no segment could be had)."""
    if not data.startswith(_MAGIC):
        return pickle.loads(data)

    def read(size: int, offset: int, writable: bool) -> bytes | bytearray:
        if writable:  # copied once, straight out of `data` (a slice first would copy twice)
            with memoryview(data) as view, view[offset : offset + size] as piece:
                return bytearray(piece)
        return data[offset : offset + size]

    return _loads_split(data[: _HEADER.size], len(data), read)


def _loads_split(
    header: bytes | bytearray, length: int, read: Callable[[int, int, bool], bytes | bytearray]
) -> Any:
    """Rebuilds a split pickle of `length` bytes whose header is `header`; `read(size,
    offset, writable)` returns `size` bytes of it from `offset`, as a new `bytearray` when
    `writable`."""
    _magic, count, _reserved, head_len = _HEADER.unpack(header)
    table_end = _HEADER.size + _ENTRY.size * count
    if table_end + head_len > length:
        raise pickle.UnpicklingError("rpool: shared-memory segment holds a truncated split pickle")
    front = read(table_end + head_len - _HEADER.size, _HEADER.size, False)
    buffers: list[Any] = []
    for index in range(count):
        offset, size, flags = _ENTRY.unpack_from(front, _ENTRY.size * index)
        if offset + size > length:
            raise pickle.UnpicklingError(
                "rpool: shared-memory segment holds a truncated split pickle"
            )
        # rpool's own stand-ins rebuild `bytes` from a `bytes` without copying; anything else
        # (NumPy arrays, say) gets a private, writable buffer of its own (the segment is
        # reused after this load), read straight into a `bytearray`.
        buffers.append(read(size, offset, not flags & _COPIED_ON_LOAD))
    with memoryview(front) as view:
        return pickle.loads(view[table_end - _HEADER.size :], buffers=buffers)


def _read_exactly(fd: int, size: int, offset: int, writable: bool = False) -> bytes | bytearray:
    """`size` bytes at `offset` of the segment, as a new `bytes` (a `bytearray` when
    `writable`), read straight into it (src/py/fresh.rs)."""
    try:
        return _rpool.pread_bytes(fd, size, offset, writable)
    except EOFError:
        raise pickle.UnpicklingError(
            "rpool: shared-memory segment holds a truncated split pickle"
        ) from None
