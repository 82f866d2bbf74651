//! The Python-facing handles: `Core` (one pool's engine), `AsyncResult` (one task's result),
//! `ChunkSizer` (adaptive chunk sizes). They hold `Arc`s to engine state and only convert:
//! waits run detached from the interpreter in short slices so Ctrl+C stays responsive, and
//! result bytes become Python objects lazily, in the thread that asks for them.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::exceptions::{PyKeyboardInterrupt, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::engine::chunking::{chunksize_for_len, AdaptiveChunker};
use crate::engine::segments::{Pickled, Pinned};
use crate::engine::slots::{Outcome, Phase, TaskSlot};
use crate::engine::{Engine, EngineConfig, Event, FuncDef, NewTask, WorkerSpec};
use crate::errors::PoolError;
use crate::posix;
use crate::protocol::{FrameKind, FuncId, WorkerId};
use pinned::PinnedParts;

pub(crate) mod fastpickle;
pub(crate) mod fresh;
pub(crate) mod pinned;

/// Longest stretch a blocked call stays detached before it checks for signals (Ctrl+C).
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(50);

pyo3::import_exception!(multiprocessing, TimeoutError);

/// Converts a user-supplied timeout in seconds into a deadline (`None` = wait forever).
fn deadline_from(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    let Some(seconds) = timeout else {
        return Ok(None);
    };
    if seconds.is_nan() {
        return Err(PyValueError::new_err("timeout must be a number, not NaN"));
    }
    let seconds = seconds.max(0.0);
    Ok(Duration::try_from_secs_f64(seconds)
        .ok()
        .and_then(|d| Instant::now().checked_add(d)))
}

fn duration_from(seconds: Option<f64>, what: &str) -> PyResult<Option<Duration>> {
    match seconds {
        None => Ok(None),
        Some(s) if s.is_nan() || s <= 0.0 => Err(PyValueError::new_err(format!(
            "{what} must be a positive number of seconds, got {s}"
        ))),
        Some(s) => Ok(Duration::try_from_secs_f64(s).ok()),
    }
}

/// Waits until `done()` holds, the deadline passes (returns false) or a signal handler raises.
fn wait_detached(
    py: Python<'_>,
    deadline: Option<Instant>,
    done: impl Fn() -> bool + Sync,
    wait: impl Fn(Duration) -> bool + Sync,
) -> PyResult<bool> {
    loop {
        if done() {
            return Ok(true);
        }
        let mut slice = SIGNAL_CHECK_INTERVAL;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            slice = slice.min(left);
        }
        if py.detach(|| wait(slice)) {
            return Ok(true);
        }
        py.check_signals()?;
    }
}

static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FAILURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn loads(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    LOADS.import(py, "pickle", "loads")
}

static LOADS_SEGMENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOADS_BUFFER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Unpickles a task's value where it lies: from the bytes, or from a mapping of its segment.
fn load_value<'py>(py: Python<'py>, value: &Pickled) -> PyResult<Bound<'py, PyAny>> {
    match value {
        Pickled::Inline(bytes) => loads(py)?.call1((PyBytes::new(py, bytes),)),
        Pickled::Shared(lease) => LOADS_SEGMENT
            .import(py, "rpool._split", "loads_segment")?
            .call1((lease.raw_fd(), lease.len())),
        // Results never arrive pinned; handled for completeness.
        Pickled::Pinned(pinned) => LOADS_BUFFER
            .import(py, "rpool._split", "loads_buffer")?
            .call1((PyBytes::new(py, &pinned.to_vec()),)),
    }
}

/// A result's object: a single plain number or string decoded natively, anything else
/// unpickled where it lies.
fn load_result<'py>(py: Python<'py>, value: &Pickled) -> PyResult<Bound<'py, PyAny>> {
    load_plain_value(py, value)
        .transpose()
        .unwrap_or_else(|| load_value(py, value))
}

