"""rpool benchmark suite: rpool against the Python stdlib, 2 workers, same run.

    python benches/run.py                 # everything, 5 repetitions (~6-10 min on 2 cores)
    python benches/run.py --quick         # reduced set, 3 repetitions (< 2 min)
    python benches/run.py --only map,sweep --reps 7 --json out.json --plot /tmp/plots

Every measurement runs in a fresh interpreter (``_worker_bench.py``); stdlib and rpool
runs are interleaved A B A B ... and the rpool/stdlib ratio is computed per pair, then
the median is reported.  Before any timing, each workload is run once per implementation
(smaller inputs) and rpool's results must hash to the same digest as the stdlib's; timed
runs are digest-checked again.  See benches/README.md for what each workload measures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_worker_bench.py"
DEFAULT_RESULTS = HERE / "results"
WORKERS = 2
IMPLS = ("stdlib", "rpool")
SWEEP_METHODS = {
    "submit": "Executor.submit per chunk",
    "apply_async": "Pool.apply_async per chunk",
    "pool_map": "Pool.map(chunksize=c)",
    "exec_map": "Executor.map(chunksize=c)",
}
SWEEP_CHUNKS_FULL = [1, 4, 16, 64, 256, 1024, 4096, 16384]
SWEEP_CHUNKS_QUICK = [1, 16, 256, 4096]


class MeasureError(RuntimeError):
    pass


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Measure:
    """One kind of subprocess run; ``group``: measures whose result digests must agree."""

    key: str
    impl: str
    wl: str
    params: dict[str, Any]
    group: str = "main"


@dataclass
class Row:
    workload: str
    title: str
    unit: str
    stdlib: list[float]
    rpool: list[float]
    ratios: list[float]
    target: str = "—"
    met: bool | None = None
    lower_is_better: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    target_ratio: float | None = None  # when the target is a threshold on the ratio itself


RowFn = Callable[["Workload", list[dict[str, dict[str, Any]]]], list[Row]]


@dataclass
class Workload:
    name: str
    measures: list[Measure]
    rows: RowFn
    check: dict[str, Any] = field(default_factory=dict)  # param overrides for the check run
    runs: list[dict[str, dict[str, Any]]] = field(default_factory=list)  # per rep: key -> result
    check_results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def ab(wl: str, params: dict[str, Any], suffix: str = "", group: str = "main") -> list[Measure]:
    """The stdlib/rpool pair of a workload (stdlib first: A B A B ...)."""
    return [Measure(impl + suffix, impl, wl, params, group) for impl in IMPLS]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# --------------------------------------------------------------------------- row builders


def pair_row(
    title: str,
    field_: str = "value",
    suffix: str = "",
    lower_is_better: bool = False,
    min_ratio: float | None = None,
    target: str = "—",
    unit: str | None = None,
) -> RowFn:
    """stdlib vs rpool on one figure; ratio = rpool speed-up (always 'higher is better')."""

    def build(w: Workload, reps: list[dict[str, dict[str, Any]]]) -> list[Row]:
        def get(r: dict[str, Any]) -> float:
            return float(r[field_] if field_ in ("value", "seconds") else r["extra"][field_])

        a = [get(rep["stdlib" + suffix]) for rep in reps]
        b = [get(rep["rpool" + suffix]) for rep in reps]
        ratios = [(x / y if lower_is_better else y / x) for x, y in zip(a, b, strict=True)]
        met = None if min_ratio is None else median(ratios) >= min_ratio
        u = unit or reps[0]["stdlib" + suffix]["unit"]
        row = Row(w.name, title, u, a, b, ratios, target, met, lower_is_better)
        row.target_ratio = min_ratio
        return [row]

    return build


def rows_concat(*fns: RowFn) -> RowFn:
    def build(w: Workload, reps: list[dict[str, dict[str, Any]]]) -> list[Row]:
        return [row for fn in fns for row in fn(w, reps)]

    return build


def floor_row(title: str, max_multiple: float) -> RowFn:
    """map time ÷ the parent's own pickle floor (measured in the same subprocess)."""
    inner = pair_row(title, "floor_multiple", lower_is_better=True, unit="x floor")

    def build(w: Workload, reps: list[dict[str, dict[str, Any]]]) -> list[Row]:
        (row,) = inner(w, reps)
        row.target = f"≤ {max_multiple:g}× floor"
        row.met = median(row.rpool) <= max_multiple
        floors = [rep[k]["extra"]["floor_seconds"] for rep in reps for k in IMPLS]
        row.extra["floor_seconds"] = floors
        return [row]

    return build


