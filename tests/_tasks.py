"""Task functions for the rpool tests.

Everything here runs inside pool workers, so it must be importable by name in a spawned
child (conftest puts this directory on PYTHONPATH). Keep tasks tiny and side effects
visible to the parent: return values, files under a tmp_path, or queues.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

# --- plain values ----------------------------------------------------------------------


def square(x):
    return x * x


def add(a, b):
    return a + b


def identity(x):
    return x


def sleep_and_return(seconds, value=None):
    time.sleep(seconds)
    return value


def reverse_delay(x):
    """Return `x` after a delay that shrinks as `x` grows (later items finish first)."""
    time.sleep(max(0.0, 0.2 - 0.01 * x))
    return x


def getpid(_=None):
    return os.getpid()


def current_process_name(_=None):
    return multiprocessing.current_process().name


# --- failures --------------------------------------------------------------------------


def raise_value_error(*args):
    raise ValueError(*args)


def return_unpicklable(_=None):
    return threading.Lock()


def unpicklable_if(x, bad):
    """Return `x`, except an unpicklable lock when `x == bad`."""
    return threading.Lock() if x == bad else x


class TwoArgError(Exception):
    """Pickles fine but cannot be unpickled: pickle calls TwoArgError(message)."""

    def __init__(self, left, right):
        super().__init__(f"bad pair: {left}/{right}")
        self.left = left
        self.right = right


def raise_unpicklable_exception(left="left", right="right"):
    raise TwoArgError(left, right)


def sigint_handler(_=None):
    """The worker's SIGINT disposition as Python records it."""
    return signal.getsignal(signal.SIGINT)


def pipes_leaked_to_programs(_=None):
    """Pipes the worker holds privately (non-inheritable descriptors, e.g. its task and result
    pipes) that a program started with ``close_fds=False`` still holds: their inode numbers."""
    import subprocess
    import sys

    def pipe_inodes(listing):
        return {target for target in listing if target.startswith("pipe:")}

    private = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.get_inheritable(int(name)):
                private.add(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass
    lister = (
        "import os\n"
        "for n in os.listdir('/proc/self/fd'):\n"
        "    try: print(os.readlink('/proc/self/fd/' + n))\n"
        "    except OSError: pass\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", lister], close_fds=False, capture_output=True, text=True, check=True
    ).stdout
    return sorted(pipe_inodes(private) & pipe_inodes(out.split()))


def os_exit(code):
    os._exit(code)


def kill_self(sig=signal.SIGKILL):
    os.kill(os.getpid(), sig)
    time.sleep(30)  # only reached if the signal is ignored or handled


def kill_self_once(marker_path, sig=signal.SIGKILL):
    """Kill the worker on the first attempt (no marker yet); succeed on a retry."""
    if not os.path.exists(marker_path):
        with open(marker_path, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), sig)
        time.sleep(30)
    return "survived"


def exit_once(marker_path, code=3):
    if not os.path.exists(marker_path):
        with open(marker_path, "w") as f:
            f.write(str(os.getpid()))
        os._exit(code)
    return "survived"


# --- initializers and per-worker state -------------------------------------------------

_INIT_VALUE = None
_INIT_COUNT = 0


