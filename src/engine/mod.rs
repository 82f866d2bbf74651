//! The pool engine: task queue, dispatch, result collection and worker bookkeeping, all without
//! the GIL. Python (src/py) pickles and unpickles; workers (src/worker) run the tasks.
//!
//! ```text
//!  submitting threads            I/O thread (one per pool)                     worker processes
//!  ------------------            -------------------------                     ----------------
//!  Engine::submit ──Command──▶ queue (VecDeque<Task>)                          worker loop:
//!   (bytes only)    channel    dispatch: least-busy worker with room ──frames──▶ read, call,
//!                   + eventfd   (remembers what each worker holds)   task pipe   write results
//!                                                                                    │
//!  AsyncResult.get ◀─ Waiters ◀─ slots completed ◀── parse frames ◀──result pipe─────┘
//!  callback thread ◀─ Notices ◀─ (notify slots)      poll(): result pipes, sentinels,
//!  supervisor      ◀─ Events  ◀─ worker died/ready    eventfd, writable task pipes
//! ```
//!
//! - **Submitting threads** turn arguments into bytes (in Python), build [`Task`]s and send them
//!   over a channel, then wake the I/O thread through an eventfd.
//! - **The I/O thread** ([`io`]) owns the queue and every worker's pipes. It assigns tasks to the
//!   least-busy worker that has room (room adapts to measured task time), writes many frames per
//!   syscall, reads results in bulk, completes [`slots::TaskSlot`]s, kills workers whose task ran
//!   past its timeout, and notices dead workers through their sentinel.
//! - **The supervisor** (a Python thread) receives [`Event`]s, reaps dead processes through
//!   `multiprocessing`, reports their exit status with [`Engine::worker_exited`] (which fails or
//!   requeues the tasks they held) and starts replacements.
//! - **The callback thread** (Python) takes the ids of completed `notify` slots in batches and
//!   runs callbacks / completes Futures under one GIL acquisition.

pub mod chunking;
mod io;
mod outbox;
pub mod segments;
pub mod slots;

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};
use parking_lot::{Condvar, Mutex};

use crate::errors::PoolError;
use crate::posix::WakeFd;
use crate::protocol::{FrameKind, FuncId, TaskId, WorkerId};
use segments::{Pickled, SegmentPool};
use slots::{TaskSlot, Waiters};

/// A callable shared by many tasks: workers receive its pickle once and cache it by id.
#[derive(Debug, Clone)]
pub struct FuncDef {
    pub id: FuncId,
    pub pickled: Arc<[u8]>,
}

/// What a caller submits: one call or one map chunk, already pickled.
#[derive(Debug)]
pub struct NewTask {
    pub kind: FrameKind,
    pub func: Option<FuncDef>,
    /// The pickle, inline or already in a shared-memory segment (split pickles, see
    /// `python/rpool/_split.py`).
    pub payload: Pickled,
    pub notify: bool,
    pub timeout: Option<Duration>,
}

/// A task inside the engine.
#[derive(Debug)]
pub(crate) struct Task {
    pub(crate) slot: Arc<TaskSlot>,
    pub(crate) kind: FrameKind,
    pub(crate) func: Option<FuncDef>,
    pub(crate) payload: Pickled,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retries_left: u32,
    /// Set once the task has been counted in `shared_payloads`, so a stolen or retried task
    /// that keeps its segment is not counted again.
    pub(crate) counted_as_shared: bool,
}

/// A started worker process, described by the parent ends of its pipes.
#[derive(Debug)]
pub struct WorkerSpec {
    pub pid: i32,
    pub task_pipe: OwnedFd,
    pub result_pipe: OwnedFd,
    /// Readable once the process has exited (a dup of `multiprocessing`'s sentinel).
    pub sentinel: OwnedFd,
}

/// Something the supervisor must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The worker's process ended: reap it and call [`Engine::worker_exited`].
    WorkerDied { worker: WorkerId, pid: i32 },
    /// The initializer failed: the pool is broken; stop every worker.
    InitFailed { worker: WorkerId },
}

/// Per-worker counters, readable at any time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    pub worker: u64,
    pub pid: i32,
    pub tasks_done: u64,
    pub busy_ns: u64,
    pub in_flight: usize,
}

/// Pool-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub queued: usize,
    pub in_flight: usize,
    pub tasks_done: u64,
    pub worker_deaths: u64,
    /// Task payloads and results that travelled through shared-memory segments.
    pub shared_payloads: u64,
    pub shared_results: u64,
    pub workers: Vec<WorkerStats>,
}

/// Messages from API threads to the I/O thread. Kept to 24 bytes (boxed slice, boxed spec):
/// the channel allocates them in blocks of 31, which then stay below glibc's 1 KiB "large"
/// requests; each large request merged every freed small chunk first (`malloc_consolidate`,
/// ~4 % of a thread submitting tasks one by one).
pub(crate) enum Command {
    Submit(Box<[Task]>),
    AddWorker(WorkerId, Box<WorkerSpec>),
    WorkerExited(WorkerId, Option<i32>),
    Close,
    Terminate,
    KillWorkers(i32),
    Shutdown,
}

