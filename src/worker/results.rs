//! The worker's result pipe: frames are buffered and written in batches, so a burst of tiny
//! tasks shares one `write`, while no result waits long behind the task that runs next.
//!
//! The main loop appends frames and writes the buffer itself whenever it is about to wait, after
//! a slow task, or once the buffer is large. When it starts a task while results are still
//! buffered, a flusher thread (started on first need) writes them once they are `FLUSH_AFTER`
//! old: the next task may run for seconds. Every write happens under one lock, so frames from
//! the main loop, the flusher and the reader thread (`Returned` answers) never interleave and
//! keep their order.
//!
//! std locks, not parking_lot: see `inbox.rs` (fork).
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::posix;

/// Results wait in the buffer at most about this long before they are written.
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(1);

/// The buffer is written once it reaches this size, whatever its age.
pub(crate) const FLUSH_BYTES: usize = 256 * 1024;

/// After this long without buffered results the flusher stops looking every `FLUSH_AFTER` and
/// waits to be woken: waking it for every batch of a stream of tiny tasks cost ~9% of their
/// throughput, looking every millisecond costs a wake-up per millisecond only while busy.
const FLUSHER_LINGER: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// When the oldest buffered frame was added.
    since: Option<Instant>,
    /// The flusher is waiting for frames (a notify is needed only then).
    flusher_idle: bool,
    /// The first write error; the main loop reports it.
    error: Option<io::ErrorKind>,
    closed: bool,
}

