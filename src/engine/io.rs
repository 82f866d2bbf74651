//! The I/O thread: owns the task queue and every worker's pipes. One `poll` loop dispatches,
//! writes, reads, completes slots, enforces per-task timeouts and notices dead workers.
#![forbid(unsafe_code)]

use std::collections::{HashSet, VecDeque};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::outbox::Outbox;
use super::segments::{Pickled, ResultGauge, SegmentLease, SegmentPool, SHARED_PAYLOAD_MIN};
use super::slots::{Outcome, Phase};
use super::{Command, EngineStats, Event, Shared, Task, WorkerSpec, WorkerStats};
use crate::posix;
use crate::protocol::{Frame, FrameKind, FrameReader, FuncId, TaskId, WorkerId};

/// Tasks a worker may hold before its task time is known: one running, one ready behind it.
const INITIAL_IN_FLIGHT: usize = 2;

/// Once task time is measured, a worker holds enough queued work to cover about this long, so
/// it never idles waiting for the parent, while slow tasks stay balanced across workers.
const PREFETCH_BUDGET_NS: f64 = 2_000_000.0;

/// Upper bound on tasks held by one worker (bounds the work lost or requeued when it dies).
const MAX_IN_FLIGHT: usize = 512;

/// A running task counts as slow once it has taken this many times the worker's average task
/// time (and at least `SLOW_FRONT_MIN`); no more tasks are queued behind a slow task.
const SLOW_FRONT_FACTOR: f64 = 10.0;
const SLOW_FRONT_MIN: Duration = Duration::from_millis(2);

/// A worker whose current task has run this long (and at least `SLOW_FRONT_FACTOR` times its
/// average), or whose waiting tasks add up to this long at its measured pace, is asked to give
/// them back while another worker idles with nothing queued. Below it, the round trip of a
/// steal is not worth it.
const STEAL_AFTER: Duration = Duration::from_millis(5);

/// Workers that die before finishing start-up this many times in a row break the pool instead
/// of being respawned forever (the stdlib loops forever here).
const MAX_STARTUP_FAILURES: u32 = 3;

/// Segments each worker holds for large results. Two let one result be read while the next is
/// written; a third covers the time until the parent's next grant reaches the worker.
const GRANTS_PER_WORKER: usize = 3;

/// How often counters are copied out for `stats()`.
const STATS_INTERVAL: Duration = Duration::from_millis(100);

/// Counters that changed are published within about this long, even when the loop then idles.
const STATS_FRESHNESS: Duration = Duration::from_millis(10);

/// The loop wakes at least this often even when idle (cheap; keeps timeouts honest).
const IDLE_POLL: Duration = Duration::from_millis(500);

struct Worker {
    id: WorkerId,
    pid: i32,
    task_pipe: Option<OwnedFd>,
    result_pipe: Option<OwnedFd>,
    sentinel: Option<OwnedFd>,
    out: Outbox,
    reader: FrameReader,
    in_flight: VecDeque<Task>,
    known_funcs: HashSet<FuncId>,
    ready: bool,
    assigned: u64,
    task_ns_ewma: Option<f64>,
    front_started: Option<Instant>,
    timed_out: Option<(TaskId, Duration)>,
    exited: bool,
    /// A shutdown frame is queued; the task pipe closes once it is written.
    releasing: bool,
    /// A `Steal` was sent and its `Returned` answer has not arrived yet.
    steal_pending: bool,
    tasks_done: u64,
    busy_ns: u64,
    /// Segments this worker may write large results into (announced by `Grant` frames).
    grants: Vec<SegmentLease>,
    /// Set once the worker has been granted segments (it handles large values): it is topped
    /// up again whenever a waiting result is loaded.
    wants_grants: bool,
}

impl Worker {
    fn new(id: WorkerId, spec: WorkerSpec) -> Self {
        let _ = posix::set_nonblocking(&spec.task_pipe, true);
        let _ = posix::set_nonblocking(&spec.result_pipe, true);
        Self {
            id,
            pid: spec.pid,
            task_pipe: Some(spec.task_pipe),
            result_pipe: Some(spec.result_pipe),
            sentinel: Some(spec.sentinel),
            out: Outbox::default(),
            reader: FrameReader::new(),
            in_flight: VecDeque::new(),
            known_funcs: HashSet::new(),
            ready: false,
            assigned: 0,
            task_ns_ewma: None,
            front_started: None,
            timed_out: None,
            exited: false,
            releasing: false,
            steal_pending: false,
            tasks_done: 0,
            busy_ns: 0,
            grants: Vec::new(),
            wants_grants: false,
        }
    }

