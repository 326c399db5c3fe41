//! Specs from YAML text, a file, a built-in name or keyword arguments, and their kernels
//! compiled through NVRTC.

use std::path::Path;

use ep_codegen::{Mode, Renderer, Spec, builtin_specs, find_builtin, parse_spec_file};
use ep_runtime::{Arch, Jit};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{spec_error, to_py, value_error};

/// A validated spec: what one deployment's kernels are specialized for.
#[pyclass(name = "Spec", module = "epc._epc", frozen)]
#[derive(Clone)]
pub struct PySpec {
    pub(crate) spec: Spec,
}

#[pymethods]
impl PySpec {
    /// The spec in canonical YAML (every default written out; it parses back to this spec).
    #[getter]
    fn yaml(&self) -> String {
        self.spec.to_canonical_yaml()
    }

    /// The digest of the canonical spec (names cached kernels).
    #[getter]
    fn hash(&self) -> String {
        self.spec.hash()
    }

    #[getter]
    fn name(&self) -> String {
        self.spec.name().to_owned()
    }

    /// `"low_latency"` or `"high_throughput"`.
    #[getter]
    fn mode(&self) -> &'static str {
        match self.spec.mode() {
            Mode::LowLatency => "low_latency",
            Mode::HighThroughput => "high_throughput",
        }
    }

    #[getter]
    fn hidden(&self) -> u32 {
        self.spec.hidden()
    }

    #[getter]
    fn experts(&self) -> u32 {
        self.spec.experts()
    }

    #[getter]
    fn top_k(&self) -> u32 {
        self.spec.top_k()
    }

    #[getter]
    fn ranks(&self) -> u32 {
        self.spec.ranks()
    }

    #[getter]
    fn local_experts(&self) -> u32 {
        self.spec.local_experts()
    }

    #[getter]
    fn max_tokens_per_rank(&self) -> u32 {
        self.spec.max_tokens_per_rank()
    }

    /// Activation dtype: `"bf16"` or `"fp16"`.
    #[getter]
    fn dtype(&self) -> &'static str {
        self.spec.dtype().as_str()
    }

    /// Payload dtype of dispatch: the activation dtype or `"fp8_e4m3"`.
    #[getter]
    fn dispatch_dtype(&self) -> &'static str {
        self.spec.dispatch_dtype().as_str()
    }

    /// Device memory one rank of this spec takes (its window, maps and workspace), in bytes.
    #[getter]
    fn window_bytes(&self) -> u64 {
        ep_codegen::MemoryPlan::of(&self.spec).per_rank()
    }

    /// The same spec with another rank count (validated again).
    fn with_ranks(&self, ranks: u32) -> PyResult<PySpec> {
        Ok(PySpec {
            spec: self
                .spec
                .with_ranks(ranks)
                .map_err(|e| spec_error(ep_codegen::Error::Spec(e)))?,
        })
    }

    fn __repr__(&self) -> String {
        let s = &self.spec;
        format!(
            "epc.Spec(name={:?}, mode={:?}, hidden={}, dtype={:?}, dispatch_dtype={:?}, experts={}, \
             top_k={}, ranks={}, max_tokens_per_rank={})",
            s.name(),
            self.mode(),
            s.hidden(),
            s.dtype().as_str(),
            s.dispatch_dtype().as_str(),
            s.experts(),
            s.top_k(),
            s.ranks(),
            s.max_tokens_per_rank()
        )
    }

    fn __eq__(&self, other: &PySpec) -> bool {
        self.spec.hash() == other.spec.hash()
    }

    fn __hash__(&self) -> u64 {
        u64::from_str_radix(&self.spec.hash()[..16], 16).unwrap_or(0)
    }
}

/// A spec from exactly one source: `yaml` (text), `path` (a file), `builtin` (a built-in name), or
/// keyword arguments holding the spec's fields (`hidden=7168, experts=256, ...`; nested ones
/// as dicts, `fp8={"block": 128, "scale": "f32"}`). Raises `SpecError` with every problem and
/// its place.
#[pyfunction]
#[pyo3(signature = (yaml=None, *, path=None, builtin=None, **fields))]
pub fn spec(
    yaml: Option<&str>,
    path: Option<&str>,
    builtin: Option<&str>,
    fields: Option<&Bound<'_, PyDict>>,
) -> PyResult<PySpec> {
    let fields = fields.filter(|f| !f.is_empty());
    let given = [
        yaml.is_some(),
        path.is_some(),
        builtin.is_some(),
        fields.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() != 1 {
        return Err(value_error(
            "give exactly one of: yaml text, path=, builtin= or the spec's fields as keywords",
        ));
    }
    let spec = if let Some(text) = yaml {
        Spec::from_yaml(text, None).map_err(|e| spec_error(ep_codegen::Error::Spec(e)))?
    } else if let Some(p) = path {
        parse_spec_file(Path::new(p)).map_err(spec_error)?
    } else if let Some(n) = builtin {
        let builtin = find_builtin(n).ok_or_else(|| value_error(ep_codegen::unknown_builtin(n)))?;
        builtin.parse().map_err(spec_error)?
    } else {
        let text = fields_yaml(fields.ok_or_else(|| value_error("no spec fields"))?)?;
        Spec::from_yaml(&text, Some("<keywords>"))
            .map_err(|e| spec_error(ep_codegen::Error::Spec(e)))?
    };
    Ok(PySpec { spec })
}

/// YAML text of keyword fields (a JSON value is YAML; nested dicts stay flow mappings), so the
/// one parser checks them with the same messages.
fn fields_yaml(fields: &Bound<'_, PyDict>) -> PyResult<String> {
    let json = fields.py().import("json")?;
    let mut text = String::new();
    for (key, value) in fields.iter() {
        let key: String = key.extract()?;
        let value: String = json.call_method1("dumps", (value,))?.extract()?;
        text.push_str(&format!("{key}: {value}\n"));
    }
    Ok(text)
}

/// Names of the built-in specs (`spec(builtin=...)`).
#[pyfunction]
pub fn builtin_spec_names() -> Vec<String> {
    builtin_specs().map(|b| b.stem().to_owned()).collect()
}

/// Renders the spec's kernels and compiles them with NVRTC for `arch` (`"sm_90"`), through the
/// cubin cache; no GPU needed. Returns one dict per kernel: `name`, `file`, `registers`,
/// `cached` and `compile_ms`. Raises `UnavailableError` without NVRTC.
#[pyfunction]
#[pyo3(signature = (spec, arch="sm_90"))]
pub fn compile<'py>(py: Python<'py>, spec: &PySpec, arch: &str) -> PyResult<Bound<'py, PyList>> {
    let arch: Arch = arch.parse().map_err(to_py)?;
    let kernels = Renderer::new()
        .and_then(|r| r.render(&spec.spec))
        .map_err(spec_error)?;
    let jit = Jit::nvrtc().map_err(to_py)?;
    let out = PyList::empty(py);
    for k in &kernels {
        let cubin = py.detach(|| jit.cubin(k, arch)).map_err(to_py)?;
        let d = PyDict::new(py);
        d.set_item("name", &k.name)?;
        d.set_item("file", &k.file_name)?;
        d.set_item("registers", cubin.metadata.stats.registers)?;
        d.set_item("cached", cubin.outcome == ep_runtime::CacheOutcome::Hit)?;
        d.set_item("compile_ms", cubin.metadata.compile_ms)?;
        out.append(d)?;
    }
    Ok(out)
}
