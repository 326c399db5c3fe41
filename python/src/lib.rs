//! `epc._epc`: the Rust core of the `epc` Python package (built with maturin, abi3). Specs
//! (`spec`, `builtin_spec_names`, `compile`), groups of ranks on one GPU (`_Group`: virtual
//! ranks or one NCCL rank) taking the caller's tensors through DLPack or
//! `__cuda_array_interface__` and handing out views of its windows as DLPack capsules, and
//! epc's errors as exceptions. `python/epc/__init__.py` wraps it for PyTorch.

mod dlpack;
mod errors;
mod group;
mod spec;

use pyo3::prelude::*;

/// The package's version.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The module.
#[pymodule]
fn _epc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_class::<spec::PySpec>()?;
    m.add_function(wrap_pyfunction!(spec::spec, m)?)?;
    m.add_function(wrap_pyfunction!(spec::builtin_spec_names, m)?)?;
    m.add_function(wrap_pyfunction!(spec::compile, m)?)?;
    group::register(m)?;
    errors::register(m)?;
    Ok(())
}