    fn room(&self) -> usize {
        match self.task_ns_ewma {
            None => INITIAL_IN_FLIGHT,
            Some(ns) => {
                let extra = (PREFETCH_BUDGET_NS / ns.max(1.0)) as usize;
                INITIAL_IN_FLIGHT + extra.min(MAX_IN_FLIGHT)
            }
        }
    }

    /// Whether this worker should get another task now. An idle worker always may. A busy one
    /// only gets tasks queued behind its current one when the queue is deep (so no other worker
    /// will want them soon) and its current task is not already running long: a task waiting
    /// behind a slow one in a pipe cannot be taken back.
    ///
    /// `fair_share` caps what a busy worker holds at its part of all outstanding tasks: its
    /// measured task time may come from another, much faster function, and tasks queued in its
    /// pipe cannot go to a worker that becomes free.
    fn accepts_tasks(
        &self,
        quota: Option<u64>,
        queue_len: usize,
        target_workers: usize,
        fair_share: usize,
    ) -> bool {
        if self.task_pipe.is_none()
            || self.exited
            || self.releasing
            || quota.is_some_and(|q| self.assigned >= q)
        {
            return false;
        }
        if self.in_flight.is_empty() {
            return true;
        }
        if queue_len < target_workers || self.in_flight.len() >= self.room().min(fair_share) {
            return false;
        }
        let expected_ns = self.task_ns_ewma.unwrap_or(0.0);
        let patience =
            Duration::from_nanos((expected_ns * SLOW_FRONT_FACTOR) as u64).max(SLOW_FRONT_MIN);
        self.front_started
            .is_none_or(|started| started.elapsed() < patience)
    }

    fn record_task_time(&mut self, ns: u64) {
        let sample = ns as f64;
        self.task_ns_ewma = Some(match self.task_ns_ewma {
            Some(prev) => prev * 0.8 + sample * 0.2,
            None => sample,
        });
        self.tasks_done += 1;
        self.busy_ns += ns;
    }
}

struct IoLoop {
    /// Large results waiting in segments for the parent's loader (caps result grants).
    result_gauge: Arc<ResultGauge>,
    shared: Arc<Shared>,
    queue: VecDeque<Task>,
    workers: Vec<Worker>,
    closing: bool,
    released: bool,
    startup_failures: u32,
    notices: Vec<TaskId>,
    any_done: bool,
    tasks_done: u64,
    deaths: u64,
    shared_payloads: u64,
    shared_results: u64,
    last_stats: Instant,
    stats_dirty: bool,
}

/// Entry point of the I/O thread. A panic inside the loop must not leave waiters hanging: it
/// breaks the pool and fails every task the loop still knew about.
pub(super) fn run(shared: Arc<Shared>, commands: Receiver<Command>) {
    let wake = shared.wake.clone();
    let mut io = IoLoop {
        result_gauge: ResultGauge::new(move || wake.wake()),
        shared: shared.clone(),
        queue: VecDeque::new(),
        workers: Vec::new(),
        closing: false,
        released: false,
        startup_failures: 0,
        notices: Vec::new(),
        any_done: false,
        tasks_done: 0,
        deaths: 0,
        shared_payloads: 0,
        shared_results: 0,
        last_stats: Instant::now(),
        stats_dirty: false,
    };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| io.run(&commands)));
    if outcome.is_err() {
        shared.mark_startup_failed("internal error: rpool's I/O thread panicked".into());
        io.fail_everything(|| Outcome::Protocol("internal error in rpool's I/O thread".into()));
        for worker in &io.workers {
            let _ = posix::kill(worker.pid, libc::SIGKILL);
        }
        io.flush_notices();
    }
}