/// A single plain number or string decoded without `pickle` (see `fastpickle`); `None` for
/// anything else.
fn load_plain_value<'py>(py: Python<'py>, value: &Pickled) -> PyResult<Option<Bound<'py, PyAny>>> {
    match value {
        Pickled::Inline(bytes) => match fastpickle::parse_plain_value(bytes) {
            Some(plain) => fastpickle::plain_value_object(py, &plain),
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

/// What `AsyncResult._complete_future` uses: `concurrent.futures`' state names and the lock
/// that guards making a future's condition.
struct FutureStates {
    pending: Py<PyAny>,
    running: Py<PyAny>,
    finished: Py<PyAny>,
    condition_lock: Py<PyAny>,
}

impl FutureStates {
    /// Whether `future` can still be completed (PENDING or RUNNING: not cancelled, not done).
    fn is_open(&self, future: &Bound<'_, PyAny>) -> PyResult<bool> {
        let state = future.getattr(intern!(future.py(), "_state"))?;
        Ok(state.eq(&self.pending)? || state.eq(&self.running)?)
    }
}

static FUTURE_STATES: PyOnceLock<FutureStates> = PyOnceLock::new();

fn future_states(py: Python<'_>) -> PyResult<&FutureStates> {
    FUTURE_STATES.get_or_try_init(py, || {
        let base = py.import("concurrent.futures._base")?;
        Ok::<_, PyErr>(FutureStates {
            pending: base.getattr("PENDING")?.unbind(),
            running: base.getattr("RUNNING")?.unbind(),
            finished: base.getattr("FINISHED")?.unbind(),
            condition_lock: py
                .import("rpool.executor")?
                .getattr("_CONDITION_LOCK")?
                .unbind(),
        })
    })
}

static INVALID_STATE_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn invalid_state_error(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    Ok(INVALID_STATE_ERROR
        .import(py, "concurrent.futures._base", "InvalidStateError")?
        .clone())
}

static UNPICKLE_FAILURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static WRAP_ASYNC: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn unpickle_failure(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    UNPICKLE_FAILURE.import(py, "rpool._remote", "result_unpickle_failure")
}

fn failure_factory(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    FAILURE.import(py, "rpool._remote", "outcome_to_exception")
}

/// A submitted payload as the engine keeps it: bytes are copied; a list of split-pickle parts
/// (`rpool._split.SplitPickle.parts()`) is pinned and written into a segment at dispatch.
fn pickled_payload(payload: &Bound<'_, PyAny>) -> PyResult<Pickled> {
    if let Ok(bytes) = payload.cast::<PyBytes>() {
        return Ok(Pickled::from(bytes.as_bytes().to_vec()));
    }
    let Ok(parts) = payload.cast::<PyList>() else {
        return Err(PyTypeError::new_err(format!(
            "a task payload must be bytes or a list of split pickle parts, not {}",
            payload.get_type().name()?
        )));
    };
    let pinned = PinnedParts::from_list(parts)?;
    Ok(Pickled::Pinned(Pinned(Arc::new(pinned))))
}

/// One pool's engine, as seen from Python. Thread-safe: any thread may submit and wait.
#[pyclass(frozen, module = "rpool._rpool")]
pub(crate) struct Core {
    engine: Arc<Engine>,
    funcs: Mutex<HashMap<u64, Arc<[u8]>>>,
    next_func: AtomicU64,
}

fn frame_kind(kind: u8) -> PyResult<FrameKind> {
    match kind {
        1 => Ok(FrameKind::Call),
        2 => Ok(FrameKind::Map),
        3 => Ok(FrameKind::StarMap),
        other => Err(PyValueError::new_err(format!("unknown task kind {other}"))),
    }
}

impl Core {
    fn func_def(&self, func_id: u64) -> PyResult<Option<FuncDef>> {
        if func_id == FuncId::INLINE.0 {
            return Ok(None);
        }
        let funcs = self.funcs.lock();
        let pickled = funcs
            .get(&func_id)
            .cloned()
            .ok_or_else(|| PyValueError::new_err(format!("unknown function id {func_id}")))?;
        Ok(Some(FuncDef {
            id: FuncId(func_id),
            pickled,
        }))
    }

    /// Queues one task (`submit`, `submit_plain_call`) and returns its handle.
    fn submit_one(
        &self,
        kind: FrameKind,
        func_id: u64,
        payload: Pickled,
        notify: bool,
        front: u8,
        timeout: Option<f64>,
    ) -> PyResult<AsyncResult> {
        let task = NewTask {
            kind,
            func: self.func_def(func_id)?,
            payload,
            notify,
            timeout: duration_from(timeout, "timeout")?,
        };
        let mut handles = self.handles(self.engine.submit(vec![task])?, front);
        handles
            .pop()
            .ok_or_else(|| PoolError::InvalidArgument("no task queued".into()).into())
    }

    /// Queues a task of a registered function whose payload `encode` writes natively (see
    /// `fastpickle`); `None`, queueing nothing, when it cannot (the caller then pickles).
    fn submit_native(
        &self,
        kind: FrameKind,
        func_id: u64,
        encode: impl FnOnce() -> Option<Vec<u8>>,
        notify: bool,
        front: u8,
        timeout: Option<f64>,
    ) -> PyResult<Option<AsyncResult>> {
        if func_id == FuncId::INLINE.0 {
            return Ok(None);
        }
        let Some(payload) = encode() else {
            return Ok(None);
        };
        self.submit_one(
            kind,
            func_id,
            Pickled::from(payload),
            notify,
            front,
            timeout,
        )
        .map(Some)
    }

    fn handles(&self, slots: Vec<Arc<TaskSlot>>, front: u8) -> Vec<AsyncResult> {
        slots
            .into_iter()
            .map(|slot| AsyncResult {
                slot,
                engine: self.engine.clone(),
                front,
                decoded: PyOnceLock::new(),
            })
            .collect()
    }
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (workers, retries=0, max_tasks_per_worker=None))]
    fn new(workers: usize, retries: u32, max_tasks_per_worker: Option<u64>) -> PyResult<Self> {
        if max_tasks_per_worker == Some(0) {
            return Err(PyValueError::new_err(
                "max tasks per worker must be at least 1",
            ));
        }
        let engine = Engine::start(EngineConfig {
            retries,
            max_tasks_per_worker,
            workers,
        })?;
        Ok(Self {
            engine: Arc::new(engine),
            funcs: Mutex::new(HashMap::new()),
            next_func: AtomicU64::new(1),
        })
    }

    /// Stores a pickled callable that tasks refer to by the returned id.
    fn register_func(&self, pickled: &[u8]) -> u64 {
        let id = self.next_func.fetch_add(1, Ordering::Relaxed);
        self.funcs.lock().insert(id, Arc::from(pickled));
        id
    }

    /// Queues one task. `kind`: 1 call, 2 map chunk, 3 starmap chunk. `front`: 0 Pool, 1 executor.
    /// `payload`: the pickle as bytes, or the parts of a split pickle (`rpool._split`).
    #[pyo3(signature = (kind, func_id, payload, notify, front, timeout=None))]
    fn submit(
        &self,
        kind: u8,
        func_id: u64,
        payload: &Bound<'_, PyAny>,
        notify: bool,
        front: u8,
        timeout: Option<f64>,
    ) -> PyResult<AsyncResult> {
        let payload = pickled_payload(payload)?;
        self.submit_one(frame_kind(kind)?, func_id, payload, notify, front, timeout)
    }

    /// Queues the call `func(*args)` of a registered function when every argument is a plain
    /// number or a `str`, pickled here (see `fastpickle`); returns `None`, queueing nothing,
    /// for anything else, which the caller pickles and passes to `submit`.
    #[pyo3(signature = (func_id, args, notify, front, timeout=None))]
    fn submit_plain_call(
        &self,
        func_id: u64,
        args: &Bound<'_, PyTuple>,
        notify: bool,
        front: u8,
        timeout: Option<f64>,
    ) -> PyResult<Option<AsyncResult>> {
        let encode = || fastpickle::pickle_call_args(args);
        self.submit_native(FrameKind::Call, func_id, encode, notify, front, timeout)
    }

    /// Queues the map chunk `items[start:stop]` of a registered function when every item is
    /// a plain number, pickled here straight into the task (see `fastpickle`: no slice, no
    /// bytes object, no copy); returns `None`, queueing nothing, for anything else, which the
    /// caller pickles and passes to `submit`.
    #[pyo3(signature = (func_id, items, start, stop, notify, front, timeout=None))]
    #[allow(clippy::too_many_arguments)] // mirrors `submit`, plus the slice
    fn submit_list_chunk(
        &self,
        func_id: u64,
        items: &Bound<'_, PyList>,
        start: usize,
        stop: usize,
        notify: bool,
        front: u8,
        timeout: Option<f64>,
    ) -> PyResult<Option<AsyncResult>> {
        let encode = || fastpickle::pickle_list_slice_vec(items, start, stop);
        self.submit_native(FrameKind::Map, func_id, encode, notify, front, timeout)
    }

    /// Queues many tasks of one kind at once (one hand-off, one wake-up).
    #[pyo3(signature = (kind, func_id, payloads, notify, front, timeout=None))]
    fn submit_many(
        &self,
        kind: u8,
        func_id: u64,
        payloads: Vec<Bound<'_, PyBytes>>,
        notify: bool,
        front: u8,
        timeout: Option<f64>,
    ) -> PyResult<Vec<AsyncResult>> {
        let kind = frame_kind(kind)?;
        let func = self.func_def(func_id)?;
        let timeout = duration_from(timeout, "timeout")?;
        let tasks = payloads
            .iter()
            .map(|p| NewTask {
                kind,
                func: func.clone(),
                payload: Pickled::from(p.as_bytes().to_vec()),
                notify,
                timeout,
            })
            .collect();
        Ok(self.handles(self.engine.submit(tasks)?, front))
    }

    /// Hands a started worker to the engine. Takes ownership of all three descriptors.
    fn add_worker(
        &self,
        pid: i32,
        task_fd: RawFd,
        result_fd: RawFd,
        sentinel_fd: RawFd,
    ) -> PyResult<u64> {
        let spec = WorkerSpec {
            pid,
            task_pipe: posix::own_fd(task_fd).map_err(PoolError::from)?,
            result_pipe: posix::own_fd(result_fd).map_err(PoolError::from)?,
            sentinel: posix::own_fd(sentinel_fd).map_err(PoolError::from)?,
        };
        Ok(self.engine.add_worker(spec)?.0)
    }

    /// Reports a reaped worker's exit code (negative: killed by that signal).
    #[pyo3(signature = (worker_id, exitcode))]
    fn worker_exited(&self, worker_id: u64, exitcode: Option<i32>) {
        self.engine.worker_exited(WorkerId(worker_id), exitcode);
    }

    /// Next supervisor event within `timeout` seconds: ("died", worker_id, pid),
    /// ("init_failed", worker_id, 0), or None.
    fn next_event(&self, py: Python<'_>, timeout: f64) -> Option<(&'static str, u64, i32)> {
        let wait = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(SIGNAL_CHECK_INTERVAL);
        let engine = self.engine.clone();
        py.detach(move || engine.next_event(wait))
            .map(|event| match event {
                Event::WorkerDied { worker, pid } => ("died", worker.0, pid),
                Event::InitFailed { worker } => ("init_failed", worker.0, 0),
            })
    }

    /// Ids of completed `notify` tasks, waiting up to `timeout` seconds for the first one.
    fn take_notices(&self, py: Python<'_>, timeout: f64) -> Vec<u64> {
        let wait = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(SIGNAL_CHECK_INTERVAL);
        let engine = self.engine.clone();
        py.detach(move || engine.take_notices(wait))
            .into_iter()
            .map(|id| id.0)
            .collect()
    }

    /// Hands completion notices back to the notifier (see `Engine::renotify`).
    fn renotify(&self, ids: Vec<u64>) {
        self.engine.renotify(&ids);
    }

    /// Wakes threads waiting on results (after callbacks published a batch).
    fn wake_waiters(&self) {
        self.engine.wake_waiters();
    }

    /// Raises if the pool does not accept tasks (closed, terminated or broken).
    fn check_running(&self) -> PyResult<()> {
        Ok(self.engine.check_running()?)
    }

    /// The initializer's pickled failure, if it broke the pool.
    fn broken_payload<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.engine.broken_payload().map(|p| PyBytes::new(py, &p))
    }

    fn close(&self) {
        self.engine.close();
    }

    fn terminate(&self) {
        self.engine.terminate();
    }

    /// Sends a signal to every live worker process.
    fn signal_workers(&self, signal: i32) {
        self.engine.signal_workers(signal);
    }

    /// Stops the I/O thread (after the workers were stopped).
    fn shutdown(&self, py: Python<'_>) {
        let engine = self.engine.clone();
        py.detach(move || engine.shutdown());
    }

    fn wants_workers(&self) -> bool {
        self.engine.wants_workers()
    }

    fn outstanding(&self) -> u64 {
        self.engine.outstanding()
    }

    /// Counters: queued, in_flight, tasks_done, worker_deaths, shared_payloads, shared_results
    /// and per-worker figures.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.engine.stats();
        let dict = PyDict::new(py);
        dict.set_item("queued", stats.queued)?;
        dict.set_item("in_flight", stats.in_flight)?;
        dict.set_item("tasks_done", stats.tasks_done)?;
        dict.set_item("worker_deaths", stats.worker_deaths)?;
        dict.set_item("shared_payloads", stats.shared_payloads)?;
        dict.set_item("shared_results", stats.shared_results)?;
        let workers = PyList::empty(py);
        for w in stats.workers {
            let entry = PyDict::new(py);
            entry.set_item("worker_id", w.worker)?;
            entry.set_item("pid", w.pid)?;
            entry.set_item("tasks_done", w.tasks_done)?;
            entry.set_item("busy_seconds", w.busy_ns as f64 / 1e9)?;
            entry.set_item("in_flight", w.in_flight)?;
            workers.append(entry)?;
        }
        dict.set_item("workers", workers)?;
        Ok(dict)
    }
}

