//! Reading a large value out of a shared-memory segment into a new `bytes` or `bytearray`:
//! the one copy a receiver of a large payload must make. The object is made with its buffer
//! uninitialised and `pread` fills it without the GIL, so a buffer that must be private and
//! writable (NumPy-style out-of-band data) is read straight into a `bytearray` instead of
//! being read into `bytes` and copied again (a second 8 MiB of fresh memory per value).
//!
//! Most of such a read is the kernel handing out fresh pages for the new object. Those are
//! faulted in with `madvise(MADV_POPULATE_WRITE)` instead of a fault per page, and a read of
//! 4 MiB or more, by a thread allowed two CPUs, is split between it and a short-lived helper,
//! each filling its half (the parent's loader used to fault in 256 MiB of results alone while
//! the other core idled).
//!
//! Tried and dropped: advising the buffers to transparent huge pages before the read. In one
//! process, 8 MiB into fresh memory took 0.6 ms advised against 3.4 ms with 4 KiB pages, but
//! on this VM (a balloon driver hands free 2 MiB blocks back to the host) 32 kept 8 MiB
//! results came back in 106-122 ms in some runs and 258 ms in others (160 ms steady without),
//! and a full benchmark run fell to 0.75x the stdlib on that workload.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::{Mutex, PoisonError};

use pyo3::exceptions::{PyEOFError, PyOSError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

use crate::posix;

/// Reads exactly `size` bytes at `offset` of file `fd` into a new `bytes`, or a new
/// `bytearray` when `writable` (like `os.pread`, but never short: `EOFError` if the file ends
/// first). The read runs without the GIL.
#[pyfunction]
#[pyo3(signature = (fd, size, offset, writable=false))]
pub(crate) fn pread_bytes(
    py: Python<'_>,
    fd: RawFd,
    size: usize,
    offset: u64,
    writable: bool,
) -> PyResult<Bound<'_, PyAny>> {
    let length = ffi::Py_ssize_t::try_from(size)
        .map_err(|_| PyValueError::new_err(format!("cannot read {size} bytes into memory")))?;
    // SAFETY: the GIL is held. With a NULL source, both constructors return an object whose
    // `size` bytes are left uninitialised (or NULL with an exception set): a new one, except
    // that a `bytes` of size 0 is CPython's shared empty singleton, of which nothing is
    // written below (a zero-length slice, and the read loop does not run).
    let raw = unsafe {
        if writable {
            ffi::PyByteArray_FromStringAndSize(std::ptr::null(), length)
        } else {
            ffi::PyBytes_FromStringAndSize(std::ptr::null(), length)
        }
    };
    // SAFETY: `raw` is a new (owned) reference or NULL with an exception set.
    let object = unsafe { Bound::from_owned_ptr_or_err(py, raw)? };
    // SAFETY: `object` is the bytes or bytearray just made; the pointer is to its buffer (for
    // an empty one, to a static empty string), which stays where it is while it lives.
    let data = unsafe {
        if writable {
            ffi::PyByteArray_AsString(object.as_ptr())
        } else {
            ffi::PyBytes_AsString(object.as_ptr())
        }
    };
    if data.is_null() {
        return Err(PyErr::fetch(py));
    }
    let data = data.cast::<MaybeUninit<u8>>();
    // SAFETY: `data` points to the `size` bytes of the buffer `object` owns, and nothing else
    // touches them while `buffer` is used: no other code holds the object (a non-empty one is
    // new; bytes and bytearray are not tracked by the collector, so another thread cannot
    // find it through `gc` while the GIL is released), `object` outlives the read below, and
    // the closure takes only `buffer`, `fd` and `offset`. `MaybeUninit` makes no claim on the
    // contents.
    let buffer = unsafe { std::slice::from_raw_parts_mut(data, size) };
    py.detach(|| read_into(fd, buffer, offset))
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                PyEOFError::new_err(format!("fd {fd} ended before {size} bytes at {offset}"))
            }
            // OSError(errno, message), which Python turns into the subclass for the errno.
            _ => {
                let message = format!("reading {size} bytes at {offset} of fd {fd}: {err}");
                match err.raw_os_error() {
                    Some(code) => PyOSError::new_err((code, message)),
                    None => PyOSError::new_err(message),
                }
            }
        })?;
    Ok(object)
}

/// Reads of at least this many bytes are split between two threads.
const SPLIT_READ_MIN: usize = 4 << 20;

