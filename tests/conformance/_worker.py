"""Runs CPython test classes against rpool (or the stdlib) in one subprocess.

Started by ``run.py`` once per test class (and again, for the remaining tests, after a
test hung).  It loads the CPython test module, swaps rpool's classes in where the
stdlib ones are looked up, runs the requested tests with unittest, and writes one
JSON object per line to ``--progress``: the test list, then a ``start`` and a
``result`` event per test, so that the parent knows which test was running if it
has to kill this process.

Not meant to be run by hand, but ``python tests/conformance/_worker.py --help`` works.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import os
import sys
import time
import traceback
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))

START_METHODS = ("fork", "spawn", "forkserver")

# Prefixes of the generated class names, per suite and start method.
EXECUTOR_PREFIX = {
    "fork": "ProcessPoolFork",
    "spawn": "ProcessPoolSpawn",
    "forkserver": "ProcessPoolForkserver",
}
POOL_PREFIX = "WithProcesses"

# Pool tests that live outside the generated WithProcesses* classes: class -> the
# methods that exercise a process pool (None = all of them).
EXTRA_POOL_CLASSES = {
    "TestPoolNotLeakOnFailure": None,
    "TestInitializers": ("test_pool_initializer",),
}


class ModuleProxy(types.ModuleType):
    """A stand-in for a module: a few attributes overridden, the rest delegated."""

    def __init__(self, real: types.ModuleType, **overrides: object) -> None:
        super().__init__(real.__name__, real.__doc__)
        object.__setattr__(self, "_proxied_module", real)
        for name, value in overrides.items():
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> object:
        return getattr(object.__getattribute__(self, "_proxied_module"), name)

    def __repr__(self) -> str:
        return f"<conformance proxy for {self._proxied_module!r}>"


def _python_path() -> str:
    parts = [HERE]
    parts.extend(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)
    return os.pathsep.join(dict.fromkeys(parts))


def _rewriting_assert_python_ok(original, replacements):
    """Wrap script_helper.assert_python_ok so ``-c`` scripts use the swapped class.

    The CPython tests start fresh interpreters whose code imports the stdlib class (and
    ``test.test_concurrent_futures``, which this interpreter does not have).  The
    wrapper rewrites those imports and runs the child with our PYTHONPATH (not in -I
    mode, which would ignore it).
    """

    def assert_python_ok(*args, **env_vars):
        args = list(args)
        if "-c" in args:
            i = args.index("-c") + 1
            code = args[i]
            for old, new in replacements:
                code = code.replace(old, new)
            args[i] = code
        env_vars.setdefault("PYTHONPATH", _python_path())
        return original(*args, **env_vars)

    assert_python_ok.__wrapped__ = original
    return assert_python_ok


def load_pool_suite(impl: str) -> types.ModuleType:
    import multiprocessing
    import multiprocessing.pool

    import test._test_multiprocessing as cpython_mp
    import test.support.script_helper as script_helper

    if impl == "rpool":
        import rpool

        pool_factory = pool_class = rpool.Pool
        replacements = [("from multiprocessing import Pool", "from rpool import Pool")]
    else:
        # The stdlib through the very same swap machinery (validates the runner).
        pool_factory, pool_class = multiprocessing.Pool, multiprocessing.pool.Pool
        replacements = []
    pool_proxy = ModuleProxy(multiprocessing.pool, Pool=pool_class)
    mp_proxy = ModuleProxy(multiprocessing, Pool=pool_factory, pool=pool_proxy)
    # _TestPool uses self.Pool (ProcessesMixin.Pool); _TestPoolWorkerErrors,
    # _TestPoolWorkerLifetime and TestInitializers call multiprocessing.Pool;
    # TestPoolNotLeakOnFailure calls multiprocessing.pool.Pool.
    cpython_mp.ProcessesMixin.Pool = staticmethod(pool_factory)
    cpython_mp.multiprocessing = mp_proxy
    script_helper.assert_python_ok = _rewriting_assert_python_ok(
        script_helper.assert_python_ok, replacements
    )

    import rpool_conformance_mp

    return rpool_conformance_mp


def _fail_on_deadlock(self, executor) -> None:
    """ExecutorDeadlockTest._fail_on_deadlock without the stdlib's private attributes."""
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as f:
        faulthandler.dump_traceback(file=f)
        f.seek(0)
        tb = f.read()
    try:
        executor.kill_workers()
    except Exception as exc:  # report the deadlock, not a cleanup problem
        print(f"kill_workers() failed: {exc!r}", file=sys.__stderr__)
    executor.shutdown(wait=False, cancel_futures=True)
    print(f"\nTraceback:\n {tb}", file=sys.__stderr__)
    self.fail(f"Executor deadlock: no result after {self.TIMEOUT} s")