def cpu_row(title: str, suffix: str = "") -> RowFn:
    need = 0.95 * WORKERS
    inner = pair_row(title, suffix=suffix)

    def build(w: Workload, reps: list[dict[str, dict[str, Any]]]) -> list[Row]:
        (row,) = inner(w, reps)
        row.target = f"≥ {need:.2f}× serial"
        row.met = median(row.rpool) >= need
        row.extra["task_ms"] = [rep[k + suffix]["extra"]["task_ms"] for rep in reps for k in IMPLS]
        return [row]

    return build


def payload_rows(title: str) -> RowFn:
    """Each rpool API against the faster of stdlib Pool and stdlib executor, per repetition."""

    def build(w: Workload, reps: list[dict[str, dict[str, Any]]]) -> list[Row]:
        best = [max(rep["stdlib:pool"]["value"], rep["stdlib:exec"]["value"]) for rep in reps]
        rows = []
        for api, label in (("pool", "Pool.apply_async"), ("exec", "Executor.submit")):
            b = [rep["rpool:" + api]["value"] for rep in reps]
            ratios = [y / x for x, y in zip(best, b, strict=True)]
            row = Row(w.name, f"{title}, rpool {label} vs faster stdlib", "MiB/s", best, b, ratios)
            row.target, row.met = "≥ 2× faster stdlib", median(ratios) >= 2.0
            row.target_ratio = 2.0
            row.extra = {
                "stdlib_pool": [rep["stdlib:pool"]["value"] for rep in reps],
                "stdlib_exec": [rep["stdlib:exec"]["value"] for rep in reps],
                # The parent's fresh-memory floor, measured in each rpool subprocess.
                "floor_mib_s": [rep["rpool:" + api]["extra"]["floor_mib_s"] for rep in reps],
                "of_floor": [
                    rep["rpool:" + api]["value"] / rep["rpool:" + api]["extra"]["floor_mib_s"]
                    for rep in reps
                ],
            }
            rows.append(row)
        return rows

    return build


def startup_rows(method: str, apis: list[str]) -> RowFn:
    """Per API: create -> first result (DESIGN.md's start-up target), then the whole cycle
    with shutdown (reported, no target: DESIGN.md's measure ends at the first result)."""
    labels = {"pool": "Pool", "exec": "ProcessPoolExecutor"}
    fns = []
    for a in apis:
        fns.append(
            pair_row(
                f"start-up ({method}): {labels[a]} create → first result",
                "first_result_seconds",
                suffix=":" + a,
                lower_is_better=True,
                min_ratio=1.0,
                target="≤ stdlib",
                unit="s",
            )
        )
        fns.append(
            pair_row(
                f"start-up ({method}): {labels[a]} create → first result → shutdown",
                suffix=":" + a,
                lower_is_better=True,
            )
        )
    return rows_concat(*fns)


# --------------------------------------------------------------------------- workloads


