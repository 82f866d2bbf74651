//! Result bookkeeping: one [`TaskSlot`] per submitted task, and the [`Waiters`] that block on
//! them. Slots hold bytes only; Python objects are made from them later, in the asking thread.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::segments::Pickled;
use crate::protocol::TaskId;

/// How a task ended. Payloads are pickles produced by a worker; everything else is parent-side.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// pickle of the return value (a list for map chunks), inline or in a shared segment.
    Value(Pickled),
    /// pickle of (exception, traceback text) raised by the task or by pickling its result.
    TaskError(Vec<u8>),
    /// The worker running the task died; `exitcode` is negative for a signal.
    WorkerLost { pid: i32, exitcode: Option<i32> },
    /// The task ran past its per-task limit and its worker was killed.
    TaskTimeout { pid: i32, limit: Duration },
    /// The pool's initializer failed; payload = pickle of (exception, traceback text).
    InitFailed(Arc<Vec<u8>>),
    /// Workers keep dying before they finish starting.
    StartupFailed {
        exitcode: Option<i32>,
        attempts: u32,
    },
    /// The pool was terminated before the task finished.
    Terminated,
    /// The task was cancelled before it was dispatched.
    Cancelled,
    /// The worker sent bytes that are not frames.
    Protocol(String),
}

const PHASE_QUEUED: u8 = 0;
const PHASE_RUNNING: u8 = 1;
const PHASE_ARRIVED: u8 = 2;
const PHASE_DONE: u8 = 3;

/// The life of one task as seen by whoever holds its handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting in the parent's queue; can still be cancelled.
    Queued,
    /// Handed to a worker.
    Running,
    /// Outcome stored, but its callbacks have not run yet, so it is not visible to waiters.
    Arrived,
    /// Outcome visible to everyone.
    Done,
}

/// One task's result cell.
#[derive(Debug)]
pub struct TaskSlot {
    pub id: TaskId,
    /// Completion must be announced to the callback thread (callbacks, Futures, map groups).
    pub notify: bool,
    phase: AtomicU8,
    outcome: Mutex<Option<Outcome>>,
    elapsed_ns: AtomicU64,
}