def load_executor_suite(impl: str) -> types.ModuleType:
    import concurrent.futures

    import rpool_conformance_cf as cf

    replacements = [
        ("from test.test_concurrent_futures import", "from rpool_conformance_cf import")
    ]
    if impl == "rpool":
        import rpool

        executor = rpool.ProcessPoolExecutor
        replacements.append(
            (
                "from concurrent.futures import ProcessPoolExecutor",
                "from rpool import ProcessPoolExecutor",
            )
        )
    else:
        executor = concurrent.futures.ProcessPoolExecutor
    for mixin in (cf.ProcessPoolForkMixin, cf.ProcessPoolSpawnMixin, cf.ProcessPoolForkserverMixin):
        mixin.executor_type = executor
    # Some tests build executors with futures.ProcessPoolExecutor(...) directly.
    cf.futures = ModuleProxy(concurrent.futures, ProcessPoolExecutor=executor)
    # ExecutorDeadlockTest waits SHORT_TIMEOUT (30 s) for a crashed task's future before
    # declaring a deadlock; the stdlib answers in well under a second, so 15 s keeps a
    # wide margin and lets the test report the deadlock itself before --test-timeout.
    cf.ExecutorDeadlockTest.TIMEOUT = min(cf.ExecutorDeadlockTest.TIMEOUT, 15.0)
    if impl == "rpool":
        # Its deadlock handler cleans up through executor._processes before failing, which
        # would turn "deadlock" into an AttributeError; clean up through public API instead.
        cf.ExecutorDeadlockTest._fail_on_deadlock = _fail_on_deadlock
    cf.assert_python_ok = _rewriting_assert_python_ok(cf.assert_python_ok, replacements)
    return cf


def class_specs(suite: str, module: types.ModuleType, start_method: str) -> dict[str, list[str]]:
    """Test classes of the suite for this start method -> their test method names."""
    loader = unittest.TestLoader()
    specs = {}
    for name, obj in sorted(vars(module).items()):
        if not (isinstance(obj, type) and issubclass(obj, unittest.TestCase)):
            continue
        methods = None
        if suite == "pool":
            if name.startswith(POOL_PREFIX + "TestPool"):
                pass
            elif name in EXTRA_POOL_CLASSES:
                methods = EXTRA_POOL_CLASSES[name]
            else:
                continue
        else:
            prefix = EXECUTOR_PREFIX[start_method]
            rest = name[len(prefix) :]
            if not name.startswith(prefix) or not rest or not rest[0].isupper():
                continue
            if start_method == "fork" and rest.startswith("server"):
                continue
        names = loader.getTestCaseNames(obj)
        if methods is not None:
            names = [n for n in names if n in methods]
        specs[name] = list(names)
    return specs


def canonical_class(suite: str, class_name: str, start_method: str) -> str:
    """Start-method independent class name used in the lists (TestPool, WaitTest ...)."""
    if suite == "pool" and class_name.startswith(POOL_PREFIX):
        return class_name[len(POOL_PREFIX) :]
    if suite == "executor":
        prefix = EXECUTOR_PREFIX[start_method]
        if class_name.startswith(prefix):
            return class_name[len(prefix) :]
    return class_name


def arm_stack_dump(test_timeout: float | None) -> None:
    """(Re)start the clock after which faulthandler dumps every thread's stack to the log.

    The parent kills a worker that makes no progress for ``test_timeout`` seconds; the dump,
    taken just before, shows where it hung (a test, a fixture, or interpreter exit).
    """
    if test_timeout:
        faulthandler.dump_traceback_later(max(test_timeout - 2, 1), repeat=True, exit=False)