impl IoLoop {
    fn run(&mut self, commands: &Receiver<Command>) {
        loop {
            // Before looking at anything a wake may announce (commands, the result gauge).
            self.shared.wake.rearm();
            while let Ok(command) = commands.try_recv() {
                if !self.handle_command(command) {
                    self.fail_everything(|| Outcome::Terminated);
                    self.flush_notices();
                    self.publish_stats();
                    return;
                }
            }
            self.dispatch();
            if self.result_gauge.take_loaded() {
                for index in 0..self.workers.len() {
                    if self.workers[index].wants_grants {
                        self.top_up_grants(index);
                    }
                }
            }
            for index in 0..self.workers.len() {
                self.flush_writes(index);
            }
            self.release_if_drained();
            self.flush_notices();
            let since = self.last_stats.elapsed();
            if since >= STATS_INTERVAL || (self.stats_dirty && since >= STATS_FRESHNESS) {
                self.publish_stats();
            }
            self.poll_once();
            self.enforce_timeouts();
        }
    }

    /// Returns false when the loop must stop.
    fn handle_command(&mut self, command: Command) -> bool {
        match command {
            Command::Submit(tasks) => {
                if self.shared.state.load(Ordering::SeqCst) >= super::STATE_TERMINATED {
                    for task in tasks {
                        self.finish_task(task, self.refusal(), 0);
                    }
                } else {
                    self.queue.extend(tasks);
                }
            }
            Command::AddWorker(id, spec) => {
                let mut worker = Worker::new(id, *spec);
                if self.released {
                    worker.out.push_frame(FrameKind::Shutdown, 0, 0, b"");
                    worker.releasing = true;
                }
                self.workers.push(worker);
                self.stats_dirty = true;
            }
            Command::WorkerExited(id, exitcode) => self.worker_exited(id, exitcode),
            Command::Close => self.closing = true,
            Command::Terminate => {
                self.fail_everything(|| Outcome::Terminated);
                for worker in &mut self.workers {
                    worker.out.clear();
                }
            }
            Command::KillWorkers(signal) => {
                for worker in &self.workers {
                    if !worker.exited {
                        let _ = posix::kill(worker.pid, signal);
                    }
                }
            }
            Command::Shutdown => return false,
        }
        true
    }

    /// The outcome for tasks arriving at a pool that no longer runs them.
    fn refusal(&self) -> Outcome {
        if let Some(payload) = self.shared.broken_payload.lock().clone() {
            return Outcome::InitFailed(payload);
        }
        if self.shared.startup_failure.lock().is_some() {
            return Outcome::StartupFailed {
                exitcode: None,
                attempts: self.startup_failures,
            };
        }
        Outcome::Terminated
    }

    fn finish_task(&mut self, task: Task, outcome: Outcome, elapsed_ns: u64) {
        let slot = task.slot;
        if slot.store(outcome, elapsed_ns) {
            if slot.notify {
                self.notices.push(slot.id);
            } else {
                slot.publish();
            }
            self.any_done = true;
        }
        self.shared.outstanding.fetch_sub(1, Ordering::SeqCst);
        self.stats_dirty = true;
    }

    fn fail_everything(&mut self, outcome: impl Fn() -> Outcome) {
        let queued: Vec<Task> = self.queue.drain(..).collect();
        for task in queued {
            self.finish_task(task, outcome(), 0);
        }
        for index in 0..self.workers.len() {
            let held: Vec<Task> = self.workers[index].in_flight.drain(..).collect();
            for task in held {
                self.finish_task(task, outcome(), 0);
            }
        }
    }