/// The result of one task (`apply_async`), or of one map chunk.
#[pyclass(frozen, module = "rpool._rpool")]
pub(crate) struct AsyncResult {
    slot: Arc<TaskSlot>,
    engine: Arc<Engine>,
    front: u8,
    decoded: PyOnceLock<(bool, Py<PyAny>)>,
}

impl AsyncResult {
    /// Turns the stored outcome into (succeeded, value or exception) once.
    fn decode<'py>(&self, py: Python<'py>) -> PyResult<&(bool, Py<PyAny>)> {
        self.decoded.get_or_try_init(py, || {
            let outcome = self
                .slot
                .take_outcome()
                .ok_or_else(|| PyValueError::new_err("result is not ready"))?;
            match outcome {
                Outcome::Value(value) => match load_result(py, &value) {
                    Ok(object) => Ok((true, object.unbind())),
                    // Ctrl+C while unpickling says nothing about the result: it goes back
                    // into the slot for the next attempt, in this thread or the notifier's,
                    // instead of becoming the task's failure. (Anything else the result's own
                    // unpickling raises, SystemExit included, is the task's failure, as in
                    // the stdlib.)
                    Err(err) if err.is_instance_of::<PyKeyboardInterrupt>(py) => {
                        self.slot.restore_value(value);
                        Err(err)
                    }
                    Err(err) => Ok((false, self.unpickle_failed(py, err)?.unbind())),
                },
                other => self.decode_outcome(py, other),
            }
        })
    }

    /// The task's failure for a result that cannot be unpickled here (it fails its own task,
    /// not the pool).
    fn unpickle_failed<'py>(&self, py: Python<'py>, err: PyErr) -> PyResult<Bound<'py, PyAny>> {
        unpickle_failure(py)?.call1((err.into_value(py), self.front))
    }

    /// (succeeded, value or exception) for an outcome taken from the slot.
    fn decode_outcome(&self, py: Python<'_>, outcome: Outcome) -> PyResult<(bool, Py<PyAny>)> {
        let factory = failure_factory(py)?;
        let front = self.front;
        let (ok, value) = match outcome {
            Outcome::Value(value) => match load_result(py, &value) {
                Ok(value) => (true, value),
                Err(err) => (false, self.unpickle_failed(py, err)?),
            },
            Outcome::TaskError(bytes) => (
                false,
                factory.call1((
                    "error",
                    PyBytes::new(py, &bytes),
                    front,
                    0,
                    None::<i32>,
                    0.0,
                ))?,
            ),
            Outcome::WorkerLost { pid, exitcode } => (
                false,
                factory.call1(("lost", py.None(), front, pid, exitcode, 0.0))?,
            ),
            Outcome::TaskTimeout { pid, limit } => (
                false,
                factory.call1((
                    "timeout",
                    py.None(),
                    front,
                    pid,
                    None::<i32>,
                    limit.as_secs_f64(),
                ))?,
            ),
            Outcome::InitFailed(bytes) => (
                false,
                factory.call1(("init", PyBytes::new(py, &bytes), front, 0, None::<i32>, 0.0))?,
            ),
            Outcome::StartupFailed { exitcode, attempts } => (
                false,
                factory.call1(("startup", py.None(), front, attempts as i32, exitcode, 0.0))?,
            ),
            Outcome::Terminated => (
                false,
                factory.call1(("terminated", py.None(), front, 0, None::<i32>, 0.0))?,
            ),
            Outcome::Cancelled => (
                false,
                factory.call1(("cancelled", py.None(), front, 0, None::<i32>, 0.0))?,
            ),
            Outcome::Protocol(message) => (
                false,
                factory.call1((
                    "protocol",
                    PyBytes::new(py, message.as_bytes()),
                    front,
                    0,
                    None::<i32>,
                    0.0,
                ))?,
            ),
        };
        Ok((ok, value.unbind()))
    }

    fn wait_until(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        arrived_only: bool,
    ) -> PyResult<bool> {
        let deadline = deadline_from(timeout)?;
        let slot = &self.slot;
        let engine = &self.engine;
        let done = || {
            if arrived_only {
                matches!(slot.phase(), Phase::Arrived | Phase::Done)
            } else {
                slot.is_done()
            }
        };
        wait_detached(py, deadline, done, |slice| engine.wait_for(done, slice))
    }

    /// Completes `future` with the task's outcome (which has arrived); see `_complete_future`.
    /// `only_without_waiters`: leave a future that has a condition to the notifier. The
    /// future lets go of this handle only once it is complete: if this fails halfway (say,
    /// Ctrl+C in the thread waiting in `result()`), the notifier still completes it.
    fn complete_future(
        &self,
        py: Python<'_>,
        future: &Bound<'_, PyAny>,
        only_without_waiters: bool,
    ) -> PyResult<()> {
        let (ok, value) = self.decode(py)?;
        let value = value.bind(py);
        let release_handle = || future.setattr(intern!(py, "_rpool_handle"), py.None());
        let states = future_states(py)?;
        if !states.is_open(future)? {
            return release_handle(); // cancelled (or completed) meanwhile
        }
        let lock = states.condition_lock.bind(py);
        lock.call_method0(intern!(py, "acquire"))?;
        let finished_here = (|| -> PyResult<bool> {
            if !states.is_open(future)? {
                return Ok(true); // the other completer (or a cancel) came first
            }
            if !future.getattr(intern!(py, "_rpool_cond"))?.is_none() {
                return Ok(false);
            }
            let slot = if *ok {
                intern!(py, "_result")
            } else {
                intern!(py, "_exception")
            };
            future.setattr(slot, value)?;
            future.setattr(intern!(py, "_state"), &states.finished)?;
            Ok(true)
        })();
        lock.call_method0(intern!(py, "release"))?;
        if finished_here? {
            return release_handle(); // no condition: no waiters, no callbacks
        }
        if only_without_waiters {
            return Ok(());
        }
        let method = if *ok {
            intern!(py, "set_result")
        } else {
            intern!(py, "set_exception")
        };
        match future.call_method1(method, (value,)) {
            Ok(_) => release_handle(),
            // The waiting thread and the notifier may both complete a future (with the same
            // outcome); the one that comes second finds it finished.
            Err(err)
                if err.is_instance(py, &invalid_state_error(py)?)
                    && future
                        .getattr(intern!(py, "_state"))?
                        .eq(&states.finished)? =>
            {
                release_handle()
            }
            Err(err) => Err(err),
        }
    }
}

