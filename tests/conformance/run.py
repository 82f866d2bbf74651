#!/usr/bin/env python3
"""Run CPython's own process-pool tests against rpool.

Loads CPython 3.11's ``test._test_multiprocessing`` (Pool tests) and
``test_concurrent_futures`` (ProcessPoolExecutor tests) at run time, swaps
``rpool.Pool`` / ``rpool.ProcessPoolExecutor`` in for the stdlib classes, and runs
each test class in its own subprocess under a time limit.  Failures are checked
against ``expected_failures.txt`` (tests of stdlib internals) and
``deliberate_differences.txt`` (rpool deliberately behaves differently); any other
failure or error makes the exit status non-zero.  See README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import fnmatch
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_worker.py")
EXPECTED_FAILURES = os.path.join(HERE, "expected_failures.txt")
DELIBERATE_DIFFERENCES = os.path.join(HERE, "deliberate_differences.txt")
SLOW_TESTS = os.path.join(HERE, "slow_tests.txt")

SUITES = ("pool", "executor")
DEFAULT_START_METHODS = ("fork", "spawn")
ALL_START_METHODS = ("fork", "spawn", "forkserver")
FAILING = ("failed", "error")
FIXTURE_HANG = "(no progress outside a test)"

# Where the canonical class name comes from: see _worker.canonical_class.
POOL_PREFIX = "WithProcesses"
EXECUTOR_PREFIX = {
    "fork": "ProcessPoolFork",
    "spawn": "ProcessPoolSpawn",
    "forkserver": "ProcessPoolForkserver",
}


# --------------------------------------------------------------------------- lists


@dataclasses.dataclass
class ListEntry:
    """One line of a list file: ``suite:Class.test[@start,methods] -- reason``."""

    source: str
    lineno: int
    suite: str
    test: str  # "Class.test_method", fnmatch patterns allowed
    start_methods: tuple[str, ...] | None
    reason: str
    matched: int = 0

    def matches(self, suite: str, test: str, start_method: str) -> bool:
        if suite != self.suite or not fnmatch.fnmatchcase(test, self.test):
            return False
        return self.start_methods is None or start_method in self.start_methods

    @property
    def label(self) -> str:
        sm = "@" + ",".join(self.start_methods) if self.start_methods else ""
        return f"{self.suite}:{self.test}{sm}"


class ListFormatError(ValueError):
    pass


def read_list(path: str) -> list[ListEntry]:
    entries = []
    if not os.path.exists(path):
        return entries
    name = os.path.basename(path)
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            ident, sep, reason = line.partition(" -- ")
            ident, reason = ident.strip(), reason.strip()
            if not sep or not reason:
                raise ListFormatError(f"{name}:{lineno}: missing ' -- reason': {line!r}")
            suite, sep, test = ident.partition(":")
            if not sep or suite not in SUITES or "." not in test:
                raise ListFormatError(
                    f"{name}:{lineno}: expected 'pool|executor:Class.test_name[@fork,spawn]'"
                )
            start_methods = None
            if "@" in test:
                test, _, sms = test.partition("@")
                start_methods = tuple(s.strip() for s in sms.split(","))
                if not set(start_methods) <= set(ALL_START_METHODS):
                    raise ListFormatError(f"{name}:{lineno}: unknown start method in {sms!r}")
            entries.append(ListEntry(name, lineno, suite, test, start_methods, reason))
    return entries


def find_entry(entries: list[ListEntry], suite: str, test: str, sm: str) -> ListEntry | None:
    for entry in entries:
        if entry.matches(suite, test, sm):
            return entry
    return None


# ----------------------------------------------------------------- process control


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, pgrp, session) for every process we can see."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z":  # zombies are harmless; their parent reaps them
            continue
        table[int(name)] = (int(fields[1]), int(fields[2]), int(fields[3]))
    return table


def process_tree(root: int) -> set[int]:
    """``root``'s descendants, plus everything still in its session (orphans too)."""
    table = _proc_table()
    found = {pid for pid, (_, _, sid) in table.items() if sid == root}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    found.discard(root)
    found.discard(os.getpid())
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    pids = process_tree(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def reap_leftovers(session: int, grace: float = 2.0) -> list[int]:
    """Kill processes the worker left behind (its session), return their pids."""
    deadline = time.monotonic() + grace
    while True:
        left = sorted(process_tree(session))
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


# ----------------------------------------------------------------------- running


@dataclasses.dataclass
class Config:
    impl: str
    class_timeout: float
    test_timeout: float
    log_dir: str
    verbose: bool
    slow: list[ListEntry]
    deadline: float = float("inf")  # overall budget (time.monotonic() value)


def worker_env(start_method: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["RPOOL_CONFORMANCE_START_METHOD"] = start_method
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def list_classes(suite: str, start_method: str, cfg: Config) -> dict[str, list[str]]:
    cmd = [sys.executable, WORKER, "--suite", suite, "--start-method", start_method]
    cmd += ["--impl", cfg.impl, "--list-classes"]
    out = subprocess.run(
        cmd,
        env=worker_env(start_method),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cfg.log_dir,
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"could not load the {suite} suite for {start_method}:\n{out.stderr[-4000:]}"
        )
    return json.loads(out.stdout)


def canonical_class(suite: str, class_name: str, start_method: str) -> str:
    if suite == "pool" and class_name.startswith(POOL_PREFIX):
        return class_name[len(POOL_PREFIX) :]
    prefix = EXECUTOR_PREFIX[start_method]
    if suite == "executor" and class_name.startswith(prefix):
        return class_name[len(prefix) :]
    return class_name


def _tail(path: str, limit: int = 6000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_class(suite: str, sm: str, class_name: str, tests: list[str], cfg: Config) -> dict:
    """Run one test class (in as many subprocesses as hung tests require)."""
    canon = canonical_class(suite, class_name, sm)
    skip = {}
    for t in tests:
        entry = find_entry(cfg.slow, suite, f"{canon}.{t}", sm)
        if entry:
            entry.matched += 1
            skip[t] = f"slow_tests.txt: {entry.reason}"
    results: dict[str, dict] = {}
    order: list[str] = []
    record = {
        "class": class_name,
        "canonical": canon,
        "attempts": 0,
        "timed_out": False,
        "returncodes": [],
        "leftover_processes": [],
        "log": None,
        "stderr_tail": "",
    }
    start = time.monotonic()
    deadline = min(start + cfg.class_timeout, cfg.deadline)
    limit_text = (
        f"test class exceeded its {cfg.class_timeout:.0f} s limit"
        if start + cfg.class_timeout <= cfg.deadline
        else "the run's --budget ran out"
    )
    remaining = list(tests)
    safe = class_name.replace("/", "_")
    log_path = os.path.join(cfg.log_dir, f"{suite}-{sm}-{safe}.log")
    record["log"] = log_path

    def put(name: str, outcome: str, message: str, tb: str = "", duration: float = 0.0) -> None:
        if name not in results:
            order.append(name)
        results[name] = {
            "name": name,
            "outcome": outcome,
            "message": message,
            "traceback": tb,
            "duration": duration,
        }

    while remaining:
        record["attempts"] += 1
        progress_path = os.path.join(cfg.log_dir, f"{suite}-{sm}-{safe}.{record['attempts']}.jsonl")
        cmd = [sys.executable, WORKER, "--suite", suite, "--start-method", sm, "--impl", cfg.impl]
        cmd += ["--class", class_name, "--progress", progress_path]
        cmd += ["--test-timeout", str(cfg.test_timeout), "--skip", json.dumps(skip)]
        if remaining != tests:
            cmd += ["--tests", ",".join(remaining)]
        if cfg.verbose:
            cmd.append("--verbose")
        with open(log_path, "ab") as log:
            log.write(f"\n=== attempt {record['attempts']}: {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                env=worker_env(sm),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cfg.log_dir,
                start_new_session=True,
            )
        current: str | None = None
        current_start = 0.0
        last_event = time.monotonic()
        done = False
        offset = 0
        killed_for = None
        buf = ""
        while True:
            exited = proc.poll() is not None
            try:
                with open(progress_path, encoding="utf-8") as f:
                    f.seek(offset)
                    chunk = f.read()
                    offset = f.tell()
            except FileNotFoundError:
                chunk = ""
            buf += chunk
            *lines, buf = buf.split("\n")
            for line in lines:
                if not line.strip():
                    continue
                ev = json.loads(line)
                last_event = time.monotonic()
                if ev["event"] == "start":
                    current, current_start = ev["test"], time.monotonic()
                elif ev["event"] == "result":
                    put(ev["test"], ev["outcome"], ev["message"], ev["traceback"], ev["duration"])
                    if ev["test"] == current:
                        current = None
                elif ev["event"] == "done":
                    done = True
            if exited:
                break
            now = time.monotonic()
            if now > deadline:
                killed_for = "class"
            elif current is not None and now - current_start > cfg.test_timeout:
                killed_for = "test"
            elif current is None and now - last_event > cfg.test_timeout:
                killed_for = "fixture"  # setUpClass / tearDownClass / module cleanup / exit
            if killed_for:
                kill_tree(proc)
                break
            time.sleep(0.1)
        record["returncodes"].append(proc.wait())
        record["leftover_processes"] += reap_leftovers(proc.pid)

        ran = set(results)
        if killed_for == "class":
            record["timed_out"] = True
            if current is not None:
                put(current, "error", f"timed out: {limit_text}")
            for t in remaining:
                if t not in results:
                    put(t, "error", f"not run: {limit_text}")
            break
        if killed_for == "test":
            put(current, "error", f"timed out: test exceeded {cfg.test_timeout:.0f} s (killed)")
        elif killed_for == "fixture":
            where = "after its last test" if not set(remaining) - set(results) else "between tests"
            put(
                FIXTURE_HANG,
                "error",
                f"hung {where} (class/module fixtures, cleanup or interpreter exit) for "
                f"{cfg.test_timeout:.0f} s and was killed; stacks in the log",
            )
            for t in remaining:
                if t not in results:
                    put(t, "error", "not run: the worker hung outside any test")
            break
        elif not done:
            rc = record["returncodes"][-1]
            if current is not None:
                put(current, "error", f"worker process died (exit status {rc}) during this test")
            elif not ran & set(remaining):
                tail = _tail(log_path, 1500).strip().splitlines()
                msg = f"worker failed (exit status {rc}): {tail[-1] if tail else ''}"
                for t in remaining:
                    put(t, "error", msg)
                break
        else:
            # Finished normally; anything not reported was not run (setUpClass failed).
            for t in remaining:
                if t not in results:
                    put(t, "error", "not run (class or module fixture failed, see its entry)")
            break
        remaining = [t for t in remaining if t not in results]

    record["duration"] = round(time.monotonic() - start, 2)
    record["tests"] = [results[n] for n in order]
    problem = record["timed_out"] or any(r["outcome"] in FAILING for r in record["tests"])
    if problem:
        record["stderr_tail"] = _tail(log_path)
    return record


# ----------------------------------------------------------------------- verdict


def classify(report: dict, expected: list[ListEntry], deliberate: list[ListEntry]) -> None:
    """Annotate every test with its list entry and verdict; fill in the counts."""
    unexpected_failures, unexpected_passes = [], []
    for run in report["runs"]:
        suite, sm = run["suite"], run["start_method"]
        counts = dict.fromkeys(
            (
                "passed",
                "failed",
                "errors",
                "skipped",
                "expected_failures",
                "deliberate_differences",
                "unexpected",
                "unexpected_passes",
            ),
            0,
        )
        for cls in run["classes"]:
            for t in cls["tests"]:
                test_id = f"{cls['canonical']}.{t['name']}"
                t["id"] = f"{suite}:{test_id}@{sm}"
                outcome = t["outcome"]
                key = {"passed": "passed", "failed": "failed", "error": "errors"}.get(
                    outcome, "skipped"
                )
                counts[key] += 1
                entry = find_entry(expected, suite, test_id, sm)
                kind = "expected_failures"
                if entry is None:
                    entry = find_entry(deliberate, suite, test_id, sm)
                    kind = "deliberate_differences"
                t["listed"] = f"{entry.source}:{entry.lineno}" if entry else None
                if entry is not None:
                    entry.matched += 1
                if outcome in FAILING:
                    if entry is not None:
                        t["verdict"] = "expected"
                        counts[kind] += 1
                    else:
                        t["verdict"] = "UNEXPECTED"
                        counts["unexpected"] += 1
                        unexpected_failures.append(
                            {"id": t["id"], "outcome": outcome, "message": t["message"]}
                        )
                elif outcome == "passed" and entry is not None:
                    t["verdict"] = "unexpected-pass"
                    counts["unexpected_passes"] += 1
                    unexpected_passes.append({"id": t["id"], "listed": t["listed"]})
                else:
                    t["verdict"] = "ok"
        run["counts"] = counts
    report["unexpected_failures"] = unexpected_failures
    report["unexpected_passes"] = unexpected_passes


def stale_entries(entries: list[ListEntry], ran: set[tuple[str, str]]) -> list[str]:
    """Entries for a suite/start method that ran but that matched no test at all."""
    stale = []
    for e in entries:
        sms = e.start_methods or ALL_START_METHODS
        if e.matched == 0 and any((e.suite, sm) in ran for sm in sms):
            stale.append(f"{e.source}:{e.lineno}: {e.label}")
    return stale


def format_summary(report: dict) -> str:
    lines = []
    head = (
        f"{'suite':<9} {'start':<10} {'passed':>6} {'failed':>6} {'errors':>6} {'skipped':>7}"
        f" {'xfail':>5} {'delib':>5} {'UNEXP':>5} {'xpass':>5}  time"
    )
    lines += [head, "-" * len(head)]
    for run in report["runs"]:
        c = run["counts"]
        lines.append(
            f"{run['suite']:<9} {run['start_method']:<10} {c['passed']:>6} {c['failed']:>6}"
            f" {c['errors']:>6} {c['skipped']:>7} {c['expected_failures']:>5}"
            f" {c['deliberate_differences']:>5} {c['unexpected']:>5} {c['unexpected_passes']:>5}"
            f"  {run['duration']:.0f}s"
        )
    lines.append(
        "xfail = failing tests listed in expected_failures.txt, delib = in "
        "deliberate_differences.txt, UNEXP = failing tests in neither list, "
        "xpass = listed tests that passed"
    )
    for run in report["runs"]:
        for cls in run["classes"]:
            if cls["timed_out"]:
                lines.append(f"TIMEOUT   {run['suite']}/{run['start_method']} {cls['class']}")
            if cls["leftover_processes"]:
                lines.append(
                    f"WARNING   {run['suite']}/{run['start_method']} {cls['class']} left"
                    f" {len(cls['leftover_processes'])} process(es) behind (killed)"
                )
    if report["unexpected_failures"]:
        lines.append("")
        lines.append("Unexpected failures/errors (not in either list):")
        for u in report["unexpected_failures"]:
            lines.append(f"  {u['outcome'].upper():<6} {u['id']}: {u['message'][:240]}")
    if report["unexpected_passes"]:
        lines.append("")
        lines.append("Listed tests that passed (remove them from the list?):")
        for u in report["unexpected_passes"]:
            lines.append(f"  PASS   {u['id']} ({u['listed']})")
    if report["stale_entries"]:
        lines.append("")
        lines.append("List entries that matched no test:")
        lines += [f"  {s}" for s in report["stale_entries"]]
    return "\n".join(lines)


# -------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--start-method",
        default="all",
        choices=(*ALL_START_METHODS, "all"),
        help="'all' = fork and spawn (forkserver only when asked for)",
    )
    p.add_argument("--suite", default="all", choices=(*SUITES, "all"))
    p.add_argument("--json", metavar="PATH", help="write the full report here")
    p.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="time limit per test class (default 180)",
    )
    p.add_argument(
        "--test-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="time limit per test; a hung test is killed and the class resumes "
        "after it (default 30; the slowest stdlib test takes ~6 s)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time limit for the whole run: classes that cannot start or finish "
        "in time count as errors (default: none)",
    )
    p.add_argument(
        "--impl",
        default=os.environ.get("RPOOL_CONFORMANCE_IMPL", "rpool"),
        choices=("rpool", "stdlib"),
        help="what to swap in: rpool (default; env RPOOL_CONFORMANCE_IMPL) or the stdlib's "
        "own classes, to check the runner itself",
    )
    p.add_argument(
        "--class",
        dest="class_glob",
        metavar="GLOB",
        help="only run classes whose (canonical) name matches, e.g. '*Wait*'",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        help="test classes run at once (default 1; timing-sensitive tests prefer 1)",
    )
    p.add_argument(
        "--log-dir",
        help="keep worker logs here (default: a temporary directory, "
        "kept only when something failed)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="also fail on listed tests that pass and on stale list entries",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="per-test lines in the logs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        expected = read_list(EXPECTED_FAILURES)
        deliberate = read_list(DELIBERATE_DIFFERENCES)
        slow = read_list(SLOW_TESTS)
    except ListFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    suites = SUITES if args.suite == "all" else (args.suite,)
    sms = DEFAULT_START_METHODS if args.start_method == "all" else (args.start_method,)
    own_log_dir = args.log_dir is None
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="rpool-conformance-")
    os.makedirs(log_dir, exist_ok=True)
    log_dir = os.path.abspath(log_dir)
    cfg = Config(args.impl, args.timeout, args.test_timeout, log_dir, args.verbose, slow)
    if args.budget is not None:
        cfg.deadline = time.monotonic() + args.budget

    if args.impl == "rpool":
        check = subprocess.run(
            [sys.executable, "-c", "import rpool; print(rpool.__file__)"],
            capture_output=True,
            text=True,
            env=worker_env("fork"),
            cwd=log_dir,
        )
        if check.returncode != 0:
            print("error: cannot import rpool:\n" + check.stderr[-2000:], file=sys.stderr)
            return 2
        impl_path = check.stdout.strip()
    else:
        impl_path = "stdlib"

    report = {
        "impl": args.impl,
        "impl_path": impl_path,
        "python": sys.version,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "class_timeout": args.timeout,
        "test_timeout": args.test_timeout,
        "log_dir": log_dir,
        "runs": [],
    }
    print(f"conformance: impl={args.impl} ({impl_path}); logs in {log_dir}", flush=True)
    total_start = time.monotonic()
    print_lock = threading.Lock()
    load_errors = []
    jobs = []
    for suite in suites:
        for sm in sms:
            run = {"suite": suite, "start_method": sm, "classes": [], "duration": 0.0}
            report["runs"].append(run)
            try:
                specs = list_classes(suite, sm, cfg)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                load_errors.append(str(exc))
                run["load_error"] = str(exc)
                continue
            for class_name, tests in specs.items():
                canon = canonical_class(suite, class_name, sm)
                if args.class_glob and not (
                    fnmatch.fnmatchcase(canon, args.class_glob)
                    or fnmatch.fnmatchcase(class_name, args.class_glob)
                ):
                    continue
                jobs.append((run, suite, sm, class_name, tests))

    def do(job):
        run, suite, sm, class_name, tests = job
        if time.monotonic() >= cfg.deadline:
            rec = {
                "class": class_name,
                "canonical": canonical_class(suite, class_name, sm),
                "attempts": 0,
                "timed_out": True,
                "returncodes": [],
                "leftover_processes": [],
                "log": None,
                "stderr_tail": "",
                "duration": 0.0,
                "tests": [
                    {
                        "name": t,
                        "outcome": "error",
                        "message": "not run: the run's --budget ran out",
                        "traceback": "",
                        "duration": 0.0,
                    }
                    for t in tests
                ],
            }
            return run, rec
        rec = run_class(suite, sm, class_name, tests, cfg)
        c = {
            o: sum(t["outcome"] == o for t in rec["tests"])
            for o in ("passed", "failed", "error", "skipped")
        }
        with print_lock:
            flag = " TIMEOUT" if rec["timed_out"] else ""
            print(
                f"  {suite:<8} {sm:<10} {class_name:<44} {c['passed']:>3} passed"
                f" {c['failed']:>2} failed {c['error']:>2} errors {c['skipped']:>2} skipped"
                f"  {rec['duration']:6.1f}s{flag}",
                flush=True,
            )
        return run, rec

    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as ex:
        for run, rec in ex.map(do, jobs):
            run["classes"].append(rec)
            run["duration"] += rec["duration"]

    if args.impl == "stdlib":
        expected, deliberate = [], []  # the lists describe rpool; the stdlib must pass all
    classify(report, expected, deliberate)
    ran = {(r["suite"], r["start_method"]) for r in report["runs"] if r["classes"]}
    if args.class_glob:
        report["stale_entries"] = []  # a partial run says nothing about staleness
    else:
        report["stale_entries"] = stale_entries(expected + deliberate + slow, ran)
    report["load_errors"] = load_errors
    report["duration"] = round(time.monotonic() - total_start, 1)

    failed = bool(report["unexpected_failures"] or load_errors)
    if args.strict and (report["unexpected_passes"] or report["stale_entries"]):
        failed = True
    report["verdict"] = "fail" if failed else "ok"

    print()
    print(format_summary(report))
    for err in load_errors:
        print(f"\nLOAD ERROR: {err}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        print(f"\nJSON report: {args.json}")
    counts = [r["counts"] for r in report["runs"] if "counts" in r]
    passed = sum(c["passed"] for c in counts)
    skipped = sum(c["skipped"] for c in counts)
    listed = sum(c["expected_failures"] + c["deliberate_differences"] for c in counts)
    unexpected = sum(c["unexpected"] for c in counts)
    keep_logs = not (own_log_dir and not failed)
    print(
        f"\nverdict: {report['verdict'].upper()} in {report['duration']:.0f}s"
        f" ({listed} listed failures accepted"
        + (f"; logs: {log_dir})" if keep_logs else "; logs removed, use --log-dir to keep)")
    )
    if not keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    print(f"conformance: {passed} passed, {unexpected} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