/// The result pipe and its buffer.
pub(crate) struct ResultPipe {
    fd: RawFd,
    pending: Mutex<Pending>,
    wake_flusher: Condvar,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl ResultPipe {
    pub(crate) fn new(fd: RawFd) -> Self {
        Self {
            fd,
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(64 * 1024),
                ..Pending::default()
            }),
            wake_flusher: Condvar::new(),
            flusher: Mutex::new(None),
        }
    }

    /// Every update of the buffer is a whole append or take, so a poisoned lock still guards
    /// consistent data.
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_buffer(&self, pending: &mut Pending) -> io::Result<()> {
        if let Some(kind) = pending.error {
            return Err(io::Error::new(kind, "an earlier write of results failed"));
        }
        pending.since = None;
        if pending.buf.is_empty() {
            return Ok(());
        }
        let outcome = posix::write_all(self.fd, &pending.buf);
        pending.buf.clear();
        if let Err(err) = &outcome {
            pending.error = Some(err.kind());
        }
        outcome
    }

    /// The buffer if no other thread holds it right now (the flusher may be writing).
    fn try_lock(&self) -> Option<MutexGuard<'_, Pending>> {
        match self.pending.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn append(&self, pending: &mut Pending, encode: &dyn Fn(&mut Vec<u8>)) -> usize {
        encode(&mut pending.buf);
        if pending.since.is_none() && !pending.buf.is_empty() {
            pending.since = Some(Instant::now());
            if pending.flusher_idle {
                self.wake_flusher.notify_one();
            }
        }
        pending.buf.len()
    }

    /// Appends frames (written by `encode`) to the buffer; returns the buffered size.
    pub(crate) fn buffer(&self, encode: &dyn Fn(&mut Vec<u8>)) -> usize {
        let mut pending = self.lock();
        self.append(&mut pending, encode)
    }

    /// Like [`ResultPipe::buffer`], but `None` instead of waiting while the flusher writes
    /// (callers holding the GIL then wait without it).
    pub(crate) fn try_buffer(&self, encode: &dyn Fn(&mut Vec<u8>)) -> Option<usize> {
        let mut pending = self.try_lock()?;
        Some(self.append(&mut pending, encode))
    }

    /// Since when frames are buffered (`None`: nothing is).
    pub(crate) fn buffered_since(&self) -> Option<Instant> {
        self.lock().since
    }

    /// Like [`ResultPipe::buffered_since`], but `None` instead of waiting for the lock.
    pub(crate) fn try_buffered_since(&self) -> Option<Option<Instant>> {
        self.try_lock().map(|pending| pending.since)
    }

    /// Writes the buffer now.
    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut pending = self.lock();
        self.write_buffer(&mut pending)
    }

    /// Writes the buffer, then the parts, back to back as one unit.
    pub(crate) fn write_parts(&self, parts: &[&[u8]]) -> io::Result<()> {
        let mut pending = self.lock();
        self.write_buffer(&mut pending)?;
        for part in parts {
            if let Err(err) = posix::write_all(self.fd, part) {
                pending.error = Some(err.kind());
                return Err(err);
            }
        }
        Ok(())
    }

    /// Makes sure buffered frames get written within `FLUSH_AFTER` even if the main loop is
    /// busy with a long task: starts the flusher thread the first time.
    pub(crate) fn keep_flushing(self: &Arc<Self>) -> io::Result<()> {
        let mut flusher = self.flusher.lock().unwrap_or_else(PoisonError::into_inner);
        if flusher.is_none() {
            let pipe = self.clone();
            *flusher = Some(
                std::thread::Builder::new()
                    .name("rpool-flusher".into())
                    .spawn(move || pipe.run_flusher())?,
            );
        }
        Ok(())
    }

    fn run_flusher(&self) {
        let mut pending = self.lock();
        let mut last_busy = Instant::now();
        loop {
            if pending.closed || pending.error.is_some() {
                return;
            }
            let wait = match pending.since {
                Some(since) => {
                    last_busy = Instant::now();
                    match FLUSH_AFTER.checked_sub(since.elapsed()) {
                        Some(left) if !left.is_zero() => Some(left),
                        _ => {
                            let _ = self.write_buffer(&mut pending); // the loop reports errors
                            continue;
                        }
                    }
                }
                // While results keep coming, look again every FLUSH_AFTER rather than being
                // woken for each batch; after a quiet spell, sleep until woken.
                None if last_busy.elapsed() < FLUSHER_LINGER => Some(FLUSH_AFTER),
                None => None,
            };
            pending.flusher_idle = wait.is_none();
            pending = match wait {
                Some(left) => {
                    self.wake_flusher
                        .wait_timeout(pending, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .wake_flusher
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner),
            };
            pending.flusher_idle = false;
        }
    }

    /// Stops the flusher thread (after the main loop's last flush).
    pub(crate) fn stop_flusher(&self) {
        self.lock().closed = true;
        self.wake_flusher.notify_all();
        let handle = self
            .flusher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn read_available(fd: RawFd, within: Duration) -> Vec<u8> {
        let mut set = [posix::poll_fd(fd, posix::POLLIN)];
        if posix::poll(&mut set, within.as_millis() as i32).unwrap() == 0 {
            return Vec::new();
        }
        let mut buf = vec![0u8; 4096];
        let n = posix::read(fd, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn buffered_frames_are_written_by_the_flusher_while_the_loop_is_busy() {
        let (r, w) = posix::pipe(false).unwrap();
        let pipe = Arc::new(ResultPipe::new(w.as_raw_fd()));
        pipe.buffer(&|out| out.extend_from_slice(b"one"));
        // Without the flusher nothing is written until the loop flushes.
        assert!(read_available(r.as_raw_fd(), Duration::from_millis(20)).is_empty());
        pipe.keep_flushing().unwrap();
        assert_eq!(
            read_available(r.as_raw_fd(), Duration::from_secs(5)),
            b"one"
        );
        // Later frames too, also when the flusher was idle in between.
        std::thread::sleep(Duration::from_millis(5));
        pipe.buffer(&|out| out.extend_from_slice(b"two"));
        assert_eq!(
            read_available(r.as_raw_fd(), Duration::from_secs(5)),
            b"two"
        );
        pipe.stop_flusher();
    }

    #[test]
    fn direct_writes_follow_the_buffered_frames() {
        let (r, w) = posix::pipe(false).unwrap();
        let pipe = ResultPipe::new(w.as_raw_fd());
        assert_eq!(pipe.buffer(&|out| out.extend_from_slice(b"ab")), 2);
        assert!(pipe.buffered_since().is_some());
        pipe.write_parts(&[b"cd", b"ef"]).unwrap();
        assert!(pipe.buffered_since().is_none());
        assert_eq!(
            read_available(r.as_raw_fd(), Duration::from_secs(5)),
            b"abcdef"
        );
    }

    #[test]
    fn try_calls_give_up_while_another_thread_holds_the_buffer() {
        let (_r, w) = posix::pipe(false).unwrap();
        let pipe = ResultPipe::new(w.as_raw_fd());
        assert_eq!(pipe.try_buffered_since(), Some(None));
        let held = pipe.lock();
        assert_eq!(pipe.try_buffer(&|out| out.push(1)), None);
        assert_eq!(pipe.try_buffered_since(), None);
        drop(held);
        assert_eq!(pipe.try_buffer(&|out| out.push(1)), Some(1));
        assert!(matches!(pipe.try_buffered_since(), Some(Some(_))));
    }

    #[test]
    fn a_failed_write_is_reported_by_later_calls() {
        let (r, w) = posix::pipe(false).unwrap();
        let pipe = ResultPipe::new(w.as_raw_fd());
        drop(r);
        pipe.buffer(&|out| out.extend_from_slice(b"lost"));
        assert!(pipe.flush().is_err());
        pipe.buffer(&|out| out.extend_from_slice(b"more"));
        assert!(pipe.flush().is_err());
    }
}