#[pymethods]
impl AsyncResult {
    /// Waits for the result and returns it, or raises the task's exception.
    /// Raises `multiprocessing.TimeoutError` if `timeout` seconds pass first.
    #[pyo3(signature = (timeout=None))]
    fn get(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        if !self.wait_until(py, timeout, false)? {
            return Err(TimeoutError::new_err(()));
        }
        let (ok, value) = self.decode(py)?;
        if *ok {
            Ok(value.clone_ref(py))
        } else {
            Err(PyErr::from_value(value.bind(py).clone()))
        }
    }

    /// Waits until the result is ready or `timeout` seconds pass.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        self.wait_until(py, timeout, false)?;
        Ok(())
    }

    /// True once the task has finished (and its callbacks have run).
    fn ready(&self) -> bool {
        self.slot.is_done()
    }

    /// Whether the task succeeded; `ValueError` if it is not ready yet.
    fn successful(&self, py: Python<'_>) -> PyResult<bool> {
        if !self.slot.is_done() {
            return Err(PyValueError::new_err(format!(
                "{:?} not ready",
                self.slot.id
            )));
        }
        if let Some((ok, _)) = self.decoded.get(py) {
            return Ok(*ok);
        }
        Ok(self
            .slot
            .with_outcome(|o| matches!(o, Some(Outcome::Value(_)))))
    }

    /// Whether the notifier is told when the task finishes (callbacks, futures, large values).
    #[getter]
    fn notifies(&self) -> bool {
        self.slot.notify
    }

    /// Task id, unique within the pool.
    #[getter]
    fn task_id(&self) -> u64 {
        self.slot.id.0
    }

    /// Worker compute time of the task in seconds (0.0 until it finished).
    #[getter]
    fn compute_seconds(&self) -> f64 {
        self.slot.elapsed_ns() as f64 / 1e9
    }

    /// Waits for the outcome to arrive (before callbacks) and decodes it: (succeeded, value).
    #[pyo3(signature = (timeout=None))]
    fn _resolve(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<(bool, Py<PyAny>)> {
        if !self.wait_until(py, timeout, true)? {
            return Err(TimeoutError::new_err(()));
        }
        let (ok, value) = self.decode(py)?;
        Ok((*ok, value.clone_ref(py)))
    }

    /// Completes `future`, an `rpool.executor.RpoolFuture`, with the outcome (after waiting
    /// for it to arrive). While no thread has made the future's condition (nobody waits on it
    /// and it has no callbacks), its result and state are set here, under the lock that
    /// guards making conditions (`rpool.executor._CONDITION_LOCK`); otherwise the future's
    /// own `set_result`/`set_exception` notify its waiters under its condition. The same
    /// protocol as `RpoolFuture._finish_without_waiters`, without its Python frames.
    fn _complete_future(&self, py: Python<'_>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if !self.wait_until(py, None, true)? {
            return Err(TimeoutError::new_err(()));
        }
        self.complete_future(py, future, false)
    }

    /// `RpoolFuture.result()`'s wait when nothing else waits on the future: waits up to
    /// `timeout` for the task's outcome without the GIL, then completes `future` in the calling
    /// thread if it still has no condition (no waiter, no callback: those are the notifier's
    /// to serve, in its thread, as the stdlib's manager thread does). False if the time ran
    /// out. A cancelled task's future is left to `cancel()`, which sets its state.
    #[pyo3(signature = (future, timeout=None))]
    fn _complete_future_here(
        &self,
        py: Python<'_>,
        future: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        if !self.wait_until(py, timeout, true)? {
            return Ok(false);
        }
        if self
            .slot
            .with_outcome(|outcome| matches!(outcome, Some(Outcome::Cancelled)))
        {
            return Ok(true);
        }
        self.complete_future(py, future, true)?;
        Ok(true)
    }

    /// For a map chunk: waits for the outcome and, when it is a list of `size` plain numbers
    /// (see `fastpickle`), writes them straight into `target[offset:offset + size]` and returns
    /// (True, None, True): no chunk list, no bytes copy, no slice assignment. Otherwise
    /// (succeeded, value, False), as `_resolve`.
    fn _resolve_into(
        &self,
        py: Python<'_>,
        target: &Bound<'_, PyList>,
        offset: usize,
        size: usize,
    ) -> PyResult<(bool, Py<PyAny>, bool)> {
        if !self.wait_until(py, None, true)? {
            return Err(TimeoutError::new_err(()));
        }
        let inline_value = || {
            self.slot
                .with_outcome(|outcome| matches!(outcome, Some(Outcome::Value(Pickled::Inline(_)))))
        };
        if self.decoded.get(py).is_none() && offset + size <= target.len() && inline_value() {
            // Taken out of the slot, so that the objects are made without holding its lock,
            // and parsed once, straight into `target`.
            if let Some(outcome) = self.slot.take_outcome() {
                // The outcome is out of the slot now: an error from here on becomes the chunk's
                // failure (a raised error would leave the map waiting for this chunk).
                let placed = match &outcome {
                    Outcome::Value(Pickled::Inline(bytes)) => {
                        fastpickle::place_plain_list(target, offset, size, bytes)
                    }
                    _ => Ok(false),
                };
                let in_target = matches!(placed, Ok(true));
                let decoded = match placed {
                    // A chunk's handle is internal to its map: its values are in `target`.
                    Ok(true) => (true, py.None()),
                    // Not a list of `size` plain numbers: what `place_plain_list` may have
                    // written is overwritten by the caller with the value decoded here.
                    Ok(false) => self
                        .decode_outcome(py, outcome)
                        .unwrap_or_else(|err| (false, err.into_value(py).into_any())),
                    Err(err) => (false, err.into_value(py).into_any()),
                };
                let (ok, value) = (decoded.0, decoded.1.clone_ref(py));
                let _ = self.decoded.set(py, decoded);
                return Ok((ok, value, in_target));
            }
        }
        let (ok, value) = self.decode(py)?;
        Ok((*ok, value.clone_ref(py), false))
    }

    /// True once the outcome arrived, even if callbacks have not run yet.
    fn _arrived(&self) -> bool {
        matches!(self.slot.phase(), Phase::Arrived | Phase::Done)
    }

    /// Makes an arrived outcome visible to `get`/`wait`/`ready` (after callbacks ran).
    fn _publish(&self) {
        self.slot.publish();
        self.engine.wake_waiters();
    }

    /// Cancels the task if no worker has received it yet.
    fn cancel(&self) -> bool {
        let cancelled = self.slot.cancel();
        if cancelled {
            self.engine.wake_waiters();
        }
        cancelled
    }

    /// True while a worker holds the task.
    fn running(&self) -> bool {
        self.slot.phase() == Phase::Running
    }

    fn __repr__(&self) -> String {
        format!(
            "<rpool.AsyncResult task={} {:?}>",
            self.slot.id.0,
            self.slot.phase()
        )
    }

    /// `await result` inside a coroutine: waits without blocking the event loop.
    fn __await__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let awaitable = WRAP_ASYNC
            .import(py, "rpool._aio", "wrap_async")?
            .call1((slf,))?;
        awaitable.call_method0("__await__")
    }
}

/// Chunk sizes for iterators of unknown length, adapted to measured per-item time.
#[pyclass(frozen, module = "rpool._rpool")]
pub(crate) struct ChunkSizer {
    inner: Mutex<AdaptiveChunker>,
}

#[pymethods]
impl ChunkSizer {
    #[new]
    fn new() -> Self {
        Self {
            inner: Mutex::new(AdaptiveChunker::new()),
        }
    }

    fn next_size(&self) -> usize {
        self.inner.lock().next_size()
    }

    fn observe(&self, items: usize, compute_seconds: f64) {
        let ns = (compute_seconds.max(0.0) * 1e9) as u64;
        self.inner.lock().observe(items, ns);
    }
}

/// The stdlib's chunk size rule for an input of known length.
#[pyfunction]
pub(crate) fn default_chunksize(length: usize, workers: usize) -> usize {
    chunksize_for_len(length, workers)
}
