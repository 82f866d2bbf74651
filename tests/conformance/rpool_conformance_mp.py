"""Per-start-method test classes built from CPython's ``test._test_multiprocessing``.

This module plays the role of CPython's ``test_multiprocessing_fork`` /
``test_multiprocessing_spawn``: it asks the installed ``test._test_multiprocessing``
to install its ``WithProcesses*`` classes (and ``setUpModule``/``tearDownModule``)
here, for the start method named by ``RPOOL_CONFORMANCE_START_METHOD``.

It has to be an importable top-level module (``tests/conformance`` is put on
``PYTHONPATH`` by the runner) because test classes and their classmethods are
pickled by reference and re-imported in spawned children.  No CPython code lives
here; the classes come from the interpreter's own test package at run time.
"""

import os

import test._test_multiprocessing as _cpython_mp

START_METHOD = os.environ.get("RPOOL_CONFORMANCE_START_METHOD", "fork")

_cpython_mp.install_tests_in_module_dict(globals(), START_METHOD)