def build_workloads(quick: bool, spin_n: int | None, everything: bool = False) -> list[Workload]:
    """The workloads in run order; ``quick`` shrinks sizes and (unless ``everything``, used
    with --only) leaves out the workloads that have no target."""
    W: list[Workload] = []
    full_set = not quick or everything

    def add(name: str, measures: list[Measure], rows: RowFn, **check: Any) -> None:
        W.append(Workload(name, measures, rows, check))

    n_tasks = 20_000
    add(
        "submit",
        ab("submit", {"n": n_tasks}),
        pair_row(
            f"submit + result, {n_tasks // 1000}k trivial tasks", min_ratio=10, target="≥ 10×"
        ),
        n=500,
    )
    add(
        "apply_async",
        ab("apply_async", {"n": n_tasks}),
        pair_row(
            f"apply_async + get, {n_tasks // 1000}k trivial tasks", min_ratio=5, target="≥ 5×"
        ),
        n=500,
    )
    add(
        "map",
        ab("map", {"n": 1_000_000, "floor": True}),
        rows_concat(
            pair_row("Pool.map, 1M ints, default chunksize"),
            floor_row("Pool.map, 1M ints, time ÷ parent pickle floor", 1.5),
        ),
        n=20_000,
    )
    if full_set:
        add(
            "map_c10k",
            ab("map", {"n": 1_000_000, "chunksize": 10_000}),
            pair_row("Pool.map, 1M ints, chunksize=10000"),
            n=50_000,
        )
        add(
            "starmap",
            ab("starmap", {"n": 1_000_000}),
            pair_row("Pool.starmap, 1M pairs, default chunksize"),
            n=20_000,
        )
        add(
            "imap",
            ab("imap", {"n": 100_000}),
            pair_row("Pool.imap, 100k ints, default chunksize"),
            n=2_000,
        )
        add(
            "imap_unordered",
            ab("imap", {"n": 100_000, "unordered": True}),
            pair_row("Pool.imap_unordered, 100k ints, default chunksize"),
            n=2_000,
        )
    n_emap = 20_000 if quick else 50_000
    add(
        "exec_map",
        ab("exec_map", {"n": n_emap}),
        pair_row(
            f"Executor.map, {n_emap // 1000}k ints, default chunksize",
            min_ratio=100,
            target="≥ 100×",
        ),
        n=1_000,
    )
    if full_set:
        add(
            "exec_map_c1000",
            ab("exec_map", {"n": 50_000, "chunksize": 1000}),
            pair_row("Executor.map, 50k ints, chunksize=1000"),
            n=5_000,
        )
    if spin_n is not None:
        n_cpu = 32 if quick else 64
        cpu_p = {"n": spin_n, "tasks": n_cpu}
        add(
            "cpu",
            ab("cpu", cpu_p),
            cpu_row(f"CPU-bound: {n_cpu} × 20 ms, Pool.map(chunksize=1), speed-up"),
            n=spin_n // 20,
            tasks=4,
        )
        if full_set:
            add(
                "cpu_exec",
                ab("cpu", {**cpu_p, "api": "exec"}),
                cpu_row(f"CPU-bound: {n_cpu} × 20 ms, Executor.submit, speed-up"),
                n=spin_n // 20,
                tasks=4,
            )
    count = 16 if quick else 32
    pay: list[Measure] = []
    for api in ("pool", "exec"):
        pay += ab("payload", {"count": count, "mib": 8, "api": api}, suffix=":" + api)
    add(
        "payload",
        pay,
        payload_rows(f"{count} × 8 MiB bytes in+out"),
        count=2,
    )
    apis = ["pool", "exec"] if full_set else ["pool"]
    for method in ("fork", "spawn"):
        ms: list[Measure] = []
        for api in apis:
            p = {"method": method, "api": api, "inner": 3}
            ms += ab("startup", p, suffix=":" + api, group=api)
        add(f"startup_{method}", ms, startup_rows(method, apis), inner=1)
    n_mem = 100_000 if quick else 200_000
    add(
        "memory",
        ab("memory", {"n": n_mem, "api": "pool"}),
        pair_row(
            f"parent RSS per pending apply_async result ({n_mem // 1000}k pending)",
            lower_is_better=True,
            min_ratio=3.0,
            target="≤ ⅓ of stdlib",
        ),
        n=2_000,
        collect=2_000,
    )
    if full_set:
        add(
            "memory_exec",
            ab("memory", {"n": n_mem, "api": "exec"}),
            pair_row(
                f"parent RSS per pending submit() future ({n_mem // 1000}k pending)",
                lower_is_better=True,
                target="— (info)",
            ),
            n=2_000,
            collect=2_000,
        )
    # The Future-overhead-vs-batching sweep.
    chunks = SWEEP_CHUNKS_QUICK if quick else SWEEP_CHUNKS_FULL
    sw: list[Measure] = []
    for method in SWEEP_METHODS:
        for c in chunks:
            n = sweep_n(c, quick)
            sw += ab("sweep", {"method": method, "c": c, "n": n}, f":{method}:{c}", f"{method}:{c}")
    W.append(Workload("sweep", sw, sweep_rows, {"c": 4, "n": 1000}))
    return W