def touch(path):
    """Writes this worker's pid to ``path``: proof that the task ran."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    return os.getpid()


def record_init(value):
    global _INIT_VALUE, _INIT_COUNT
    _INIT_VALUE = value
    _INIT_COUNT += 1


def worker_state(_=None):
    """(pid, value given to record_init, number of record_init calls in this process)."""
    return os.getpid(), _INIT_VALUE, _INIT_COUNT


def failing_initializer(*_args):
    raise RuntimeError("initializer failed on purpose")


_QUEUE = None


def init_queue(q):
    global _QUEUE
    _QUEUE = q


def put_in_global_queue(x):
    _QUEUE.put(x)
    return x


def put_in_queue(q, x):
    q.put(x)
    return x


def set_in_dict(d, key, value):
    d[key] = value
    return key


# --- blocking on the parent ------------------------------------------------------------


def block_until(release_path, started_dir=None, timeout=30.0):
    """Announce this worker in `started_dir` (a file named by pid), then wait until
    `release_path` exists. Returns worker_state(). Gives deterministic "all workers busy"
    states without timing guesses."""
    if started_dir is not None:
        with open(os.path.join(started_dir, str(os.getpid())), "w"):
            pass
    deadline = time.monotonic() + timeout
    while not os.path.exists(release_path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release_path} was not created within {timeout} s")
        time.sleep(0.01)
    return worker_state()


def block_on(spec):
    """block_until for map(): `spec` is (release_path, started_dir)."""
    return block_until(*spec)


def raise_value_error_if_odd(x):
    if x % 2:
        raise ValueError("odd", x)
    return x


# --- crash matrix: fail at a chosen stage of a task's round trip -----------------------


class CrashError(Exception):
    pass


def crash_now(kind, stage):
    """Fail the current process in one of four ways, naming `stage` where it can."""
    if kind == "exception":
        raise CrashError(f"crash during {stage}")
    if kind == "systemexit":
        raise SystemExit(7)
    if kind == "os_exit":
        os._exit(7)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(30)
    raise AssertionError(f"unknown crash kind {kind!r}")


class CrashOnPickle:
    """Fails when pickled (in whichever process pickles it)."""

    def __init__(self, kind):
        self.kind = kind

    def __reduce__(self):
        crash_now(self.kind, "pickle")


class CrashOnUnpickle:
    """Pickles fine; fails in whichever process unpickles it."""

    def __init__(self, kind):
        self.kind = kind

    def __reduce__(self):
        return crash_now, (self.kind, "unpickle")


def return_crash_on_pickle(kind):
    return CrashOnPickle(kind)


def return_crash_on_unpickle(kind):
    return CrashOnUnpickle(kind)


# --- rpool extensions: worker_state(), cloudpickle, stats --------------------------------


def open_db(path):
    """Initializer: one sqlite3 connection per worker, kept in rpool.worker_state()."""
    import sqlite3

    import rpool

    state = rpool.worker_state()
    state.db = sqlite3.connect(path)
    state.queries = 0


def db_lookup(key):
    """(pid, id of this worker's connection, queries this worker ran, value for key)."""
    import rpool

    state = rpool.worker_state()
    state.queries += 1
    row = state.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
    return os.getpid(), id(state.db), state.queries, row[0]


def count_in_state(_=None):
    """Counts this worker's calls in rpool.worker_state(); returns (pid, count)."""
    import rpool

    state = rpool.worker_state()
    state.calls = getattr(state, "calls", 0) + 1
    return os.getpid(), state.calls


def state_keys(_=None):
    """The attribute names in this worker's rpool.worker_state()."""
    import rpool

    return sorted(vars(rpool.worker_state()))


def call_with(func, value):
    """Calls `func(value)` in the worker (func may be a lambda sent with cloudpickle)."""
    return func(value)


def make_adder(k):
    """A closure: standard pickle refuses it, cloudpickle sends it by value."""

    def add_k(x):
        return x + k

    return add_k


_LAMBDA_INIT = None


def store_for_lambda_init(value):
    global _LAMBDA_INIT
    _LAMBDA_INIT = value


def read_lambda_init(_=None):
    return _LAMBDA_INIT


def busy_for(seconds):
    """Spins (not sleeps) for `seconds` so busy time shows up in stats."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return os.getpid()


def pattern_bytes(size, seed=0):
    """`size` bytes that differ by `seed` (cheap to build, easy to check)."""
    block = bytes((seed + i) % 256 for i in range(256))
    return (block * (size // 256 + 1))[:size]


def checksum_and_echo(data):
    """Returns (length, sum of a sample, the data itself): proves the worker saw every byte."""
    return len(data), sum(data[::4096]), data


def describe_values(*args, **kwargs):
    """(type name, length) of every argument and keyword argument, and whether the first two
    positional arguments are the same object: what a worker received, without echoing it."""
    seen = [(type(a).__name__, len(a)) for a in args]
    named = {k: (type(v).__name__, len(v)) for k, v in kwargs.items()}
    same = len(args) >= 2 and args[0] is args[1]
    return seen, named, same


def build_nested_result(size, seed=0):
    """A result with large buffers inside small containers (built in the worker)."""
    data = pattern_bytes(size, seed)
    return {"raw": data, "mutable": bytearray(data), "pair": (data, 7), "small": b"x"}


class OwnBuffer:
    """Hands its buffer to protocol-5 pickling out of band, like a NumPy array does."""

    def __init__(self, data):
        self.data = bytearray(data)

    @property
    def nbytes(self):
        return len(self.data)

    def __reduce_ex__(self, protocol):
        import pickle

        if protocol >= 5:
            return (OwnBuffer._rebuild, (pickle.PickleBuffer(self.data),))
        return (OwnBuffer, (bytes(self.data),))

    @staticmethod
    def _rebuild(buffer):
        value = OwnBuffer.__new__(OwnBuffer)
        # Keep whatever was handed over (as NumPy does): the loader must give a private copy.
        value.data = buffer if isinstance(buffer, bytearray) else bytearray(buffer)
        return value


def own_buffer_sum(value):
    """Sum of a sample of an `OwnBuffer`, and a new `OwnBuffer` with the data reversed."""
    return sum(value.data[::4096]), OwnBuffer(bytes(value.data[::-1]))


class SlowToPickle:
    """Pickles (in the parent) as the int `value`, after sleeping `delay` seconds."""

    def __init__(self, value, delay):
        self.value = value
        self.delay = delay

    def __reduce__(self):
        time.sleep(self.delay)
        return (int, (self.value,))


def echo_args(*args):
    return args


def stop_at_three(x, *_rest):
    """Raises StopIteration for 3: a bug that `map` would turn into silently missing results."""
    if x == 3:
        raise StopIteration("three")
    return x


def _load_interrupting_once(value, marker):
    """Runs in the parent while it unpickles a result: Ctrl+C the first time (while the marker
    file exists), the value after that."""
    try:
        os.unlink(marker)
    except FileNotFoundError:
        return value
    raise KeyboardInterrupt


class InterruptsOnceOnLoad:
    def __init__(self, value, marker):
        self.value, self.marker = value, marker

    def __reduce__(self):
        return (_load_interrupting_once, (self.value, self.marker))


def interrupt_once_on_load(value, marker):
    return InterruptsOnceOnLoad(value, marker)
