//! `_Group`: one spec's kernels on the ranks this process drives on one GPU (all R as virtual
//! ranks, or one NCCL rank), called with lists of the caller's tensors (one per local rank) and
//! a raw CUDA stream. The `epc` Python package wraps it for PyTorch.

use ep_codegen::{Renderer, Spec};
use ep_runtime::transport::{NcclComm, NcclUniqueId};
use ep_runtime::{
    CombineInput, DispatchInput, Gpu, HtCombineInput, HtDispatchInput, HtGroup, Jit, LlCall,
    LlGroup, ModeGroup, Stream, Tensor,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::dlpack::{capsule_of, tensor_of};
use crate::errors::{spec_error, tensor_error, to_py, value_error};
use crate::spec::PySpec;

/// One low-latency call's state (calls alternate between the windows' two halves).
#[pyclass(name = "_Call", module = "epc._epc", unsendable)]
pub struct PyCall {
    call: LlCall,
}

/// A group of ranks on one GPU; see the module's `VirtualGroup` and `Group`.
#[pyclass(name = "_Group", module = "epc._epc", unsendable)]
pub struct PyGroup {
    spec: Spec,
    device: usize,
    kind: Option<ModeGroup>,
    /// The communicator over NCCL (made here from the unique id, destroyed with the group).
    _comm: Option<NcclComm>,
}

fn stream(raw: usize) -> Stream<'static> {
    // SAFETY: the Python layer passes the caller's current stream of the group's device (its
    // `cuda_stream`, 0 for the legacy default stream), which outlives the work it orders.
    unsafe { Stream::from_raw(raw as *mut _) }
}

/// One tensor per local rank from a Python sequence.
fn tensors(list: &Bound<'_, PyAny>, what: &str, device: usize) -> PyResult<Vec<Tensor>> {
    let items: Vec<Bound<'_, PyAny>> = list
        .try_iter()
        .map_err(|_| {
            tensor_error(format!(
                "{what}: a list of tensors (one per local rank) is expected"
            ))
        })?
        .collect::<PyResult<_>>()?;
    items
        .iter()
        .enumerate()
        .map(|(i, t)| tensor_of(t, &format!("{what}[{i}]"), device))
        .collect()
}

/// The group of `spec` on `gpu` (see [`ModeGroup::new`]), and the spec it runs.
fn make(spec: &Spec, gpu: &Gpu, comm: Option<&NcclComm>) -> PyResult<(Spec, ModeGroup)> {
    let jit = Jit::nvrtc().map_err(to_py)?;
    let renderer = Renderer::new().map_err(spec_error)?;
    let group = ModeGroup::new(gpu, &jit, &renderer, spec, comm).map_err(to_py)?;
    Ok((group.spec().clone(), group))
}

impl PyGroup {
    fn ll(&mut self) -> PyResult<&mut LlGroup> {
        match self.kind.as_mut() {
            Some(ModeGroup::Ll(l)) => Ok(l),
            Some(ModeGroup::Ht(_)) => Err(value_error(
                "this group's spec is high_throughput: use the ht_ calls",
            )),
            None => Err(value_error("the group is closed")),
        }
    }

    fn ht(&mut self) -> PyResult<&mut HtGroup> {
        match self.kind.as_mut() {
            Some(ModeGroup::Ht(h)) => Ok(h),
            Some(ModeGroup::Ll(_)) => Err(value_error(
                "this group's spec is low_latency: use the low-latency calls",
            )),
            None => Err(value_error("the group is closed")),
        }
    }