    fn dispatch(&mut self) {
        if self.shared.state.load(Ordering::SeqCst) >= super::STATE_TERMINATED {
            return;
        }
        let quota = self.shared.config.max_tasks_per_worker;
        let target_workers = self.shared.config.workers.max(1);
        while let Some(front) = self.queue.front() {
            // Cancelled (or otherwise finished) tasks leave the queue without a worker.
            match front.slot.phase() {
                Phase::Queued => {}
                Phase::Running => {}
                Phase::Arrived | Phase::Done => {
                    if let Some(task) = self.queue.pop_front() {
                        self.shared.outstanding.fetch_sub(1, Ordering::SeqCst);
                        drop(task);
                    }
                    continue;
                }
            }
            let queue_len = self.queue.len();
            let held: usize = self.workers.iter().map(|w| w.in_flight.len()).sum();
            let fair_share = (queue_len + held).div_ceil(target_workers);
            let choice = self
                .workers
                .iter()
                .enumerate()
                .filter(|(_, w)| w.accepts_tasks(quota, queue_len, target_workers, fair_share))
                .min_by_key(|(_, w)| w.in_flight.len())
                .map(|(index, _)| index);
            let Some(index) = choice else { break };
            let Some(mut task) = self.queue.pop_front() else {
                break;
            };
            if task.slot.phase() == Phase::Queued && !task.slot.start() {
                // Cancelled between the phase check and now.
                self.shared.outstanding.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let worker = &mut self.workers[index];
            let func_id = match &task.func {
                Some(func) => {
                    if worker.known_funcs.insert(func.id) {
                        worker
                            .out
                            .push_frame(FrameKind::DefineFunc, func.id.0, 0, &func.pickled);
                    }
                    func.id.0
                }
                None => FuncId::INLINE.0,
            };
            let shared_payload = move_to_segment(&mut task, &self.shared.segments);
            worker
                .out
                .push_payload(task.kind, task.slot.id.0, func_id, &task.payload);
            worker.assigned += 1;
            if worker.in_flight.is_empty() && worker.ready {
                worker.front_started = Some(Instant::now());
            }
            let first_time_shared = shared_payload && !task.counted_as_shared;
            task.counted_as_shared |= shared_payload;
            worker.in_flight.push_back(task);
            if first_time_shared {
                self.shared_payloads += 1;
            }
            if shared_payload {
                // Large arguments often mean a large result: let the worker answer in a segment.
                self.top_up_grants(index);
            }
        }
        if self.queue.is_empty() {
            self.steal_for_idle_workers();
        }
    }

    /// When the queue is empty and a worker idles, take back the unstarted tasks of a worker
    /// that is stuck on a slow task.
    fn steal_for_idle_workers(&mut self) {
        let quota = self.shared.config.max_tasks_per_worker;
        let idle = self
            .workers
            .iter()
            .filter(|w| w.ready && w.in_flight.is_empty() && w.accepts_tasks(quota, 0, 0, 0))
            .count();
        if idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut victims: Vec<usize> = self
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| steal_eligible(w, now))
            .map(|(index, _)| index)
            .collect();
        victims.sort_by_key(|&index| std::cmp::Reverse(self.workers[index].in_flight.len()));
        for index in victims.into_iter().take(idle) {
            let worker = &mut self.workers[index];
            worker.out.push_frame(FrameKind::Steal, 0, 0, b"");
            worker.steal_pending = true;
        }
    }

    /// When the next steal could become due (for the poll timeout).
    fn next_steal_check(&self) -> Option<Instant> {
        if !self.queue.is_empty()
            || !self
                .workers
                .iter()
                .any(|w| w.ready && w.in_flight.is_empty())
        {
            return None;
        }
        self.workers
            .iter()
            .filter(|w| w.in_flight.len() >= 2 && !w.steal_pending && !w.exited)
            .filter_map(|w| w.front_started.map(|started| started + steal_patience(w)))
            .min()
    }

    /// Puts tasks a worker gave back at the front of the queue, in their original order.
    fn tasks_returned(&mut self, index: usize, payload: &[u8]) {
        let ids: HashSet<u64> = payload
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let worker = &mut self.workers[index];
        worker.steal_pending = false;
        if ids.is_empty() {
            return;
        }
        let mut kept = VecDeque::with_capacity(worker.in_flight.len());
        let mut returned = Vec::new();
        for task in worker.in_flight.drain(..) {
            if ids.contains(&task.slot.id.0) {
                returned.push(task);
            } else {
                kept.push_back(task);
            }
        }
        worker.in_flight = kept;
        worker.assigned = worker.assigned.saturating_sub(returned.len() as u64);
        for task in returned.into_iter().rev() {
            self.queue.push_front(task);
        }
    }