class ProgressResult(unittest.TestResult):
    """Records every outcome as a JSON line as soon as it is known."""

    def __init__(self, progress, test_timeout: float | None, verbose: bool) -> None:
        super().__init__()
        self._progress = progress
        self._test_timeout = test_timeout
        self._verbose = verbose
        self._started: dict[str, float] = {}

    def _emit(self, **event: object) -> None:
        self._progress.write(json.dumps(event) + "\n")
        self._progress.flush()

    @staticmethod
    def _name(test: unittest.TestCase) -> str:
        if isinstance(test, unittest.TestCase):
            return test._testMethodName
        # _ErrorHolder for setUpClass / tearDownClass / setUpModule failures.
        description = getattr(test, "description", str(test))
        return description.split(" ", 1)[0]

    def startTest(self, test):
        super().startTest(test)
        name = self._name(test)
        self._started[name] = time.monotonic()
        arm_stack_dump(self._test_timeout)
        self._emit(event="start", test=name, time=time.time())
        if self._verbose:
            print(f"--- {name}", file=sys.stderr, flush=True)

    def stopTest(self, test):
        arm_stack_dump(self._test_timeout)  # now covers tearDownClass / module cleanup
        # A test that fails part-way (e.g. a listed deliberate difference inside
        # _check_crash) skips its executor.shutdown(); its executor is only reachable from
        # reference cycles through the traceback. Collect it now so its __del__ releases the
        # workers, instead of leaving them to hold the resource tracker's pipe at module exit.
        gc.collect()
        super().stopTest(test)

    def _record(self, test, outcome: str, err=None, reason: str | None = None) -> None:
        name = self._name(test)
        started = self._started.get(name)
        duration = time.monotonic() - started if started else 0.0
        tb_text = message = ""
        if err is not None:
            tb_text = "".join(traceback.format_exception(*err))
            lines = traceback.format_exception_only(err[0], err[1])
            # The exception line; only its first line if the message spans several.
            message = (lines[-1].strip().splitlines() or [""])[0] if lines else ""
        elif reason is not None:
            message = reason
        self._emit(
            event="result",
            test=name,
            outcome=outcome,
            message=message[:2000],
            traceback=tb_text[-8000:],
            duration=round(duration, 3),
        )
        if self._verbose:
            print(f"    {name}: {outcome} {message[:300]}", file=sys.stderr, flush=True)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, "passed")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "failed", err)

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, "error", err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, "skipped", reason=reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, "passed", reason="expected failure (unittest.expectedFailure)")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, "failed", reason="unexpected success of a unittest.expectedFailure")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            outcome = "failed" if issubclass(err[0], test.failureException) else "error"
            self._record(test, outcome, err)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", choices=("pool", "executor"), required=True)
    parser.add_argument("--start-method", choices=START_METHODS, required=True)
    parser.add_argument("--impl", choices=("rpool", "stdlib"), default="rpool")
    parser.add_argument("--list-classes", action="store_true", help="print JSON {class: [tests]}")
    parser.add_argument("--class", dest="class_name")
    parser.add_argument("--tests", help="comma-separated method names (default: all)")
    parser.add_argument("--skip", default="{}", help="JSON {method: reason} to skip")
    parser.add_argument("--progress", help="JSON-lines output file")
    parser.add_argument("--test-timeout", type=float, default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    os.environ["RPOOL_CONFORMANCE_START_METHOD"] = args.start_method
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    faulthandler.enable()
    arm_stack_dump(args.test_timeout)  # imports, setUpModule, setUpClass

    if args.suite == "pool":
        module = load_pool_suite(args.impl)
    else:
        module = load_executor_suite(args.impl)
    specs = class_specs(args.suite, module, args.start_method)

    if args.list_classes:
        json.dump(specs, sys.stdout)
        return 0

    cls = getattr(module, args.class_name)
    names = specs[args.class_name]
    if args.tests:
        wanted = set(args.tests.split(","))
        names = [n for n in names if n in wanted]
    for method, reason in json.loads(args.skip).items():
        if hasattr(cls, method):
            setattr(cls, method, unittest.skip(reason)(getattr(cls, method)))

    suite = unittest.TestSuite(cls(name) for name in names)
    with open(args.progress, "a", encoding="utf-8") as progress:
        progress.write(json.dumps({"event": "tests", "tests": names}) + "\n")
        progress.flush()
        result = ProgressResult(progress, args.test_timeout, args.verbose)
        suite.run(result)  # a top-level suite also runs the class and module fixtures
        arm_stack_dump(args.test_timeout)  # interpreter exit: atexit handlers, joins
        progress.write(json.dumps({"event": "done"}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