const STATE_RUNNING: u8 = 0;
const STATE_CLOSED: u8 = 1;
const STATE_TERMINATED: u8 = 2;
const STATE_BROKEN: u8 = 3;

/// Settings fixed at pool creation.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// How many times a task lost to a worker death is re-run.
    pub retries: u32,
    /// Tasks a worker runs before it exits and is replaced (`maxtasksperchild`).
    pub max_tasks_per_worker: Option<u64>,
    /// How many workers the pool keeps running.
    pub workers: usize,
}

/// State shared by API threads and the I/O thread.
pub(crate) struct Shared {
    pub(crate) wake: Arc<WakeFd>,
    pub(crate) waiters: Waiters,
    pub(crate) state: AtomicU8,
    pub(crate) broken_payload: Mutex<Option<Arc<Vec<u8>>>>,
    pub(crate) startup_failure: Mutex<Option<String>>,
    notices: Mutex<Vec<TaskId>>,
    notices_cond: Condvar,
    events: Mutex<VecDeque<Event>>,
    events_cond: Condvar,
    /// Tasks submitted but not yet finished (queued, in a worker, or being retried).
    pub(crate) outstanding: AtomicU64,
    stats: Mutex<EngineStats>,
    pub(crate) config: EngineConfig,
    /// Shared-memory segments for large task payloads and results.
    pub(crate) segments: Arc<SegmentPool>,
}

impl Shared {
    pub(crate) fn push_notices(&self, ids: &mut Vec<TaskId>) {
        if ids.is_empty() {
            return;
        }
        self.notices.lock().append(ids);
        self.notices_cond.notify_all();
    }

    pub(crate) fn push_event(&self, event: Event) {
        self.events.lock().push_back(event);
        self.events_cond.notify_all();
    }

    pub(crate) fn mark_broken(&self, payload: Arc<Vec<u8>>) {
        *self.broken_payload.lock() = Some(payload);
        self.state.store(STATE_BROKEN, Ordering::SeqCst);
    }

    pub(crate) fn mark_startup_failed(&self, message: String) {
        *self.startup_failure.lock() = Some(message);
        self.state.store(STATE_BROKEN, Ordering::SeqCst);
    }

    pub(crate) fn publish_stats(&self, stats: EngineStats) {
        *self.stats.lock() = stats;
    }
}

/// One pool's engine. Dropping it stops the I/O thread.
pub struct Engine {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    io_thread: Mutex<Option<JoinHandle<()>>>,
    next_task: AtomicU64,
    next_worker: AtomicU64,
    stopped: std::sync::atomic::AtomicBool,
}

