//! Shared-memory segments: how large pickles travel between the parent and its workers without
//! going through a pipe.
//!
//! A segment is a memfd that the parent creates and owns; a worker reaches it by opening
//! `/proc/<parent pid>/fd/<n>` (same user, so always allowed), so no descriptor passing is needed
//! and a segment outlives any worker that used it.
//!
//! - **Task payloads** of at least [`SHARED_PAYLOAD_MIN`] bytes are copied into a segment when
//!   they are dispatched; the worker reads it from there. A split pickle (large buffers pickled
//!   out of band, `python/rpool/_split.py`) arrives as [`Pinned`] buffers and is written with
//!   one `pwritev` straight from the submitter's objects. The segment belongs to the task and
//!   returns to the pool when the task ends; writing at dispatch, not at submit, means only
//!   the tasks in flight hold segments, so they are mostly recycled ones.
//! - **Results**: each worker holds a few *granted* segments (`Grant` frames). A large result is
//!   written into one and announced by a shared `Ok` frame; the parent loads it when the result
//!   is asked for (or at once, by the notifier), then the segment returns to the pool. While
//!   results the notifier will load are waiting, [`ResultGauge`] holds new grants back.
//!
//! Segments are recycled, not recreated: on this machine a fresh 8 MiB memfd costs ~4 ms of
//! page allocation, a reused one ~0.7 ms to fill (README, Performance notes). Every lease returns its
//! segment on drop, so nothing leaks when a task fails, is cancelled or its worker dies.
#![forbid(unsafe_code)]

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::posix;
use crate::protocol::SegmentRef;

/// Pickles at least this large go through a segment. Below it a pipe is as fast: mapping a
/// segment and the extra frames cost ~50 µs, which a 1 MiB pipe transfer (~0.2 ms) barely beats.
pub const SHARED_PAYLOAD_MIN: usize = 512 * 1024;

/// The first bytes of a split pickle (layout: `python/rpool/_split.py`, which reads this
/// constant from the native module).
pub const SPLIT_PICKLE_MAGIC: &[u8] = b"rpoolSP1";

/// Idle segments kept for reuse at most (more are closed, freeing their memory).
const MAX_FREE_SEGMENTS: usize = 16;

/// Total size of idle segments kept for reuse at most: memory a quiet pool holds on to in
/// exchange for not paying page allocation again on its next large payload.
const MAX_FREE_BYTES: u64 = 256 << 20;

struct Segment {
    id: u64,
    fd: OwnedFd,
    /// Bytes the memfd holds (its largest write so far).
    size: u64,
}

/// The parent's segments: a free list plus the id counter.
#[derive(Default)]
pub struct SegmentPool {
    free: Mutex<Vec<Segment>>,
    next_id: AtomicU64,
}

/// Use of one segment; returns it to the pool when dropped.
pub struct SegmentLease {
    segment: Option<Segment>,
    pool: Arc<SegmentPool>,
    /// Bytes of pickle the segment currently holds.
    len: u64,
    /// Set for a result segment counted by a [`ResultGauge`] until it is loaded.
    gauge: Option<Arc<ResultGauge>>,
}

/// Counts the large results that sit in segments waiting for the parent's loader (the notifier
/// thread), and signals when one is loaded. The I/O thread grants workers new result segments
/// only while few results wait: when the loader lags, a worker waits for a segment to come back
/// instead of the pool creating fresh ones (fresh memory is what large values cost most here).
pub struct ResultGauge {
    waiting: AtomicUsize,
    loaded_since_check: AtomicBool,
    on_loaded: Box<dyn Fn() + Send + Sync>,
}

impl ResultGauge {
    /// `on_loaded` runs (in the loading thread) each time a counted result is loaded.
    pub fn new(on_loaded: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            waiting: AtomicUsize::new(0),
            loaded_since_check: AtomicBool::new(false),
            on_loaded: Box::new(on_loaded),
        })
    }

    /// Results counted and not loaded yet.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Whether a result was loaded since the last call.
    pub fn take_loaded(&self) -> bool {
        self.loaded_since_check.swap(false, Ordering::AcqRel)
    }
}

