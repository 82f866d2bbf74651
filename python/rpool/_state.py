"""`rpool.worker_state()`: a mutable namespace per worker process, kept across its tasks.

Each worker process has one `types.SimpleNamespace`, created on first use. The pool's
initializer can fill it (open a database connection, load a model) and tasks then read it.
A replaced worker (it died, hit ``maxtasksperchild``) starts with an empty namespace and runs
the initializer again. A process made by ``fork`` never inherits its parent's namespace, so a
forked worker does not see objects (connections, locks) that belong to the parent.
"""

from __future__ import annotations

import os
import types

_namespace: types.SimpleNamespace | None = None


def worker_state() -> types.SimpleNamespace:
    """This worker's namespace: persists across the tasks the worker runs.

    Call it inside a task or an initializer::

        def init(path):
            rpool.worker_state().db = sqlite3.connect(path)

        def lookup(key):
            return rpool.worker_state().db.execute(QUERY, (key,)).fetchone()

    Outside a worker it returns the calling process's own namespace.
    """
    global _namespace
    namespace = _namespace
    if namespace is None:
        namespace = _namespace = types.SimpleNamespace()
    return namespace


def _forget_after_fork() -> None:
    global _namespace
    _namespace = None


os.register_at_fork(after_in_child=_forget_after_fork)
