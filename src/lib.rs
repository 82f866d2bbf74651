//! rpool's native module `rpool._rpool`: the one list of what Python sees.
//!
//! Layout: `protocol` (frames, ids) and `posix` (libc) at the bottom, `engine` (queue,
//! dispatch, results; no pyo3) above them, `py` (Python handles) and `worker` (the loop inside
//! worker processes) on top.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod engine;
pub mod errors;
pub(crate) mod posix;
pub mod protocol;
mod py;
mod worker;

use pyo3::prelude::*;

/// `gil_used`: rpool relies on the GIL (e.g. `pickle_list_slice` reads a list through borrowed
/// references), so a free-threaded interpreter keeps the GIL on while it is loaded.
#[pymodule(gil_used = true)]
fn _rpool(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<py::Core>()?;
    m.add_class::<py::AsyncResult>()?;
    m.add_class::<py::ChunkSizer>()?;
    m.add("SHARED_PAYLOAD_MIN", engine::segments::SHARED_PAYLOAD_MIN)?;
    m.add("SPLIT_PICKLE_MAGIC", engine::segments::SPLIT_PICKLE_MAGIC)?;
    m.add_function(wrap_pyfunction!(py::default_chunksize, m)?)?;
    m.add_function(wrap_pyfunction!(py::fresh::pread_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(py::fastpickle::pickle_list_slice, m)?)?;
    m.add_function(wrap_pyfunction!(py::fastpickle::pickle_call_args_py, m)?)?;
    m.add_function(wrap_pyfunction!(worker::prepare_worker, m)?)?;
    m.add_function(wrap_pyfunction!(worker::worker_loop, m)?)?;
    m.add_function(wrap_pyfunction!(worker::send_init_failure, m)?)?;
    Ok(())
}
