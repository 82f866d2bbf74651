"""One benchmark measurement, run in a fresh interpreter by ``benches/run.py``.

Usage::

    python benches/_worker_bench.py IMPL WORKLOAD 'JSON-PARAMS'

``IMPL`` is ``stdlib`` or ``rpool``.  The last line printed on stdout is one JSON object:
``value`` (the headline figure), ``unit``, ``seconds`` (the timed section), ``digest`` (a hash
of the results, compared across implementations by run.py) and ``extra`` (secondary figures).

Pool creation, warm-up and shutdown are outside the timed section, except in ``startup``.
Task functions live in ``_bench_tasks`` so that every start method can import them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import pickle
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import _bench_tasks as tasks

WORKERS = 2
perf = time.perf_counter


# --------------------------------------------------------------------------- helpers


def load_impl(impl: str) -> tuple[Callable[..., Any], Callable[..., Any], str]:
    """Return (Pool class, ProcessPoolExecutor class, where it came from)."""
    if impl == "stdlib":
        import concurrent.futures
        import multiprocessing.pool

        return multiprocessing.pool.Pool, concurrent.futures.ProcessPoolExecutor, "stdlib"
    if impl == "rpool":
        import rpool

        def missing(name: str) -> Callable[..., Any]:
            def fail(*a: Any, **k: Any) -> Any:
                raise SystemExit(f"rpool ({rpool.__file__}) has no {name} yet")

            return fail

        return (
            getattr(rpool, "Pool", None) or missing("Pool"),
            getattr(rpool, "ProcessPoolExecutor", None) or missing("ProcessPoolExecutor"),
            str(getattr(rpool, "__file__", "?")),
        )
    raise SystemExit(f"unknown impl {impl!r} (expected stdlib or rpool)")


def digest(obj: Any) -> str:
    """Stable hash of a result (lists of ints / tuples pickle deterministically)."""
    return hashlib.sha256(pickle.dumps(obj, protocol=4)).hexdigest()[:20]


def digest_bytes(items: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for b in items:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:20]


def ints(n: int) -> list[int]:
    # A real list: nothing may skip the serialization being compared.
    return list(range(n))


def make_pool(Pool: Callable[..., Any], **kw: Any) -> Any:
    pool = Pool(WORKERS, **kw)
    # Warm-up: workers started, imported and answering before anything is timed.
    assert pool.map(tasks.inc, [0, 1, 2, 3], chunksize=1) == [1, 2, 3, 4]
    return pool


def stop_pool(pool: Any) -> None:
    pool.close()
    pool.join()


def make_executor(Executor: Callable[..., Any], **kw: Any) -> Any:
    ex = Executor(WORKERS, **kw)
    futs = [ex.submit(tasks.inc, i) for i in range(2 * WORKERS)]
    assert [f.result() for f in futs] == [1, 2, 3, 4]
    return ex


def chunksize_kw(params: dict[str, Any]) -> dict[str, Any]:
    """Pass ``chunksize`` only when given, so each implementation applies its own default."""
    cs = params.get("chunksize")
    return {} if cs is None else {"chunksize": cs}


def stdlib_map_chunksize(n: int, workers: int = WORKERS) -> int:
    """multiprocessing.Pool._map_async's default: ceil(len / (4 * workers))."""
    cs, extra = divmod(n, workers * 4)
    return cs + 1 if extra else cs


def proc_status() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def result(value: float, unit: str, seconds: float, dig: str, **extra: Any) -> dict[str, Any]:
    return {"value": value, "unit": unit, "seconds": seconds, "digest": dig, "extra": extra}


# --------------------------------------------------------------------------- workloads


