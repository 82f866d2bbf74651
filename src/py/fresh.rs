//! Reading a large value out of a shared-memory segment into a new `bytes` (or `bytearray`),
//! the one copy a receiver of a large payload must make. Most of its cost on a VM is not the copy but the
//! fresh memory: a kept 8 MiB result is 2048 first-touch page faults at ~1.35 µs each here.
//! A buffer this large is advised to transparent huge pages before the read touches it
//! (where the kernel offers them for advised memory, as in the usual `madvise` THP mode),
//! so most of it faults in 2 MiB at a time: reading 8 MiB into fresh memory took 3.4 ms with
//! 4 KiB pages and 0.6 ms advised, and 32 kept 8 MiB results came back ~30% faster. Only the
//! whole 2 MiB pages inside the buffer are advised, so no page holds anything else; the
//! advice stays with that address range after the object is freed, and memory the allocator
//! hands out there again may be backed by huge pages too (it was in use at that size before).

use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use pyo3::exceptions::{PyEOFError, PyOSError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

use crate::posix;

/// Buffers at least this large get the huge-page advice: below it, fewer than one aligned
/// 2 MiB page can fall inside, and a read that small costs little anyway.
pub(crate) const HUGE_ADVICE_MIN: usize = 4 * 1024 * 1024;

/// Reads exactly `size` bytes at `offset` of file `fd` into a new `bytes`, or a new
/// `bytearray` when `writable` (like `os.pread`, but never short: `EOFError` if the file ends
/// first). Buffers of `HUGE_ADVICE_MIN` or more are advised to huge pages first. The read
/// runs without the GIL.
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
    // SAFETY: with a NULL source, both constructors return a new object whose `size` bytes
    // are left uninitialised (or NULL with an exception set); the GIL is held.
    let raw = unsafe {
        if writable {
            ffi::PyByteArray_FromStringAndSize(std::ptr::null(), length)
        } else {
            ffi::PyBytes_FromStringAndSize(std::ptr::null(), length)
        }
    };
    // SAFETY: `raw` is a new (owned) reference or NULL with an exception set.
    let object = unsafe { Bound::from_owned_ptr_or_err(py, raw)? };
    // SAFETY: `object` is the bytes or bytearray just made; its buffer stays where it is
    // while it lives and nothing resizes it (no other code can see it yet).
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
    // SAFETY: `data` points to the `size` bytes of the buffer `object` owns, which no other
    // code can see until this function returns it; `MaybeUninit` makes no claim on contents.
    let buffer = unsafe { std::slice::from_raw_parts_mut(data, size) };
    if size >= HUGE_ADVICE_MIN {
        posix::advise_huge_pages(data.cast::<u8>(), size);
    }
    py.detach(|| posix::read_exact_at(fd, buffer, offset))
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                PyEOFError::new_err(format!("fd {fd} ended before {size} bytes at {offset}"))
            }
            _ => PyOSError::new_err(format!(
                "reading {size} bytes at {offset} of fd {fd}: {err}"
            )),
        })?;
    Ok(object)
}