impl SegmentPool {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A segment for at least `min_size` bytes: the smallest idle one that fits, else the
    /// largest idle one (it grows), else a new one.
    pub fn acquire(self: &Arc<Self>, min_size: u64) -> io::Result<SegmentLease> {
        let reused = {
            let mut free = self.free.lock();
            let fitting = free
                .iter()
                .enumerate()
                .filter(|(_, s)| s.size >= min_size)
                .min_by_key(|(_, s)| s.size)
                .map(|(index, _)| index);
            let largest = || {
                free.iter()
                    .enumerate()
                    .max_by_key(|(_, s)| s.size)
                    .map(|(index, _)| index)
            };
            fitting
                .or_else(largest)
                .map(|index| free.swap_remove(index))
        };
        let segment = match reused {
            Some(segment) => segment,
            None => Segment {
                id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
                fd: posix::memfd_segment()?,
                size: 0,
            },
        };
        Ok(SegmentLease {
            segment: Some(segment),
            pool: self.clone(),
            len: 0,
            gauge: None,
        })
    }

    /// A segment holding a copy of `bytes`.
    pub fn store(self: &Arc<Self>, bytes: &[u8]) -> io::Result<SegmentLease> {
        let mut lease = self.acquire(bytes.len() as u64)?;
        posix::write_all_at(lease.raw_fd(), bytes, 0)?;
        lease.set_len(bytes.len() as u64);
        Ok(lease)
    }

    /// A segment holding the pinned buffers, one after the other.
    pub fn store_pinned(self: &Arc<Self>, pinned: &Pinned) -> io::Result<SegmentLease> {
        let len = pinned.0.total_len();
        let mut lease = self.acquire(len)?;
        posix::write_vectored_all_at(lease.raw_fd(), &mut pinned.0.slices(), 0)?;
        lease.set_len(len);
        Ok(lease)
    }

    /// How many idle segments are kept (for tests and stats).
    pub fn idle(&self) -> usize {
        self.free.lock().len()
    }

    fn give_back(&self, segment: Segment) {
        let mut free = self.free.lock();
        let kept: u64 = free.iter().map(|s| s.size).sum();
        if free.len() < MAX_FREE_SEGMENTS && kept + segment.size <= MAX_FREE_BYTES {
            free.push(segment);
        }
        // Otherwise the segment is dropped here and its memory freed.
    }
}

impl SegmentLease {
    /// Counts this (result) segment in `gauge` until the lease is dropped.
    pub fn count_in(&mut self, gauge: &Arc<ResultGauge>) {
        if self.gauge.is_none() {
            gauge.waiting.fetch_add(1, Ordering::AcqRel);
            self.gauge = Some(gauge.clone());
        }
    }

    fn segment(&self) -> &Segment {
        self.segment
            .as_ref()
            .expect("a lease holds its segment until it is dropped")
    }

    pub fn id(&self) -> u64 {
        self.segment().id
    }

    /// The parent's descriptor of the segment (valid while the lease lives).
    pub fn raw_fd(&self) -> RawFd {
        self.segment().fd.as_raw_fd()
    }

    /// Bytes of pickle the segment holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records that the first `len` bytes now hold a pickle (written here or by a worker).
    pub fn set_len(&mut self, len: u64) {
        self.len = len;
        if let Some(segment) = self.segment.as_mut() {
            segment.size = segment.size.max(len);
        }
    }

    /// How a frame names this segment.
    pub fn reference(&self) -> SegmentRef {
        SegmentRef {
            segment: self.id(),
            fd: self.raw_fd() as u64,
            len: self.len,
        }
    }
}

impl Drop for SegmentLease {
    fn drop(&mut self) {
        if let Some(segment) = self.segment.take() {
            self.pool.give_back(segment);
        }
        if let Some(gauge) = self.gauge.take() {
            gauge.waiting.fetch_sub(1, Ordering::AcqRel);
            gauge.loaded_since_check.store(true, Ordering::Release);
            (gauge.on_loaded)();
        }
    }
}

impl std::fmt::Debug for SegmentLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLease")
            .field("id", &self.id())
            .field("len", &self.len)
            .finish()
    }
}

impl PartialEq for SegmentLease {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id() && self.len == other.len
    }
}

/// Buffers that stay at fixed addresses, unresized, for as long as the value lives: the parts
/// of a split pickle whose Python objects are pinned by buffer exports (`py::PinnedParts`).
/// They are written into a segment only when their task is dispatched, so that segment is
/// usually a recycled one instead of fresh memory.
pub trait PinnedBuffers: Send + Sync {
    /// Total bytes of all buffers.
    fn total_len(&self) -> u64;
    /// The buffers, in order.
    fn slices(&self) -> Vec<IoSlice<'_>>;
}