    fn flush_writes(&mut self, index: usize) {
        let worker = &mut self.workers[index];
        let Some(pipe) = worker.task_pipe.as_ref() else {
            worker.out.clear();
            return;
        };
        match worker.out.write_to(pipe.as_raw_fd()) {
            Ok(false) => {}
            Ok(true) => {
                if worker.releasing {
                    worker.task_pipe = None;
                }
            }
            Err(_) => {
                // The worker is gone (EPIPE); its sentinel will report the death.
                worker.out.clear();
                worker.task_pipe = None;
            }
        }
    }

    /// After `close()`, once nothing is left to run, closing each task pipe tells its worker to
    /// finish and exit normally.
    fn release_if_drained(&mut self) {
        if !self.closing || self.released || !self.queue.is_empty() {
            return;
        }
        if self
            .workers
            .iter()
            .any(|w| !w.in_flight.is_empty() || !w.out.is_empty())
        {
            return;
        }
        self.released = true;
        for worker in &mut self.workers {
            // An explicit frame, not just end-of-file: under fork, workers started later may
            // hold copies of this pipe's write end, so EOF alone might never arrive.
            worker.out.push_frame(FrameKind::Shutdown, 0, 0, b"");
            worker.releasing = true;
        }
    }

    fn flush_notices(&mut self) {
        if self.any_done {
            self.any_done = false;
            self.shared.waiters.wake_all();
        }
        self.shared.push_notices(&mut self.notices);
    }

    fn publish_stats(&mut self) {
        self.stats_dirty = false;
        self.last_stats = Instant::now();
        let workers = self
            .workers
            .iter()
            .map(|w| WorkerStats {
                worker: w.id.0,
                pid: w.pid,
                tasks_done: w.tasks_done,
                busy_ns: w.busy_ns,
                in_flight: w.in_flight.len(),
            })
            .collect();
        self.shared.publish_stats(EngineStats {
            queued: self.queue.len(),
            in_flight: self.workers.iter().map(|w| w.in_flight.len()).sum(),
            tasks_done: self.tasks_done,
            worker_deaths: self.deaths,
            shared_payloads: self.shared_payloads,
            shared_results: self.shared_results,
            workers,
        });
    }

    fn poll_timeout(&self) -> Duration {
        let now = Instant::now();
        let mut timeout = if self.stats_dirty {
            STATS_FRESHNESS
        } else {
            IDLE_POLL
        };
        for worker in &self.workers {
            if let Some(deadline) = front_deadline(worker) {
                timeout = timeout.min(deadline.saturating_duration_since(now));
            }
        }
        if let Some(due) = self.next_steal_check() {
            // +1 ms so the check runs after the moment, not just before it.
            let wait = due.saturating_duration_since(now) + Duration::from_millis(1);
            timeout = timeout.min(wait);
        }
        timeout
    }

    fn poll_once(&mut self) {
        // Entry kinds: 0 = wake fd, 1 = result pipe, 2 = sentinel, 3 = task pipe writable.
        let mut fds = vec![posix::poll_fd(self.shared.wake.raw(), posix::POLLIN)];
        let mut owners: Vec<(usize, u8)> = vec![(usize::MAX, 0)];
        for (index, worker) in self.workers.iter().enumerate() {
            if worker.exited {
                continue;
            }
            if let Some(pipe) = &worker.result_pipe {
                fds.push(posix::poll_fd(pipe.as_raw_fd(), posix::POLLIN));
                owners.push((index, 1));
            }
            if let Some(sentinel) = &worker.sentinel {
                fds.push(posix::poll_fd(sentinel.as_raw_fd(), posix::POLLIN));
                owners.push((index, 2));
            }
            if let Some(pipe) = &worker.task_pipe {
                if !worker.out.is_empty() {
                    fds.push(posix::poll_fd(pipe.as_raw_fd(), posix::POLLOUT));
                    owners.push((index, 3));
                }
            }
        }
        let timeout_ms = self.poll_timeout().as_millis().min(i32::MAX as u128) as i32;
        if posix::poll(&mut fds, timeout_ms).is_err() {
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
        let ready = posix::POLLIN | posix::POLLHUP | posix::POLLERR | posix::POLLNVAL;
        let mut exited = Vec::new();
        for (entry, &(index, kind)) in fds.iter().zip(owners.iter()) {
            if entry.revents == 0 {
                continue;
            }
            match kind {
                0 => self.shared.wake.drain(),
                1 if entry.revents & ready != 0 => self.read_results(index),
                2 if entry.revents & ready != 0 => exited.push(index),
                _ => {}
            }
        }
        for index in exited {
            self.process_exited(index);
        }
    }

    /// Reads everything available on a worker's result pipe and handles the frames.
    fn read_results(&mut self, index: usize) {
        loop {
            let worker = &mut self.workers[index];
            let Some(pipe) = worker.result_pipe.as_ref() else {
                return;
            };
            let fd = pipe.as_raw_fd();
            match worker.reader.read_from(fd, 0) {
                Ok(0) => {
                    // EOF: the worker closed its end; its sentinel reports the exit.
                    worker.result_pipe = None;
                    self.handle_frames(index);
                    return;
                }
                Ok(_) => self.handle_frames(index),
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    worker.result_pipe = None;
                    return;
                }
            }
        }
    }

