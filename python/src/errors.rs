//! epc's errors as Python exceptions: one base class, one subclass per kind a caller handles
//! differently, each carrying epc's message.

use ep_runtime::{Error, ErrorKind};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    _epc,
    EpcError,
    PyRuntimeError,
    "Base class of epc's errors; the message says what went wrong and what to do."
);
pyo3::create_exception!(
    _epc,
    SpecError,
    EpcError,
    "The spec does not parse or breaks a rule (the message gives the place)."
);
pyo3::create_exception!(
    _epc,
    UnavailableError,
    EpcError,
    "Something epc needs is missing here: the CUDA driver, a GPU, NVRTC or NCCL."
);
pyo3::create_exception!(
    _epc,
    DeviceError,
    EpcError,
    "A kernel reported an error (a bad expert id, a full receive buffer, a timeout); that call's results are not valid."
);
pyo3::create_exception!(
    _epc,
    TensorError,
    EpcError,
    "A tensor does not fit the call: its shape, dtype, device, layout or count."
);

/// The Python exception of a runtime error.
pub fn to_py(e: Error) -> PyErr {
    let message = e.to_string();
    match e.kind() {
        ErrorKind::Spec => SpecError::new_err(message),
        ErrorKind::Unavailable => UnavailableError::new_err(message),
        ErrorKind::Device => DeviceError::new_err(message),
        ErrorKind::Input => TensorError::new_err(message),
        ErrorKind::Other => EpcError::new_err(message),
    }
}

/// The Python exception of a spec error.
pub fn spec_error(e: ep_codegen::Error) -> PyErr {
    to_py(Error::Codegen(e))
}

/// A bad tensor argument.
pub fn tensor_error(message: impl Into<String>) -> PyErr {
    TensorError::new_err(message.into())
}

/// A bad non-tensor argument.
pub fn value_error(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("EpcError", py.get_type::<EpcError>())?;
    m.add("SpecError", py.get_type::<SpecError>())?;
    m.add("UnavailableError", py.get_type::<UnavailableError>())?;
    m.add("DeviceError", py.get_type::<DeviceError>())?;
    m.add("TensorError", py.get_type::<TensorError>())?;
    Ok(())
}