/// Fills `buffer` from `fd` at `offset`. A large read runs as two `pread`s, one on this thread
/// and one on a short-lived helper, each into its own half, when the thread may use two CPUs.
/// Most of such a read is the kernel handing out fresh pages for the new object, which two
/// threads do side by side (32 kept 8 MiB reads: ~2500 MiB/s on one thread, ~4300-4700 MiB/s
/// on two, on this 2-core VM).
///
/// Not split when the process's memory is capped (`RLIMIT_AS`, or the kernel's strict
/// overcommit): a new thread that gets its stack but then no memory for its thread-local
/// data ends the whole process in glibc, where a read on this thread would have succeeded.
fn read_into(fd: RawFd, buffer: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<()> {
    let may_split = buffer.len() >= SPLIT_READ_MIN
        && posix::cpus_allowed() >= 2
        && !posix::address_space_limited()
        && !posix::strict_overcommit();
    if !may_split {
        return read_fresh(fd, buffer, offset);
    }
    read_split(fd, buffer, offset, true)
}

/// `read_into`'s split read; `may_spawn` false reads both halves here (as when no helper
/// thread can be started).
fn read_split(
    fd: RawFd,
    buffer: &mut [MaybeUninit<u8>],
    offset: u64,
    may_spawn: bool,
) -> io::Result<()> {
    // Split on a page boundary so the two threads never fault in the same page.
    let page = posix::page_size();
    let middle = buffer.len() / 2;
    let split = middle - (buffer.as_ptr() as usize + middle) % page;
    let Some(back_offset) = offset.checked_add(split as u64) else {
        // Past any file's end: one read, which fails as `pread` does.
        return read_fresh(fd, buffer, offset);
    };
    let (front, back) = buffer.split_at_mut(split);
    // The back half goes to whichever thread takes it: the helper, or this one if no helper
    // could be started (a process or thread limit).
    let back = Mutex::new(Some(back));
    let read_back = || {
        let taken = back.lock().unwrap_or_else(PoisonError::into_inner).take();
        taken.map_or(Ok(()), |back| read_fresh(fd, back, back_offset))
    };
    std::thread::scope(|scope| {
        let helper = may_spawn
            .then(|| {
                std::thread::Builder::new()
                    .name("rpool-load".into())
                    .spawn_scoped(scope, read_back)
                    .ok()
            })
            .flatten();
        let front_read = read_fresh(fd, front, offset);
        let back_read = match helper {
            Some(helper) => helper
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the helper read panicked"))),
            None => read_back(),
        };
        front_read.and(back_read)
    })
}

/// `posix::read_exact_at` into memory that may be fresh: its whole pages are first faulted
/// in with one `madvise(MADV_POPULATE_WRITE)` per call (Linux 5.14+; elsewhere, or if that
/// fails, the read faults them in one by one as before). 32 kept 8 MiB reads into new
/// mappings: ~2400 MiB/s read directly, ~2700 MiB/s populated first, on this VM.
fn read_fresh(fd: RawFd, buffer: &mut [MaybeUninit<u8>], offset: u64) -> io::Result<()> {
    let _ = posix::populate_for_write(buffer);
    posix::read_exact_at(fd, buffer, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn memfd_with(data: &[u8]) -> std::os::fd::OwnedFd {
        let fd = posix::memfd_segment().unwrap();
        posix::write_all_at(fd.as_raw_fd(), data, 0).unwrap();
        fd
    }

    fn split_read_to_vec(
        fd: RawFd,
        len: usize,
        offset: u64,
        may_spawn: bool,
    ) -> io::Result<Vec<u8>> {
        let mut out: Vec<u8> = Vec::with_capacity(len);
        read_split(fd, &mut out.spare_capacity_mut()[..len], offset, may_spawn)?;
        // SAFETY: read_split filled all `len` bytes (it returned Ok).
        unsafe { out.set_len(len) };
        Ok(out)
    }

    #[test]
    fn split_reads_fill_both_halves_with_or_without_a_helper() {
        let data: Vec<u8> = (0..9 * 1024 * 1024 + 77)
            .map(|i| (i * 7 % 253) as u8)
            .collect();
        let fd = memfd_with(&data);
        for may_spawn in [true, false] {
            let got = split_read_to_vec(fd.as_raw_fd(), data.len() - 300, 300, may_spawn).unwrap();
            assert!(got == data[300..], "may_spawn={may_spawn}");
        }
    }

    #[test]
    fn split_reads_report_a_file_that_ends_early_or_an_impossible_offset() {
        let data = vec![5u8; 6 * 1024 * 1024];
        let fd = memfd_with(&data);
        for may_spawn in [true, false] {
            let short = split_read_to_vec(fd.as_raw_fd(), 8 * 1024 * 1024, 0, may_spawn);
            assert_eq!(short.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
            // The back half's offset would overflow: one read, refused as pread refuses it.
            let far = split_read_to_vec(fd.as_raw_fd(), 8 * 1024 * 1024, u64::MAX - 100, may_spawn);
            assert!(far.is_err());
        }
    }
}