    fn handle_frames(&mut self, index: usize) {
        loop {
            let frame = match self.workers[index].reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(err) => {
                    self.protocol_failure(index, &err.to_string());
                    return;
                }
            };
            match frame.kind {
                FrameKind::Ready => {
                    let worker = &mut self.workers[index];
                    worker.ready = true;
                    if !worker.in_flight.is_empty() {
                        worker.front_started = Some(Instant::now());
                    }
                    self.startup_failures = 0;
                }
                FrameKind::Ok | FrameKind::Err => {
                    let worker = &mut self.workers[index];
                    let matches = worker.in_flight.front().map(|t| t.slot.id.0) == Some(frame.id);
                    if !matches {
                        let msg = format!("result for unknown task {}", frame.id);
                        self.protocol_failure(index, &msg);
                        return;
                    }
                    let Some(task) = worker.in_flight.pop_front() else {
                        return;
                    };
                    worker.record_task_time(frame.aux);
                    worker.front_started = if worker.in_flight.is_empty() {
                        None
                    } else {
                        Some(Instant::now())
                    };
                    self.tasks_done += 1;
                    let wants_grants = frame.shared || frame.payload.len() >= SHARED_PAYLOAD_MIN;
                    let outcome = match (frame.kind, frame.shared) {
                        (FrameKind::Ok, false) => Outcome::Value(Pickled::from(frame.payload)),
                        (FrameKind::Ok, true) => match self.take_granted(index, &frame) {
                            Ok(mut lease) => {
                                if task.slot.notify {
                                    // Loaded by the notifier as soon as it can; results the
                                    // caller loads later are not counted (they must not stop
                                    // grants).
                                    lease.count_in(&self.result_gauge);
                                }
                                self.shared_results += 1;
                                Outcome::Value(Pickled::Shared(Arc::new(lease)))
                            }
                            Err(message) => Outcome::Protocol(format!(
                                "worker pid {} sent a bad shared-memory result: {message}",
                                self.workers[index].pid
                            )),
                        },
                        _ => Outcome::TaskError(frame.payload),
                    };
                    self.finish_task(task, outcome, frame.aux);
                    // Grants go only to workers that produce large results, so pools of small
                    // tasks never create segments (start-up stays as cheap as before).
                    if wants_grants {
                        self.top_up_grants(index);
                    }
                }
                FrameKind::Returned => self.tasks_returned(index, &frame.payload),
                FrameKind::InitFailed => {
                    let payload = Arc::new(frame.payload);
                    self.shared.mark_broken(payload.clone());
                    self.fail_everything(|| Outcome::InitFailed(payload.clone()));
                    let id = self.workers[index].id;
                    self.shared.push_event(Event::InitFailed { worker: id });
                }
                other => {
                    let msg = format!("unexpected frame kind {other:?} from a worker");
                    self.protocol_failure(index, &msg);
                    return;
                }
            }
        }
    }

    /// Makes sure a ready worker holds [`GRANTS_PER_WORKER`] segments for large results, as
    /// long as the results already waiting for the loader plus the grants out stay below
    /// `GRANTS_PER_WORKER` per worker (see [`ResultGauge`]).
    fn top_up_grants(&mut self, index: usize) {
        let cap = GRANTS_PER_WORKER * self.workers.len().max(1);
        let mut committed = self.result_gauge.waiting()
            + self.workers.iter().map(|w| w.grants.len()).sum::<usize>();
        let worker = &mut self.workers[index];
        worker.wants_grants = true;
        while worker.grants.len() < GRANTS_PER_WORKER
            && committed < cap
            && worker.task_pipe.is_some()
            && !worker.releasing
        {
            committed += 1;
            let Ok(lease) = self.shared.segments.acquire(SHARED_PAYLOAD_MIN as u64) else {
                return; // out of descriptors or memory: results keep using the pipe
            };
            worker
                .out
                .push_frame(FrameKind::Grant, lease.id(), lease.raw_fd() as u64, b"");
            worker.grants.push(lease);
        }
    }

    /// The granted segment a shared result frame names, now holding `len` bytes of pickle.
    fn take_granted(&mut self, index: usize, frame: &Frame) -> Result<SegmentLease, String> {
        let reference = frame.segment().map_err(|e| e.to_string())?;
        let worker = &mut self.workers[index];
        let position = worker
            .grants
            .iter()
            .position(|lease| lease.id() == reference.segment)
            .ok_or_else(|| format!("segment {} was not granted to it", reference.segment))?;
        let mut lease = worker.grants.swap_remove(position);
        lease.set_len(reference.len);
        Ok(lease)
    }

    /// A worker sent garbage: nothing it holds can be trusted. Kill it; its tasks are failed
    /// when its exit is reported.
    fn protocol_failure(&mut self, index: usize, message: &str) {
        let worker = &mut self.workers[index];
        let _ = posix::kill(worker.pid, libc::SIGKILL);
        worker.result_pipe = None;
        let held: Vec<Task> = worker.in_flight.drain(..).collect();
        let text = format!("worker pid {} sent a corrupt stream: {message}", worker.pid);
        for task in held {
            self.finish_task(task, Outcome::Protocol(text.clone()), 0);
        }
    }

    /// The worker's process has ended: collect what it wrote before dying and tell the
    /// supervisor, which reaps it and reports the exit status.
    fn process_exited(&mut self, index: usize) {
        self.collect_remains(index);
        let worker = &self.workers[index];
        self.shared.push_event(Event::WorkerDied {
            worker: worker.id,
            pid: worker.pid,
        });
    }

    /// Reads what a finished worker wrote before it ended and closes its descriptors.
    fn collect_remains(&mut self, index: usize) {
        if self.workers[index].result_pipe.is_some() {
            self.read_results(index);
        }
        let worker = &mut self.workers[index];
        worker.exited = true;
        worker.result_pipe = None;
        worker.task_pipe = None;
        worker.sentinel = None;
        worker.out.clear();
    }

    fn worker_exited(&mut self, id: WorkerId, exitcode: Option<i32>) {
        let Some(index) = self.workers.iter().position(|w| w.id == id) else {
            return;
        };
        if !self.workers[index].exited {
            // The supervisor reaped it before its sentinel was seen: it already knows, so no
            // WorkerDied event (which would make it start a replacement for a stopped pool).
            self.collect_remains(index);
        }
        let worker = self.workers.swap_remove(index);
        self.stats_dirty = true;
        let mut held = worker.in_flight;
        let abnormal = exitcode != Some(0);
        if abnormal {
            self.deaths += 1;
        }
        let mut requeue: Vec<Task> = Vec::new();
        if worker.ready {
            if let Some(mut running) = held.pop_front() {
                let timed_out = worker
                    .timed_out
                    .filter(|(task, _)| *task == running.slot.id);
                if let Some((_, limit)) = timed_out {
                    self.finish_task(
                        running,
                        Outcome::TaskTimeout {
                            pid: worker.pid,
                            limit,
                        },
                        0,
                    );
                } else if running.retries_left > 0 {
                    running.retries_left -= 1;
                    requeue.push(running);
                } else {
                    let lost = Outcome::WorkerLost {
                        pid: worker.pid,
                        exitcode,
                    };
                    self.finish_task(running, lost, 0);
                }
            }
        } else if abnormal {
            self.startup_failures += 1;
            if self.startup_failures >= MAX_STARTUP_FAILURES {
                let attempts = self.startup_failures;
                self.shared
                    .mark_startup_failed(startup_message(exitcode, attempts));
                requeue.extend(held.drain(..));
                self.queue.extend(requeue.drain(..));
                self.fail_everything(|| Outcome::StartupFailed { exitcode, attempts });
                return;
            }
        }
        // Tasks the worker had received but not started go back to the front of the queue.
        requeue.extend(held);
        for task in requeue.into_iter().rev() {
            self.queue.push_front(task);
        }
        if self.shared.state.load(Ordering::SeqCst) >= super::STATE_TERMINATED {
            let refusal = self.refusal();
            self.fail_everything(|| refusal.clone());
        }
    }

    fn enforce_timeouts(&mut self) {
        let now = Instant::now();
        for worker in &mut self.workers {
            if worker.timed_out.is_some() || worker.exited {
                continue;
            }
            let Some(deadline) = front_deadline(worker) else {
                continue;
            };
            if now >= deadline {
                if let Some(task) = worker.in_flight.front() {
                    let limit = task.timeout.unwrap_or_default();
                    worker.timed_out = Some((task.slot.id, limit));
                    let _ = posix::kill(worker.pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Puts a large payload into a shared-memory segment when its task is dispatched (once: a
/// stolen task keeps its segment) and says whether the payload travels through a segment.
/// Inline pickles are copied; pinned buffers (split pickles) are written straight from the
/// submitter's objects. If no segment can be had, the payload goes through the pipe.
fn move_to_segment(task: &mut Task, segments: &Arc<SegmentPool>) -> bool {
    let bytes = match &task.payload {
        Pickled::Inline(bytes) => bytes,
        Pickled::Shared(_) => return true,
        Pickled::Pinned(pinned) => {
            let pinned = pinned.clone();
            task.payload = match segments.store_pinned(&pinned) {
                Ok(lease) => Pickled::Shared(Arc::new(lease)),
                // The worker recognises a split pickle that arrives inline.
                Err(_) => Pickled::from(pinned.to_vec()),
            };
            return matches!(task.payload, Pickled::Shared(_));
        }
    };
    if bytes.len() < SHARED_PAYLOAD_MIN {
        return false;
    }
    let Ok(lease) = segments.store(bytes) else {
        return false;
    };
    task.payload = Pickled::Shared(Arc::new(lease));
    true
}

/// How long a worker's current task may run before tasks queued behind it may be stolen.
fn steal_patience(worker: &Worker) -> Duration {
    let expected_ns = worker.task_ns_ewma.unwrap_or(0.0) * SLOW_FRONT_FACTOR;
    Duration::from_nanos(expected_ns as u64).max(STEAL_AFTER)
}

/// A worker gives back its unstarted tasks to an idle one when its current task has run long,
/// or when the tasks waiting behind it are, at its measured pace, worth `STEAL_AFTER` or more.
fn steal_eligible(worker: &Worker, now: Instant) -> bool {
    let waiting = worker.in_flight.len().saturating_sub(1);
    waiting >= 1
        && !worker.steal_pending
        && !worker.exited
        && !worker.releasing
        && worker.task_pipe.is_some()
        && (worker
            .front_started
            .is_some_and(|started| now.duration_since(started) >= steal_patience(worker))
            || backlog_worth_stealing(waiting, worker.task_ns_ewma))
}

/// Whether `waiting` tasks of `task_ns` each add up to at least `STEAL_AFTER`.
fn backlog_worth_stealing(waiting: usize, task_ns: Option<f64>) -> bool {
    task_ns.is_some_and(|ns| waiting as f64 * ns >= STEAL_AFTER.as_nanos() as f64)
}

fn front_deadline(worker: &Worker) -> Option<Instant> {
    if worker.timed_out.is_some() || worker.exited {
        return None;
    }
    let limit = worker.in_flight.front()?.timeout?;
    Some(worker.front_started? + limit)
}

fn startup_message(exitcode: Option<i32>, attempts: u32) -> String {
    let how = match exitcode {
        Some(code) if code < 0 => format!("were killed by signal {}", -code),
        Some(code) => format!("exited with code {code}"),
        None => "exited".to_string(),
    };
    format!(
        "{attempts} worker processes in a row {how} before finishing start-up (is the task's \
         module importable in the child, and does the start method suit this program?)"
    )
}