/// A shared handle on pinned buffers (compared by identity).
#[derive(Clone)]
pub struct Pinned(pub Arc<dyn PinnedBuffers>);

impl Pinned {
    /// The buffers concatenated (when no segment can be had and they must go inline).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.total_len() as usize);
        for slice in self.0.slices() {
            out.extend_from_slice(&slice);
        }
        out
    }
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pinned({} bytes)", self.0.total_len())
    }
}

impl PartialEq for Pinned {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A pickle: inline, in a segment, or pinned buffers still to be written into one.
#[derive(Debug, Clone, PartialEq)]
pub enum Pickled {
    Inline(Arc<Vec<u8>>),
    Shared(Arc<SegmentLease>),
    Pinned(Pinned),
}

impl Pickled {
    pub fn len(&self) -> usize {
        match self {
            Pickled::Inline(bytes) => bytes.len(),
            Pickled::Shared(lease) => lease.len() as usize,
            Pickled::Pinned(pinned) => pinned.0.total_len() as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u8>> for Pickled {
    fn from(bytes: Vec<u8>) -> Self {
        Pickled::Inline(Arc::new(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_back(lease: &SegmentLease) -> Vec<u8> {
        let fd = posix::open_peer_fd(posix::current_pid(), lease.raw_fd() as u64, false).unwrap();
        let mut out = vec![0u8; lease.len() as usize];
        let mut filled = 0;
        while filled < out.len() {
            let n = posix::read(fd.as_raw_fd(), &mut out[filled..]).unwrap();
            assert!(n > 0, "segment shorter than its recorded length");
            filled += n;
        }
        out
    }

    #[test]
    fn stored_bytes_read_back_and_segments_are_reused() {
        let pool = SegmentPool::new();
        let first = pool.store(&[7u8; 1000]).unwrap();
        assert_eq!(read_back(&first), vec![7u8; 1000]);
        let id = first.id();
        drop(first);
        assert_eq!(pool.idle(), 1);
        let second = pool.store(b"short").unwrap();
        assert_eq!(second.id(), id, "the idle segment is reused");
        assert_eq!(read_back(&second), b"short");
        assert_eq!(second.reference().len, 5);
    }

    #[test]
    fn acquire_prefers_the_smallest_segment_that_fits() {
        let pool = SegmentPool::new();
        let small = pool.store(&[1u8; 10]).unwrap();
        let big = pool.store(&[2u8; 5000]).unwrap();
        let (small_id, big_id) = (small.id(), big.id());
        drop(small);
        drop(big);
        assert_eq!(pool.acquire(100).unwrap().id(), big_id);
        assert_eq!(pool.acquire(1).unwrap().id(), small_id);
        // Nothing fits: the largest idle one is taken and will grow.
        assert_eq!(pool.acquire(1 << 20).unwrap().id(), big_id);
    }

    #[test]
    fn idle_segments_are_capped() {
        let pool = SegmentPool::new();
        let leases: Vec<_> = (0..MAX_FREE_SEGMENTS + 5)
            .map(|_| pool.acquire(0).unwrap())
            .collect();
        drop(leases);
        assert_eq!(pool.idle(), MAX_FREE_SEGMENTS);
    }

    #[test]
    fn gauge_counts_results_until_they_are_loaded() {
        let pool = SegmentPool::new();
        let wakes = Arc::new(AtomicUsize::new(0));
        let gauge = ResultGauge::new({
            let wakes = wakes.clone();
            move || {
                wakes.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut first = pool.store(b"one").unwrap();
        let mut second = pool.store(b"two").unwrap();
        first.count_in(&gauge);
        first.count_in(&gauge); // counted once
        second.count_in(&gauge);
        assert_eq!(gauge.waiting(), 2);
        assert!(!gauge.take_loaded());
        drop(first);
        assert_eq!(gauge.waiting(), 1);
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert!(gauge.take_loaded());
        assert!(!gauge.take_loaded());
        drop(second);
        assert_eq!(gauge.waiting(), 0);
        assert_eq!(pool.idle(), 2);
    }
}
