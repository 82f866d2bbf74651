//! Reading a large value out of a shared-memory segment into a new `bytes` or `bytearray`:
//! the one copy a receiver of a large payload must make. The object is made with its buffer
//! uninitialised and `pread` fills it without the GIL, so a buffer that must be private and
//! writable (NumPy-style out-of-band data) is read straight into a `bytearray` instead of
//! being read into `bytes` and copied again (a second 8 MiB of fresh memory per value).
//!
//! Tried and dropped: advising the buffers to transparent huge pages before the read. In one
//! process, 8 MiB into fresh memory took 0.6 ms advised against 3.4 ms with 4 KiB pages, but
//! on this VM (a balloon driver hands free 2 MiB blocks back to the host) 32 kept 8 MiB
//! results came back in 106-122 ms in some runs and 258 ms in others (160 ms steady without),
//! and a full benchmark run fell to 0.75x the stdlib on that workload.

use std::mem::MaybeUninit;
use std::os::fd::RawFd;

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
    py.detach(|| posix::read_exact_at(fd, buffer, offset))
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