def wl_submit(P: Any, E: Any, p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    items = ints(n)
    ex = make_executor(E)
    t0 = perf()
    futs = [ex.submit(tasks.inc, x) for x in items]
    t_sub = perf()
    res = [f.result() for f in futs]
    dt = perf() - t0
    ex.shutdown(wait=True)
    return result(n / dt, "tasks/s", dt, digest(res), submit_seconds=t_sub - t0)


def wl_apply_async(P: Any, E: Any, p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    items = ints(n)
    pool = make_pool(P)
    t0 = perf()
    rs = [pool.apply_async(tasks.inc, (x,)) for x in items]
    t_sub = perf()
    res = [r.get() for r in rs]
    dt = perf() - t0
    stop_pool(pool)
    return result(n / dt, "tasks/s", dt, digest(res), submit_seconds=t_sub - t0)


def pickle_floor(data: list[Any], func: Callable[..., Any], rounds: int = 3) -> float:
    """The parent's own share of a 2-worker Pool.map: pickle.dumps of every input chunk plus
    pickle.loads of every result chunk, chunks cut the stdlib way (len / (4 * 2)).
    Best of ``rounds``."""
    cs = stdlib_map_chunksize(len(data))
    chunks = [data[i : i + cs] for i in range(0, len(data), cs)]
    result_blobs = [pickle.dumps([func(x) for x in c]) for c in chunks]
    best = float("inf")
    for _ in range(rounds):
        t0 = perf()
        for c in chunks:
            pickle.dumps(c)
        for b in result_blobs:
            pickle.loads(b)
        best = min(best, perf() - t0)
    return best


def wl_map(P: Any, E: Any, p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    data = ints(n)
    pool = make_pool(P)
    t0 = perf()
    res = pool.map(tasks.inc, data, **chunksize_kw(p))
    dt = perf() - t0
    stop_pool(pool)
    extra: dict[str, Any] = {}
    if p.get("floor"):
        floor = pickle_floor(data, tasks.inc)
        extra = {"floor_seconds": floor, "floor_multiple": dt / floor}
    return result(n / dt, "items/s", dt, digest(res), **extra)


def wl_starmap(P: Any, E: Any, p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    data = [(x, x) for x in range(n)]
    pool = make_pool(P)
    t0 = perf()
    res = pool.starmap(tasks.add, data, **chunksize_kw(p))
    dt = perf() - t0
    stop_pool(pool)
    return result(n / dt, "items/s", dt, digest(res))


def wl_imap(P: Any, E: Any, p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    data = ints(n)
    pool = make_pool(P)
    meth = pool.imap_unordered if p.get("unordered") else pool.imap
    t0 = perf()
    res = list(meth(tasks.inc, data, **chunksize_kw(p)))
    dt = perf() - t0
    stop_pool(pool)
    if p.get("unordered"):
        res.sort()
    return result(n / dt, "items/s", dt, digest(res))


def wl_exec_map(P: Any, E: Any, p: dict[str, Any]) -> dict[str, Any]:
    n = p["n"]
    data = ints(n)
    ex = make_executor(E)
    t0 = perf()
    res = list(ex.map(tasks.inc, data, **chunksize_kw(p)))
    dt = perf() - t0
    ex.shutdown(wait=True)
    return result(n / dt, "items/s", dt, digest(res))


def wl_cpu(P: Any, E: Any, p: dict[str, Any]) -> dict[str, Any]:
    args = [p["n"] + i for i in range(p["tasks"])]
    t0 = perf()
    serial = [tasks.spin(a) for a in args]
    serial_s = perf() - t0
    if p.get("api", "pool") == "pool":
        pool = make_pool(P)
        t0 = perf()
        res = pool.map(tasks.spin, args, chunksize=1)
        par_s = perf() - t0
        stop_pool(pool)
    else:
        ex = make_executor(E)
        t0 = perf()
        futs = [ex.submit(tasks.spin, a) for a in args]
        res = [f.result() for f in futs]
        par_s = perf() - t0
        ex.shutdown(wait=True)
    if res != serial:
        raise SystemExit("cpu: parallel results differ from the serial ones")
    return result(
        serial_s / par_s,
        "x serial",
        par_s,
        digest(res),
        serial_seconds=serial_s,
        task_ms=1000 * serial_s / len(args),
    )


def wl_payload(P: Any, E: Any, p: dict[str, Any]) -> dict[str, Any]:
    count, mib = p["count"], p["mib"]
    size = mib * 1024 * 1024
    payloads = [random.Random(i).randbytes(size) for i in range(count)]
    if p.get("api", "pool") == "pool":
        pool = make_pool(P)
        t0 = perf()
        rs = [pool.apply_async(tasks.echo, (b,)) for b in payloads]
        out = [r.get() for r in rs]
        dt = perf() - t0
        stop_pool(pool)
    else:
        ex = make_executor(E)
        t0 = perf()
        futs = [ex.submit(tasks.echo, b) for b in payloads]
        out = [f.result() for f in futs]
        dt = perf() - t0
        ex.shutdown(wait=True)
    if out != payloads:
        raise SystemExit("payload: returned bytes differ from the ones sent")
    floor = fresh_memory_floor(count, size)
    return result(count * mib / dt, "MiB/s", dt, digest_bytes(out), floor_mib_s=count * mib / floor)


def fresh_memory_floor(count: int, size: int, rounds: int = 2) -> float:
    """The least a parent must do to hold `count` results of `size` bytes: read each, with one
    copy, into a new bytes object it keeps (``os.pread`` from a memfd). On a VM most of it is
    page allocation, which no implementation avoids. Best of `rounds`, in seconds."""
    fd = os.memfd_create("rpool-bench-floor")
    try:
        os.pwrite(fd, random.Random(0).randbytes(size), 0)
        best = float("inf")
        for _ in range(rounds):
            t0 = perf()
            kept = [os.pread(fd, size, 0) for _ in range(count)]
            best = min(best, perf() - t0)
            del kept
        return best
    finally:
        os.close(fd)


def wl_startup(P: Any, E: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Cycles of create -> first result -> shutdown in one process. Two figures per cycle:
    create -> first result (DESIGN.md's "pool start to first result", the target) and the
    whole cycle including shutdown; each the best over the cycles."""
    import multiprocessing

    ctx = multiprocessing.get_context(p["method"])
    cycles: list[float] = []
    to_result: list[float] = []
    res: list[int] = []
    for i in range(p.get("inner", 3)):
        if p.get("api", "pool") == "pool":
            t0 = perf()
            pool = P(WORKERS, context=ctx)
            r = pool.apply(tasks.inc, (i,))
            t1 = perf()
            pool.close()
            pool.join()
        else:
            t0 = perf()
            ex = E(WORKERS, mp_context=ctx)
            r = ex.submit(tasks.inc, i).result()
            t1 = perf()
            ex.shutdown(wait=True)
        cycles.append(perf() - t0)
        to_result.append(t1 - t0)
        res.append(r)
    best = min(cycles)
    return result(
        best,
        "s",
        best,
        digest(res),
        first_seconds=cycles[0],
        all_seconds=cycles,
        first_result_seconds=min(to_result),
        all_first_result_seconds=to_result,
    )


def wl_memory(P: Any, E: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Parent RSS growth per pending result.  The workers block in ``gated`` on the first task
    they get, so all submitted tasks stay pending until the gate file is created."""
    n, collect = p["n"], p.get("collect", 1000)
    items = ints(n)
    tmp = tempfile.mkdtemp(prefix="rpool-bench-")
    gate = os.path.join(tmp, "gate")
    os.environ[tasks.GATE_ENV] = gate  # inherited by fork and spawn workers alike
    api = p.get("api", "pool")
    obj = make_pool(P) if api == "pool" else make_executor(E)
    gc.collect()
    time.sleep(0.05)
    base = proc_status()["VmRSS"]
    hwm_ok = reset_peak_rss()
    t0 = perf()
    if api == "pool":
        pend = [obj.apply_async(tasks.gated, (x,)) for x in items]
    else:
        pend = [obj.submit(tasks.gated, x) for x in items]
    submit_s = perf() - t0
    time.sleep(0.2)  # let dispatcher threads settle on whatever they buffer
    st = proc_status()
    peak = max(st["VmHWM"], st["VmRSS"]) if hwm_ok else st["VmRSS"]
    growth = peak - base
    open(gate, "w").close()
    if api == "pool":
        got = [r.get() for r in pend[:collect]]
        obj.terminate()
        obj.join()
    else:
        got = [f.result() for f in pend[:collect]]
        obj.shutdown(wait=True, cancel_futures=True)
    os.unlink(gate)
    os.rmdir(tmp)
    return result(
        growth / n,
        "B/result",
        submit_s,
        digest(got),
        rss_growth=st["VmRSS"] - base,
        peak_growth=growth,
        hwm_reset=hwm_ok,
        submit_seconds=submit_s,
    )


def wl_sweep(P: Any, E: Any, p: dict[str, Any]) -> dict[str, Any]:
    """N trivial items pushed four ways at one chunksize c."""
    n, c, method = p["n"], p["c"], p["method"]
    data = ints(n)
    chunks = [data[i : i + c] for i in range(0, n, c)]
    if method in ("submit", "exec_map"):
        obj = make_executor(E)
    else:
        obj = make_pool(P)
    t0 = perf()
    if method == "submit":
        futs = [obj.submit(tasks.inc_list, ch) for ch in chunks]
        res = [x for f in futs for x in f.result()]
    elif method == "apply_async":
        rs = [obj.apply_async(tasks.inc_list, (ch,)) for ch in chunks]
        res = [x for r in rs for x in r.get()]
    elif method == "pool_map":
        res = obj.map(tasks.inc, data, chunksize=c)
    elif method == "exec_map":
        res = list(obj.map(tasks.inc, data, chunksize=c))
    else:
        raise SystemExit(f"unknown sweep method {method!r}")
    dt = perf() - t0
    if method in ("submit", "exec_map"):
        obj.shutdown(wait=True)
    else:
        stop_pool(obj)
    return result(n / dt, "items/s", dt, digest(res))


def wl_calibrate(P: Any, E: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Iterations of ``spin`` that take ``target_ms`` on this machine."""
    probe = 200_000
    best = float("inf")
    for _ in range(5):
        t0 = perf()
        tasks.spin(probe)
        best = min(best, perf() - t0)
    n = int(probe * (p["target_ms"] / 1000) / best)
    return result(n, "iterations", best, "-")


WORKLOADS: dict[str, Callable[[Any, Any, dict[str, Any]], dict[str, Any]]] = {
    "submit": wl_submit,
    "apply_async": wl_apply_async,
    "map": wl_map,
    "starmap": wl_starmap,
    "imap": wl_imap,
    "exec_map": wl_exec_map,
    "cpu": wl_cpu,
    "payload": wl_payload,
    "startup": wl_startup,
    "memory": wl_memory,
    "sweep": wl_sweep,
    "calibrate": wl_calibrate,
}


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    impl, name, params = argv[1], argv[2], json.loads(argv[3])
    if name not in WORKLOADS:
        raise SystemExit(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    P, E, origin = load_impl(impl)
    out = WORKLOADS[name](P, E, params)
    out.update(impl=impl, workload=name, params=params, origin=origin, pid=os.getpid())
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