impl TaskSlot {
    pub fn new(id: TaskId, notify: bool) -> Self {
        Self {
            id,
            notify,
            phase: AtomicU8::new(PHASE_QUEUED),
            outcome: Mutex::new(None),
            elapsed_ns: AtomicU64::new(0),
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            PHASE_QUEUED => Phase::Queued,
            PHASE_RUNNING => Phase::Running,
            PHASE_ARRIVED => Phase::Arrived,
            _ => Phase::Done,
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase.load(Ordering::SeqCst) == PHASE_DONE
    }

    /// Queued → Running; false if the task was cancelled (or already finished) meanwhile.
    pub(crate) fn start(&self) -> bool {
        self.phase
            .compare_exchange(
                PHASE_QUEUED,
                PHASE_RUNNING,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// Stores the outcome once. Returns false if an outcome was already there (first one wins).
    pub(crate) fn store(&self, outcome: Outcome, elapsed_ns: u64) -> bool {
        let mut cell = self.outcome.lock();
        if cell.is_some() {
            return false;
        }
        *cell = Some(outcome);
        self.elapsed_ns.store(elapsed_ns, Ordering::Relaxed);
        self.phase.store(PHASE_ARRIVED, Ordering::SeqCst);
        true
    }

    /// Makes a stored outcome visible to waiters.
    pub fn publish(&self) {
        if self.outcome.lock().is_some() {
            self.phase.store(PHASE_DONE, Ordering::SeqCst);
        }
    }

    /// Cancels a task that no worker has received yet.
    pub fn cancel(&self) -> bool {
        if self
            .phase
            .compare_exchange(
                PHASE_QUEUED,
                PHASE_ARRIVED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_err()
        {
            return false;
        }
        *self.outcome.lock() = Some(Outcome::Cancelled);
        self.phase.store(PHASE_DONE, Ordering::SeqCst);
        true
    }

    /// A copy of the stored outcome, if any (visible or not).
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome.lock().clone()
    }

    /// Puts back a value taken by [`TaskSlot::take_outcome`] whose decoding was interrupted
    /// (Ctrl+C while unpickling), so that the next attempt finds it.
    pub fn restore_value(&self, value: Pickled) {
        if let Some(Outcome::Value(kept)) = self.outcome.lock().as_mut() {
            *kept = value;
        }
    }

    /// Takes the stored outcome for decoding; pickled bytes move out, the kind stays behind.
    pub fn take_outcome(&self) -> Option<Outcome> {
        let mut cell = self.outcome.lock();
        let outcome = cell.as_mut()?;
        Some(match outcome {
            Outcome::Value(value) => {
                Outcome::Value(std::mem::replace(value, Pickled::from(Vec::new())))
            }
            Outcome::TaskError(bytes) => Outcome::TaskError(std::mem::take(bytes)),
            other => other.clone(),
        })
    }

    /// Runs `f` on the stored outcome without copying its bytes.
    pub fn with_outcome<R>(&self, f: impl FnOnce(Option<&Outcome>) -> R) -> R {
        f(self.outcome.lock().as_ref())
    }

    /// Worker compute time for the task in nanoseconds (0 when not measured).
    pub fn elapsed_ns(&self) -> u64 {
        self.elapsed_ns.load(Ordering::Relaxed)
    }
}

/// Wakes threads blocked on slots. One condition variable serves a whole pool; the I/O thread
/// only takes its lock when someone is actually waiting.
#[derive(Default)]
pub struct Waiters {
    lock: Mutex<()>,
    cond: Condvar,
    waiting: AtomicUsize,
}

impl Waiters {
    /// Wakes every waiter (called after a batch of slots became visible).
    pub fn wake_all(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock();
            self.cond.notify_all();
        }
    }

    /// Blocks until `done()` holds or `slice` passes; returns `done()`.
    pub fn wait_slice(&self, done: impl Fn() -> bool, slice: Duration) -> bool {
        if done() {
            return true;
        }
        let deadline = Instant::now() + slice;
        let mut guard = self.lock.lock();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        while !done() {
            if self.cond.wait_until(&mut guard, deadline).timed_out() {
                break;
            }
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_outcome_wins_and_publish_makes_it_visible() {
        let slot = TaskSlot::new(TaskId(1), true);
        assert!(slot.start());
        assert!(slot.store(Outcome::Value(Pickled::from(vec![1])), 5));
        assert!(!slot.store(Outcome::Terminated, 0));
        assert_eq!(slot.phase(), Phase::Arrived);
        assert!(!slot.is_done());
        slot.publish();
        assert!(slot.is_done());
        assert_eq!(slot.outcome(), Some(Outcome::Value(Pickled::from(vec![1]))));
        assert_eq!(slot.elapsed_ns(), 5);
    }

    #[test]
    fn cancel_only_before_dispatch() {
        let queued = TaskSlot::new(TaskId(1), false);
        assert!(queued.cancel());
        assert!(queued.is_done());
        assert!(!queued.start());
        let running = TaskSlot::new(TaskId(2), false);
        assert!(running.start());
        assert!(!running.cancel());
    }

    #[test]
    fn waiter_wakes_when_slot_is_published_from_another_thread() {
        let waiters = Arc::new(Waiters::default());
        let slot = Arc::new(TaskSlot::new(TaskId(3), false));
        let (w, s) = (waiters.clone(), slot.clone());
        let publisher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            s.store(Outcome::Value(Pickled::from(vec![])), 0);
            s.publish();
            w.wake_all();
        });
        let got = waiters.wait_slice(|| slot.is_done(), Duration::from_secs(10));
        publisher.join().unwrap();
        assert!(got);
    }

    #[test]
    fn wait_slice_times_out() {
        let waiters = Waiters::default();
        let slot = TaskSlot::new(TaskId(4), false);
        let start = Instant::now();
        assert!(!waiters.wait_slice(|| slot.is_done(), Duration::from_millis(30)));
        assert!(start.elapsed() >= Duration::from_millis(25));
    }
}
