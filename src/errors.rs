//! `PoolError`, the engine's error type, and the one conversion of it into a Python exception.

use std::fmt;
use std::sync::Arc;

/// Why an engine call failed. Holds no Python objects so the engine stays GIL-free.
#[derive(Debug, Clone)]
pub enum PoolError {
    /// The pool was closed or terminated; the message names which.
    NotRunning(&'static str),
    /// The pool's initializer failed; payload = pickle of (exception, traceback text).
    Broken(Arc<Vec<u8>>),
    /// Workers die before finishing start-up.
    StartupFailed(String),
    /// An operating-system call failed.
    Io(String),
    /// A caller passed something the engine cannot use.
    InvalidArgument(String),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRunning(_) => write!(f, "Pool not running"),
            Self::Broken(_) => write!(
                f,
                "the pool is broken: its initializer raised in a worker, so no task can run"
            ),
            Self::StartupFailed(msg) => write!(f, "{msg}"),
            Self::Io(msg) => write!(f, "I/O error in the pool: {msg}"),
            Self::InvalidArgument(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for PoolError {}

impl From<std::io::Error> for PoolError {
    fn from(err: std::io::Error) -> Self {
        Self::Io(err.to_string())
    }
}

pyo3::import_exception!(concurrent.futures.process, BrokenProcessPool);
pyo3::import_exception!(rpool._remote, InitializerError);

impl From<PoolError> for pyo3::PyErr {
    fn from(err: PoolError) -> Self {
        use pyo3::exceptions::{PyOSError, PyValueError};
        match &err {
            PoolError::NotRunning(_) | PoolError::InvalidArgument(_) => {
                PyValueError::new_err(err.to_string())
            }
            PoolError::Broken(_) | PoolError::StartupFailed(_) => {
                InitializerError::new_err(err.to_string())
            }
            PoolError::Io(_) => PyOSError::new_err(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyo3::exceptions::{PyOSError, PyValueError};
    use pyo3::Python;

    #[test]
    fn maps_each_cause_to_the_exception_users_catch() {
        Python::initialize();
        Python::attach(|py| {
            let not_running: pyo3::PyErr = PoolError::NotRunning("closed").into();
            assert!(not_running.is_instance_of::<PyValueError>(py));
            assert_eq!(not_running.value(py).to_string(), "Pool not running");
            let broken: pyo3::PyErr = PoolError::Broken(Arc::new(vec![])).into();
            // Only checkable where the rpool package is importable (maturin builds, not cargo test).
            if py.import("rpool._remote").is_ok() {
                assert!(broken.is_instance_of::<BrokenProcessPool>(py));
            }
            let io: pyo3::PyErr = PoolError::Io("boom".into()).into();
            assert!(io.is_instance_of::<PyOSError>(py));
        });
    }
}