impl Engine {
    /// Starts the I/O thread.
    pub fn start(config: EngineConfig) -> Result<Self, PoolError> {
        let shared = Arc::new(Shared {
            wake: Arc::new(WakeFd::new()?),
            waiters: Waiters::default(),
            state: AtomicU8::new(STATE_RUNNING),
            broken_payload: Mutex::new(None),
            startup_failure: Mutex::new(None),
            notices: Mutex::new(Vec::new()),
            notices_cond: Condvar::new(),
            events: Mutex::new(VecDeque::new()),
            events_cond: Condvar::new(),
            outstanding: AtomicU64::new(0),
            stats: Mutex::new(EngineStats::default()),
            config,
            segments: SegmentPool::new(),
        });
        let (commands, receiver) = unbounded();
        let thread_shared = shared.clone();
        let io_thread = std::thread::Builder::new()
            .name("rpool-io".into())
            .spawn(move || io::run(thread_shared, receiver))?;
        Ok(Self {
            shared,
            commands,
            io_thread: Mutex::new(Some(io_thread)),
            next_task: AtomicU64::new(1),
            next_worker: AtomicU64::new(1),
            stopped: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn send(&self, command: Command) -> Result<(), PoolError> {
        self.commands
            .send(command)
            .map_err(|_| PoolError::NotRunning("shut down"))?;
        self.shared.wake.wake();
        Ok(())
    }

    /// Fails unless the pool accepts new tasks.
    pub fn check_running(&self) -> Result<(), PoolError> {
        match self.shared.state.load(Ordering::SeqCst) {
            STATE_RUNNING => Ok(()),
            STATE_BROKEN => Err(self.broken_error()),
            STATE_CLOSED => Err(PoolError::NotRunning("closed")),
            _ => Err(PoolError::NotRunning("terminated")),
        }
    }

    fn broken_error(&self) -> PoolError {
        if let Some(payload) = self.shared.broken_payload.lock().clone() {
            return PoolError::Broken(payload);
        }
        let message = self.shared.startup_failure.lock().clone();
        PoolError::StartupFailed(message.unwrap_or_else(|| "the pool is broken".into()))
    }

    /// The initializer's pickled exception if the pool is broken by one.
    pub fn broken_payload(&self) -> Option<Arc<Vec<u8>>> {
        self.shared.broken_payload.lock().clone()
    }

    /// Queues tasks and returns their slots in order. A broken pool accepts them and fails
    /// them with the breaking error, so callers see it on the result.
    pub fn submit(&self, tasks: Vec<NewTask>) -> Result<Vec<Arc<TaskSlot>>, PoolError> {
        if self.shared.state.load(Ordering::SeqCst) != STATE_BROKEN {
            self.check_running()?;
        }
        let first = self
            .next_task
            .fetch_add(tasks.len() as u64, Ordering::Relaxed);
        let retries = self.shared.config.retries;
        let mut slots = Vec::with_capacity(tasks.len());
        let mut queued = Vec::with_capacity(tasks.len());
        for (offset, new) in tasks.into_iter().enumerate() {
            let slot = Arc::new(TaskSlot::new(TaskId(first + offset as u64), new.notify));
            slots.push(slot.clone());
            queued.push(Task {
                slot,
                kind: new.kind,
                func: new.func,
                payload: new.payload,
                timeout: new.timeout,
                retries_left: retries,
                counted_as_shared: false,
            });
        }
        self.shared
            .outstanding
            .fetch_add(queued.len() as u64, Ordering::SeqCst);
        self.send(Command::Submit(queued.into_boxed_slice()))?;
        Ok(slots)
    }

    /// Hands a started worker's pipes to the I/O thread.
    pub fn add_worker(&self, spec: WorkerSpec) -> Result<WorkerId, PoolError> {
        let id = WorkerId(self.next_worker.fetch_add(1, Ordering::Relaxed));
        self.send(Command::AddWorker(id, Box::new(spec)))?;
        Ok(id)
    }

    /// Reports a reaped worker's exit status; its tasks are failed, retried or requeued.
    pub fn worker_exited(&self, worker: WorkerId, exitcode: Option<i32>) {
        let _ = self.send(Command::WorkerExited(worker, exitcode));
    }

    /// Waits up to `timeout` for the next supervisor event.
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        let mut events = self.shared.events.lock();
        if events.is_empty() {
            self.shared.events_cond.wait_for(&mut events, timeout);
        }
        events.pop_front()
    }

    /// Queues completion notices again, for tasks the notifier set aside (a map's chunks that
    /// finished while the map was still being sent).
    pub fn renotify(&self, ids: &[u64]) {
        let mut ids = ids.iter().map(|&id| TaskId(id)).collect();
        self.shared.push_notices(&mut ids);
    }

    /// Waits up to `timeout` for completed `notify` tasks and takes all of them (returns at
    /// once after [`Engine::shutdown`]).
    pub fn take_notices(&self, timeout: Duration) -> Vec<TaskId> {
        let mut notices = self.shared.notices.lock();
        if notices.is_empty() && !self.stopped.load(Ordering::SeqCst) {
            self.shared.notices_cond.wait_for(&mut notices, timeout);
        }
        std::mem::take(&mut *notices)
    }

    /// Blocks at most `slice` for `done()` to hold; it is checked again whenever a task
    /// finishes (an outcome arriving for the notifier, or a slot published).
    pub fn wait_for(&self, done: impl Fn() -> bool, slice: Duration) -> bool {
        self.shared.waiters.wait_slice(done, slice)
    }

    /// Wakes all waiters (after a callback thread published slots).
    pub fn wake_waiters(&self) {
        self.shared.waiters.wake_all();
    }

    /// Stops accepting tasks; workers are released once every queued task has finished.
    pub fn close(&self) {
        if self
            .shared
            .state
            .compare_exchange(
                STATE_RUNNING,
                STATE_CLOSED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
        {
            let _ = self.send(Command::Close);
        }
    }

    /// Stops accepting tasks and fails every unfinished one. The caller stops the processes.
    pub fn terminate(&self) {
        self.shared.state.store(STATE_TERMINATED, Ordering::SeqCst);
        let _ = self.send(Command::Terminate);
    }

    /// Sends `signal` to every live worker.
    pub fn signal_workers(&self, signal: i32) {
        let _ = self.send(Command::KillWorkers(signal));
    }

    /// True while replacements for exited workers are still needed.
    pub fn wants_workers(&self) -> bool {
        match self.shared.state.load(Ordering::SeqCst) {
            STATE_RUNNING => true,
            STATE_CLOSED => self.shared.outstanding.load(Ordering::SeqCst) > 0,
            _ => false,
        }
    }

    /// Number of tasks submitted and not yet finished.
    pub fn outstanding(&self) -> u64 {
        self.shared.outstanding.load(Ordering::SeqCst)
    }

    /// The latest counters published by the I/O thread.
    pub fn stats(&self) -> EngineStats {
        self.shared.stats.lock().clone()
    }

    /// Stops the I/O thread and waits for it. Pipes close; tasks still unfinished are failed.
    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
        if let Some(handle) = self.io_thread.lock().take() {
            let _ = handle.join();
        }
        self.stopped.store(true, Ordering::SeqCst);
        let _guard = self.shared.notices.lock();
        self.shared.notices_cond.notify_all();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod command_size {
    #[test]
    fn commands_stay_small() {
        // See `Command`: 31 of them per channel block must stay below 1 KiB.
        assert!(std::mem::size_of::<super::Command>() <= 24);
    }
}