def sweep_n(c: int, quick: bool) -> int:
    """Items per sweep point: enough that the timed part is not a few milliseconds."""
    if quick:
        return max(5_000, min(250_000, 250 * c), 16 * c)
    return max(20_000, min(1_000_000, 1000 * c), 32 * c)


def sweep_rows(w: Workload, reps: list[dict[str, dict[str, Any]]]) -> list[Row]:
    rows = []
    for m in w.measures:
        if m.impl != "stdlib":
            continue
        _, method, c = m.key.split(":")
        a = [rep[m.key]["value"] for rep in reps]
        b = [rep[f"rpool:{method}:{c}"]["value"] for rep in reps]
        row = Row(
            w.name, f"{method} c={c}", "items/s", a, b, [y / x for x, y in zip(a, b, strict=True)]
        )
        row.extra = {"method": method, "chunksize": int(c), "n": m.params["n"]}
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- running


def run_measure(m: Measure, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(WORKER), m.impl, m.wl, json.dumps(params)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired as e:
        raise MeasureError(f"{m.impl} {m.wl} {params}: timed out after {timeout:.0f} s") from e
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n    ".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise MeasureError(f"{m.impl} {m.wl} {params}: exit status {proc.returncode}\n    {tail}")
    out: dict[str, Any] = json.loads(lines[-1])
    out["wall"] = time.perf_counter() - t0
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_workload(w: Workload, timeout: float) -> None:
    """Run each distinct measure once with the check parameters; digests must agree."""
    seen: dict[str, dict[str, Any]] = {}
    digests: dict[tuple[str, str], dict[str, str]] = {}
    for m in w.measures:
        params = {**m.params, **w.check}
        ident = json.dumps([m.impl, m.wl, params], sort_keys=True)
        if ident not in seen:
            res = run_measure(m, params, timeout)
            res["check_key"] = m.key
            seen[ident] = res
            w.check_results.append(res)
        group_id = (m.group, json.dumps(params | {"api": None}, sort_keys=True))
        digests.setdefault(group_id, {})[m.key] = seen[ident]["digest"]
    for (group, _), by_key in digests.items():
        if len(set(by_key.values())) > 1:
            raise MeasureError(
                f"RESULT MISMATCH in {w.name!r} (group {group}): rpool's results differ from "
                f"the stdlib's: {by_key}"
            )


def time_workload(w: Workload, reps: int, timeout: float) -> None:
    for rep in range(reps):
        got: dict[str, dict[str, Any]] = {}
        for m in w.measures:
            got[m.key] = run_measure(m, m.params, timeout)
        w.runs.append(got)
        if w.name != "sweep":
            log(
                f"  [{w.name}] rep {rep + 1}/{reps}: "
                + ", ".join(f"{k} {fmt(v['value'], v['unit'])}" for k, v in got.items())
            )
        else:
            log(f"  [sweep] rep {rep + 1}/{reps} done")
    # Digests of the timed runs must agree too (same params within a group).
    by_group: dict[tuple[str, str], set[str]] = {}
    for got in w.runs:
        for m in w.measures:
            gid = (m.group, json.dumps(m.params | {"api": None}, sort_keys=True))
            by_group.setdefault(gid, set()).add(got[m.key]["digest"])
    bad = {g: d for g, d in by_group.items() if len(d) > 1}
    if bad:
        raise MeasureError(f"RESULT MISMATCH in timed runs of {w.name!r}: {bad}")


# --------------------------------------------------------------------------- formatting


def si(v: float) -> str:
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


def fmt(v: float, unit: str) -> str:
    if unit in ("tasks/s", "items/s"):
        return f"{si(v)}/s"
    if unit == "s":
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "MiB/s":
        return f"{v:.0f} MiB/s"
    if unit == "B/result":
        return f"{v:.0f} B"
    if unit in ("x serial", "x floor"):
        return f"{v:.2f}×"
    return f"{v:.4g} {unit}"


def cell(xs: list[float], unit: str) -> str:
    if len(xs) == 1:
        return fmt(xs[0], unit)
    return f"{fmt(median(xs), unit)} ({fmt(min(xs), unit)}–{fmt(max(xs), unit)})"


def ratio_cell(rs: list[float]) -> str:
    if len(rs) == 1:
        return f"{rs[0]:.2f}×"
    return f"{median(rs):.2f}× ({min(rs):.2f}–{max(rs):.2f})"


def met_cell(met: bool | None) -> str:
    return "—" if met is None else ("met" if met else "**not met**")


def markdown_table(rows: list[Row], failed: dict[str, str], order: list[str]) -> str:
    out = [
        "| workload | stdlib | rpool | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in order:
        if name in failed:
            out.append(f"| {name} | — | — | — | — | **FAILED** ({failed[name]}) |")
            continue
        for r in rows:
            if r.workload == name and r.workload != "sweep":
                out.append(
                    f"| {r.title} | {cell(r.stdlib, r.unit)} | {cell(r.rpool, r.unit)} | "
                    f"{ratio_cell(r.ratios)} | {r.target} | {met_cell(r.met)} |"
                )
    return "\n".join(out)


def sweep_table(rows: list[Row]) -> str:
    rows = [r for r in rows if r.workload == "sweep"]
    if not rows:
        return ""
    out = [
        "| way | chunksize | items | stdlib | rpool | ratio |",
        "| --- | ---: | ---: | --- | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {SWEEP_METHODS[r.extra['method']]} | {r.extra['chunksize']} | {r.extra['n']} | "
            f"{cell(r.stdlib, r.unit)} | {cell(r.rpool, r.unit)} | {ratio_cell(r.ratios)} |"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------- plots


def plot_all(rows: list[Row], outdir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    written = []

    sweep = [r for r in rows if r.workload == "sweep"]
    if sweep:
        fig, ax = plt.subplots(figsize=(9, 6))
        colors = dict(
            zip(SWEEP_METHODS, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=True)
        )
        for method, label in SWEEP_METHODS.items():
            for impl, style, marker in (("stdlib", "--", "o"), ("rpool", "-", "s")):
                pts = sorted(
                    (r.extra["chunksize"], getattr(r, impl))
                    for r in sweep
                    if r.extra["method"] == method
                )
                if not pts:
                    continue
                xs = [c for c, _ in pts]
                med = [median(v) for _, v in pts]
                lo = [m - min(v) for m, (_, v) in zip(med, pts, strict=True)]
                hi = [max(v) - m for m, (_, v) in zip(med, pts, strict=True)]
                ax.errorbar(
                    xs,
                    med,
                    yerr=[lo, hi],
                    linestyle=style,
                    marker=marker,
                    color=colors[method],
                    capsize=3,
                    linewidth=2.0 if impl == "rpool" else 1.3,
                    label=f"{impl}: {label}",
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({r.extra["chunksize"] for r in sweep})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("chunksize (items per task / per chunk)")
        ax.set_ylabel("throughput (items/s)")
        ax.set_title(
            f"Future overhead vs batching, {WORKERS} workers (median, bars: min–max)\n"
            "dashed: stdlib, solid: rpool"
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        p = outdir / "sweep.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)

    main = [r for r in rows if r.workload != "sweep"]
    if main:
        fig, ax = plt.subplots(figsize=(12, 0.45 * len(main) + 1.6))
        ys = list(range(len(main)))[::-1]
        meds = [median(r.ratios) for r in main]
        errs = [
            [m - min(r.ratios) for m, r in zip(meds, main, strict=True)],
            [max(r.ratios) - m for m, r in zip(meds, main, strict=True)],
        ]
        colors = [
            "tab:gray" if r.met is None else ("tab:green" if r.met else "tab:red") for r in main
        ]
        # Bars grow from 1 (parity) so that "worse than stdlib" points left on the log axis.
        ax.barh(ys, [m - 1 for m in meds], left=1, xerr=errs, color=colors, capsize=3)
        for y, r in zip(ys, main, strict=True):
            if r.target_ratio is not None:
                ax.plot([r.target_ratio], [y], marker="|", markersize=18, color="black")
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(ys, [r.title for r in main], fontsize=8)
        ax.set_xscale("log")
        lo = min([min(r.ratios) for r in main] + [0.5])
        hi = max([max(r.ratios) for r in main] + [r.target_ratio or 1 for r in main] + [2])
        ax.set_xlim(lo / 1.5, hi * 1.5)
        ax.set_xlabel(
            "rpool speed-up over stdlib (median of per-pair ratios, bars: min–max; "
            "| = target; >1 = rpool better)"
        )
        ax.set_title("rpool vs stdlib (green: target met, red: not met, gray: no target)")
        ax.grid(True, axis="x", which="both", alpha=0.3)
        fig.subplots_adjust(left=0.42, right=0.98, top=0.9, bottom=0.6 / (0.45 * len(main) + 1.6))
        fig.tight_layout()
        p = outdir / "summary.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        written.append(p)
    return written


# --------------------------------------------------------------------------- main


def select(workloads: list[Workload], only: str | None) -> list[Workload]:
    if not only:
        return workloads
    names = [w.name for w in workloads]
    chosen: list[str] = []
    for want in (s.strip() for s in only.split(",") if s.strip()):
        hits = [want] if want in names else [n for n in names if n.startswith(want + "_")]
        if not hits:
            raise SystemExit(f"--only: unknown workload {want!r}; known: {', '.join(names)}")
        chosen += [h for h in hits if h not in chosen]
    return [w for w in workloads if w.name in chosen]


def all_names(quick: bool) -> list[str]:
    return [w.name for w in build_workloads(quick, 1)]


def meta(args: argparse.Namespace, reps: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "workers": WORKERS,
        "reps": reps,
        "quick": args.quick,
        "loadavg_start": os.getloadavg(),
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "import rpool; print(rpool.__file__)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        info["rpool"] = proc.stdout.strip() or f"IMPORT FAILED: {proc.stderr.strip()[-300:]}"
    except Exception as e:  # pragma: no cover - informational only
        info["rpool"] = f"? ({e})"
    try:
        info["git"] = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except Exception:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced set, 3 reps (< 2 min)")
    ap.add_argument("--only", metavar="NAME[,NAME]", help="workloads to run (see --list)")
    ap.add_argument("--reps", type=int, help="repetitions per implementation (quick 3, full 5)")
    ap.add_argument("--json", metavar="PATH", help="write raw figures as JSON")
    ap.add_argument(
        "--plot",
        metavar="DIR",
        nargs="?",
        const=str(DEFAULT_RESULTS),
        help=f"write PNGs to DIR (default {DEFAULT_RESULTS.relative_to(HERE.parent)}/); "
        "a full run (no --quick/--only) plots there unless --no-plot",
    )
    ap.add_argument("--no-plot", action="store_true", help="never plot")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-subprocess limit (s)")
    ap.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is not met")
    ap.add_argument("--list", action="store_true", help="list workload names and exit")
    args = ap.parse_args(argv)

    if args.list:
        full, quick = all_names(False), set(all_names(True))
        for n in full:
            print(f"{n}{'  (quick)' if n in quick else ''}")
        return 0

    reps = args.reps or (3 if args.quick else 5)
    full_run = not args.quick and not args.only
    plot_dir = None
    if not args.no_plot:
        if args.plot:
            plot_dir = Path(args.plot)
        elif full_run:
            plot_dir = DEFAULT_RESULTS
    json_path = args.json or (str(DEFAULT_RESULTS / "full-run.json") if full_run else None)

    started = time.perf_counter()
    info = meta(args, reps)
    log(
        f"rpool benchmarks: {'quick' if args.quick else 'full'}, {reps} reps, "
        f"{WORKERS} workers, python {info['python']}, {info['cpus']} CPUs"
    )
    log(f"rpool: {info['rpool']}")
    if info["loadavg_start"][0] > 0.5:
        log(
            f"warning: load average {info['loadavg_start'][0]:.2f} before starting: other "
            "processes are busy and will add noise (only same-run ratios count)"
        )
    if str(info["rpool"]).startswith("IMPORT FAILED"):
        log("error: rpool cannot be imported; nothing to compare")
        return 2

    everything = bool(args.only)
    wanted = select(build_workloads(args.quick, 1, everything), args.only)
    spin_n = None
    if any(w.name.startswith("cpu") for w in wanted):
        cal = run_measure(Measure("cal", "stdlib", "calibrate", {}), {"target_ms": 20}, 60)
        spin_n = int(cal["value"])
        log(f"calibrated spin(n) ≈ 20 ms: n = {spin_n}")
    names = [w.name for w in wanted]
    workloads = [w for w in build_workloads(args.quick, spin_n, everything) if w.name in names]

    failed: dict[str, str] = {}

    def fail(w: Workload, e: Exception) -> None:
        w.error = str(e)
        failed[w.name] = str(e).splitlines()[0][:120]
        log("\n" + "!" * 78 + f"\n!! {w.name}: {e}\n" + "!" * 78 + "\n")
        if args.fail_fast:
            raise SystemExit(1)

    log("== correctness check (rpool results must equal the stdlib's) ==")
    for w in workloads:
        try:
            check_workload(w, args.timeout)
            log(f"  [{w.name}] ok")
        except MeasureError as e:
            fail(w, e)

    log(f"== timing ({reps} reps, stdlib/rpool interleaved) ==")
    for w in workloads:
        if w.error:
            continue
        try:
            time_workload(w, reps, args.timeout)
        except MeasureError as e:
            fail(w, e)

    rows: list[Row] = []
    for w in workloads:
        if not w.error:
            rows += w.rows(w, w.runs)

    order = [w.name for w in workloads]
    elapsed = time.perf_counter() - started
    print(
        f"\n## rpool vs stdlib ({'quick' if args.quick else 'full'} run, {reps} reps, "
        f"{WORKERS} workers, Python {info['python']}, {info['cpus']} CPUs, "
        f"{elapsed:.0f} s)\n"
    )
    print("stdlib / rpool: median (min–max) over repetitions; ratio: rpool speed-up over the")
    print("stdlib computed per A/B pair, median (min–max); >1 means rpool is better.\n")
    print(markdown_table(rows, failed, [n for n in order if n != "sweep"]))
    notes = []
    load_end = os.getloadavg()
    info["loadavg_end"] = load_end
    if max(info["loadavg_start"][0], load_end[1]) > 0.5 + WORKERS:
        notes.append(
            f"- **busy machine**: load average {info['loadavg_start'][0]:.1f} at start, "
            f"{load_end[1]:.1f} (5-min) at end with {WORKERS} workers on {info['cpus']} CPUs; "
            "absolute figures are noisy, same-run ratios less so"
        )
    for r in rows:
        if "floor_seconds" in r.extra:
            notes.append(
                f"- pickle floor (parent's pickle.dumps + pickle.loads of the {WORKERS}-worker "
                f"map chunks): median {median(r.extra['floor_seconds']) * 1000:.1f} ms"
            )
        if "stdlib_pool" in r.extra and r.title.endswith("Pool.apply_async vs faster stdlib"):
            notes.append(
                f"- payload, stdlib: Pool {cell(r.extra['stdlib_pool'], 'MiB/s')}, "
                f"Executor {cell(r.extra['stdlib_exec'], 'MiB/s')}; the stdlib column is the "
                "faster of the two per repetition"
            )
        if "of_floor" in r.extra:
            api = r.title.split(", rpool ")[-1]
            notes.append(
                f"- payload fresh-memory read (one thread reading the results into new "
                f"bytes, one copy): {cell(r.extra['floor_mib_s'], 'MiB/s')}; rpool {api}"
                f" reaches {median(r.extra['of_floor']) * 100:.0f}% of it"
            )
        if "task_ms" in r.extra and "exec" not in r.workload:
            notes.append(f"- CPU tasks: {median(r.extra['task_ms']):.1f} ms each (serial, median)")
    if notes:
        print("\n" + "\n".join(notes))
    if "sweep" in order:
        print("\n### Future overhead vs batching (items/s)\n")
        print(sweep_table(rows) if "sweep" not in failed else f"**FAILED**: {failed['sweep']}")

    if plot_dir is not None and rows:
        try:
            for p in plot_all(rows, plot_dir):
                log(f"wrote {p}")
        except ImportError:
            log("matplotlib is not installed: no plots (pip install matplotlib)")
            if args.plot:
                return 2

    if json_path:
        doc = {
            "meta": info | {"elapsed_seconds": elapsed, "spin_n": spin_n},
            "rows": [r.__dict__ for r in rows],
            "workloads": {
                w.name: {
                    "measures": [m.__dict__ for m in w.measures],
                    "check": w.check_results,
                    "runs": w.runs,
                    "error": w.error,
                }
                for w in workloads
            },
        }
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(doc, indent=1))
        log(f"wrote {json_path}")

    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    if args.strict and any(r.met is False for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