    /// Each local rank's dispatch inputs from lists of tensors.
    fn dispatch_inputs(
        &self,
        x: &Bound<'_, PyAny>,
        topk_idx: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<DispatchInput>> {
        DispatchInput::per_rank(
            tensors(x, "x", self.device)?,
            tensors(topk_idx, "topk_idx", self.device)?,
        )
        .map_err(to_py)
    }

    /// Each local rank's combine inputs from lists of tensors.
    fn combine_inputs(
        &self,
        topk_weights: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<CombineInput>> {
        CombineInput::per_rank(
            tensors(topk_weights, "topk_weights", self.device)?,
            tensors(out, "out", self.device)?,
        )
        .map_err(to_py)
    }

    fn views<'py>(
        slf: &Bound<'py, PyGroup>,
        views: Vec<(&'static str, Option<Tensor>)>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let device = slf.borrow().device;
        let d = PyDict::new(py);
        for (name, view) in views {
            match view {
                Some(v) => d.set_item(
                    name,
                    capsule_of(py, &v, device, slf.clone().into_any().unbind())?,
                )?,
                None => d.set_item(name, py.None())?,
            }
        }
        Ok(d)
    }
}

#[pymethods]
impl PyGroup {
    /// All of the spec's ranks as virtual ranks of CUDA device `device`.
    #[staticmethod]
    fn virtual_ranks(spec: &PySpec, device: usize) -> PyResult<PyGroup> {
        let gpu = Gpu::open(device).map_err(to_py)?;
        let (spec, kind) = make(&spec.spec, &gpu, None)?;
        Ok(PyGroup {
            spec,
            device,
            kind: Some(kind),
            _comm: None,
        })
    }

    /// Rank `rank` of `world_size` over NCCL on CUDA device `device`, from the job's unique id
    /// (`nccl_unique_id()` on one rank, shared with the others). Collective.
    #[staticmethod]
    fn nccl(
        spec: &PySpec,
        rank: usize,
        world_size: usize,
        unique_id: &[u8],
        device: usize,
    ) -> PyResult<PyGroup> {
        if world_size != spec.spec.ranks() as usize {
            return Err(value_error(format!(
                "the spec has {} ranks but the job {world_size}; make the spec with ranks={world_size} (spec.with_ranks)",
                spec.spec.ranks()
            )));
        }
        let id = NcclUniqueId::from_bytes(unique_id).map_err(to_py)?;
        let gpu = Gpu::open(device).map_err(to_py)?;
        let comm = NcclComm::init_rank(&gpu, &id, rank, world_size).map_err(to_py)?;
        let (spec, kind) = make(&spec.spec, &gpu, Some(&comm))?;
        Ok(PyGroup {
            spec,
            device,
            kind: Some(kind),
            _comm: Some(comm),
        })
    }

    /// The spec.
    #[getter]
    fn spec(&self) -> PySpec {
        PySpec {
            spec: self.spec.clone(),
        }
    }

    /// The CUDA device.
    #[getter]
    fn device(&self) -> usize {
        self.device
    }

    /// The global ranks this group drives, in the order its lists of tensors follow.
    #[getter]
    fn ranks(&self) -> PyResult<Vec<usize>> {
        self.kind
            .as_ref()
            .map(ModeGroup::ranks)
            .ok_or_else(|| value_error("the group is closed"))
    }

    /// A low-latency call's state (setup, not the hot path).
    fn new_call(&mut self) -> PyResult<PyCall> {
        Ok(PyCall {
            call: self.ll()?.new_call().map_err(to_py)?,
        })
    }

    /// Low-latency dispatch send: `x[i] [T, H]` and `topk_idx[i] [T, K]` of local rank i.
    fn dispatch_send(
        &mut self,
        call: &mut PyCall,
        x: &Bound<'_, PyAny>,
        topk_idx: &Bound<'_, PyAny>,
        stream_: usize,
    ) -> PyResult<()> {
        let inputs = self.dispatch_inputs(x, topk_idx)?;
        self.ll()?
            .dispatch_send(&mut call.call, &inputs, stream(stream_))
            .map_err(to_py)
    }

    /// Low-latency dispatch, send and receive in one launch.
    fn dispatch(
        &mut self,
        call: &mut PyCall,
        x: &Bound<'_, PyAny>,
        topk_idx: &Bound<'_, PyAny>,
        stream_: usize,
    ) -> PyResult<()> {
        let inputs = self.dispatch_inputs(x, topk_idx)?;
        self.ll()?
            .dispatch(&mut call.call, &inputs, stream(stream_))
            .map_err(to_py)
    }

    /// Low-latency dispatch receive.
    fn dispatch_recv(&mut self, call: &PyCall, stream_: usize) -> PyResult<()> {
        self.ll()?
            .dispatch_recv(&call.call, stream(stream_))
            .map_err(to_py)
    }

    /// The views of what local rank `i` received: a dict of DLPack capsules.
    fn received<'py>(
        slf: &Bound<'py, PyGroup>,
        call: &PyCall,
        i: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        let r = {
            let mut g = slf.borrow_mut();
            let l = g.ll()?;
            call.call.received(l, i).map_err(to_py)?
        };
        PyGroup::views(
            slf,
            vec![
                ("recv_x", Some(r.recv_x)),
                ("recv_scales", r.recv_scales),
                ("recv_count", Some(r.recv_count)),
                ("recv_src", Some(r.recv_src)),
                ("recv_range", Some(r.recv_range)),
                ("y", Some(r.y)),
            ],
        )
    }

    /// Low-latency combine send (the experts wrote `y`).
    fn combine_send(&mut self, call: &PyCall, stream_: usize) -> PyResult<()> {
        self.ll()?
            .combine_send(&call.call, stream(stream_))
            .map_err(to_py)
    }

    /// Low-latency combine receive into `out[i] [T, H]`, weighted by `topk_weights[i] [T, K]`.
    fn combine_recv(
        &mut self,
        call: &PyCall,
        topk_weights: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        stream_: usize,
    ) -> PyResult<()> {
        let inputs = self.combine_inputs(topk_weights, out)?;
        self.ll()?
            .combine_recv(&call.call, &inputs, stream(stream_))
            .map_err(to_py)
    }

    /// Low-latency combine, send and receive in one launch.
    fn combine(
        &mut self,
        call: &PyCall,
        topk_weights: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        stream_: usize,
    ) -> PyResult<()> {
        let inputs = self.combine_inputs(topk_weights, out)?;
        self.ll()?
            .combine(&call.call, &inputs, stream(stream_))
            .map_err(to_py)
    }

    /// High-throughput dispatch send (layout, notify and the rows).
    fn ht_dispatch_send(
        &mut self,
        x: &Bound<'_, PyAny>,
        topk_idx: &Bound<'_, PyAny>,
        topk_weights: &Bound<'_, PyAny>,
        stream_: usize,
    ) -> PyResult<()> {
        let device = self.device;
        let inputs = HtDispatchInput::per_rank(
            tensors(x, "x", device)?,
            tensors(topk_idx, "topk_idx", device)?,
            tensors(topk_weights, "topk_weights", device)?,
        )
        .map_err(to_py)?;
        self.ht()?
            .dispatch_send(&inputs, stream(stream_))
            .map_err(to_py)
    }

    /// The routing layout of one rank's `topk_idx [T, K]` into `counters [R + E + 2]` (i32) and
    /// `is_token_in_rank [T, R]` (bool), on the stream, no host synchronization.
    fn ht_layout(
        &mut self,
        topk_idx: &Bound<'_, PyAny>,
        counters: &Bound<'_, PyAny>,
        is_token_in_rank: &Bound<'_, PyAny>,
        stream_: usize,
    ) -> PyResult<()> {
        let device = self.device;
        let ids = tensor_of(topk_idx, "topk_idx", device)?;
        let c = tensor_of(counters, "counters", device)?;
        let in_rank = tensor_of(is_token_in_rank, "is_token_in_rank", device)?;
        self.ht()?
            .layout(ids, c, in_rank, stream(stream_))
            .map_err(to_py)
    }

    /// High-throughput dispatch receive.
    fn ht_dispatch_recv(&mut self, stream_: usize) -> PyResult<()> {
        self.ht()?.dispatch_recv(stream(stream_)).map_err(to_py)
    }

    /// The views of what local rank `i` received in the last high-throughput dispatch.
    fn ht_received<'py>(slf: &Bound<'py, PyGroup>, i: usize) -> PyResult<Bound<'py, PyDict>> {
        let r = slf.borrow_mut().ht()?.received(i).map_err(to_py)?;
        PyGroup::views(
            slf,
            vec![
                ("recv_x", Some(r.recv_x)),
                ("recv_scales", r.recv_scales),
                ("recv_topk_idx", Some(r.recv_topk_idx)),
                ("recv_topk_w", Some(r.recv_topk_w)),
                ("recv_src", Some(r.recv_src)),
                ("y", Some(r.y)),
                ("recv_rows", Some(r.recv_rows)),
                (
                    "num_recv_tokens_per_expert",
                    Some(r.num_recv_tokens_per_expert),
                ),
                ("group_offset", Some(r.group_offset)),
            ],
        )
    }

    /// High-throughput combine send (the experts wrote `y`).
    fn ht_combine_send(&mut self, stream_: usize) -> PyResult<()> {
        self.ht()?.combine_send(stream(stream_)).map_err(to_py)
    }

    /// High-throughput combine receive into `out[i] [T, H]`.
    fn ht_combine_recv(
        &mut self,
        topk_idx: &Bound<'_, PyAny>,
        topk_weights: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        stream_: usize,
    ) -> PyResult<()> {
        let device = self.device;
        let inputs = HtCombineInput::per_rank(
            tensors(topk_idx, "topk_idx", device)?,
            tensors(topk_weights, "topk_weights", device)?,
            tensors(out, "out", device)?,
        )
        .map_err(to_py)?;
        self.ht()?
            .combine_recv(&inputs, stream(stream_))
            .map_err(to_py)
    }

    /// Waits for the stream and raises the first error the kernels recorded (`DeviceError`).
    fn check(&mut self, stream_: usize) -> PyResult<()> {
        match self.kind.as_mut() {
            Some(g) => g.check(stream(stream_)).map_err(to_py),
            None => Err(value_error("the group is closed")),
        }
    }

    /// Frees the windows (over NCCL after meeting every rank once more). Tensors viewing them
    /// must not be used afterwards; further calls raise.
    fn close(&mut self) -> PyResult<()> {
        let closed = self.kind.take().map_or(Ok(()), ModeGroup::close);
        self._comm = None;
        closed.map_err(to_py)
    }
}

/// A new NCCL unique id (on one rank; shared with the others, e.g. through torch.distributed).
#[pyfunction]
pub fn nccl_unique_id(py: Python<'_>) -> PyResult<Bound<'_, PyBytes>> {
    let id = NcclComm::unique_id().map_err(to_py)?;
    Ok(PyBytes::new(py, id.as_bytes()))
}

/// Registers the classes and functions.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGroup>()?;
    m.add_class::<PyCall>()?;
    m.add_function(pyo3::wrap_pyfunction!(nccl_unique_id, m)?)?;
    Ok(())
}
