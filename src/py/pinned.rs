//! Pinned parts of a split pickle (`rpool._split.SplitPickle.parts()`): Python buffers whose
//! memory is written into a shared-memory segment without the GIL, by the parent's I/O thread
//! (a task's arguments, at dispatch) or by a worker (its result). Owns the one place where a
//! Python buffer's address outlives the call that got it.

use std::io::IoSlice;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyMemoryView};

use crate::engine::segments::PinnedBuffers;

/// One part: the object that owns the memory and where that memory is.
struct Part {
    /// Keeps the memory alive and unmoved: an immutable `bytes`, or a `memoryview`, which holds
    /// a buffer export of its base (a `bytearray` cannot be resized while exported). Dropped
    /// without the GIL, PyO3 defers the decref to the next time the interpreter is entered.
    _owner: Py<PyAny>,
    address: usize,
    len: usize,
}

/// The parts of one split pickle, in order.
pub(crate) struct PinnedParts {
    parts: Vec<Part>,
    total: u64,
}

impl PinnedParts {
    /// Pins every item of `parts` (each a `bytes` or a C-contiguous `memoryview`).
    pub(crate) fn from_list(parts: &Bound<'_, PyList>) -> PyResult<Self> {
        let mut pinned = Vec::with_capacity(parts.len());
        let mut total = 0u64;
        for item in parts.iter() {
            if !(item.is_exact_instance_of::<PyBytes>()
                || item.is_exact_instance_of::<PyMemoryView>())
            {
                return Err(PyTypeError::new_err(format!(
                    "split pickle parts must be bytes or memoryview, not {}",
                    item.get_type().name()?
                )));
            }
            let buffer = PyBuffer::<u8>::get(&item)?;
            if !buffer.is_c_contiguous() {
                return Err(PyValueError::new_err(
                    "split pickle parts must be C-contiguous buffers",
                ));
            }
            let part = Part {
                address: buffer.buf_ptr() as usize,
                len: buffer.len_bytes(),
                _owner: item.clone().unbind(),
            };
            drop(buffer); // the owner keeps the memory where it is; this export is not needed
            total += part.len as u64;
            pinned.push(part);
        }
        Ok(Self {
            parts: pinned,
            total,
        })
    }
}

impl PinnedBuffers for PinnedParts {
    fn total_len(&self) -> u64 {
        self.total
    }

    fn slices(&self) -> Vec<IoSlice<'_>> {
        self.parts
            .iter()
            .map(|part| {
                // SAFETY: `address`/`len` describe the buffer of `_owner`, which lives as long
                // as `self`: a `bytes` object's data never moves or changes, and a memoryview
                // keeps its base exported (not resizable, not freed) until it is released,
                // which only rpool's own code could do and does not for submitted parts. The
                // slices are only handed to the kernel (`pwritev`) or copied; a Python thread
                // writing into a submitted bytearray races like it does in the stdlib pools.
                let bytes =
                    unsafe { std::slice::from_raw_parts(part.address as *const u8, part.len) };
                IoSlice::new(bytes)
            })
            .collect()
    }
}
