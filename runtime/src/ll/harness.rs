//! Host-vector helpers on top of the device API, for tests, `epc run` and the main job: a
//! [`LowLatency`] group owns one device buffer per rank for each input and output, uploads host
//! inputs into them and reads results back. Serving stacks use [`LlGroup`] directly.

use cudarc::driver::CudaSlice;
use ep_codegen::kernels::ll::Window;
use ep_codegen::{KernelSource, Renderer, Spec};

use super::call::{CombineInput, DispatchInput, LlCall};
use super::group::LlGroup;
use super::tensor::{Elem, Stream, Tensor};
use crate::device_index::DeviceIndex;
use crate::error::CudaContextExt;
use crate::reference::ll::RankInput;
use crate::routing::Routing;
use crate::{Error, Gpu, Jit};

/// What one rank received in dispatch (host copies).
#[derive(Debug, Clone)]
pub struct RankDispatch {
    /// Rows per local expert `[L]`.
    pub recv_count: Vec<i32>,
    /// `[L, R*M]`: `s * M + t` of each row (rows past the count are left 0).
    pub recv_src: Vec<i32>,
    /// `[L, R, 2]`: (first row, rows) of each source rank.
    pub recv_range: Vec<i32>,
    /// `[L, R*M, payload bytes]`.
    pub recv_x: Vec<u8>,
    /// `[L, R*M, H/128]` FP8 scales (empty without FP8).
    pub recv_scales: Vec<f32>,
}

/// Low-latency mode with host-vector inputs and outputs, on the GPU's own stream.
pub struct LowLatency {
    group: LlGroup,
}

/// One call with device buffers for every local rank's inputs and outputs (sized for
/// `max_tokens_per_rank`), filled from host vectors.
pub struct HostCall {
    call: LlCall,
    x: Vec<CudaSlice<u16>>,
    topk_idx: Vec<DeviceIndex>,
    topk_weights: Vec<CudaSlice<f32>>,
    out: Vec<CudaSlice<u16>>,
    tokens: Vec<usize>,
    /// (max tokens, hidden, top-k) of the spec.
    dims: (usize, usize, usize),
}

impl LowLatency {
    /// Renders, compiles (through the cache) and loads the LL kernels of `spec`, on R virtual
    /// ranks of `gpu`.
    pub fn new(
        gpu: &Gpu,
        jit: &Jit,
        renderer: &Renderer,
        spec: &Spec,
    ) -> Result<LowLatency, Error> {
        LowLatency::from_kernels(gpu, jit, spec, &renderer.render(spec)?)
    }

    /// Like [`LowLatency::new`], with kernels already rendered (as `#[ep_kernel]` embeds them).
    pub fn from_kernels(
        gpu: &Gpu,
        jit: &Jit,
        spec: &Spec,
        kernels: &[KernelSource],
    ) -> Result<LowLatency, Error> {
        Ok(LowLatency {
            group: LlGroup::virtual_ranks(gpu, jit, spec, kernels)?,
        })
    }

    /// Helpers over any group (an NCCL rank, say).
    pub fn from_group(group: LlGroup) -> LowLatency {
        LowLatency { group }
    }

    /// Device memory that the group and two host calls need for `spec` on virtual ranks, in
    /// bytes ([`ep_codegen::MemoryPlan`], the figures `epc check` prints).
    pub fn memory_bytes(spec: &Spec) -> u64 {
        ep_codegen::MemoryPlan::of(spec).virtual_ranks_with_caller_tensors()
    }

    /// The device-API group underneath, given back (to [`LlGroup::close`] it with others).
    pub fn into_group(self) -> LlGroup {
        self.group
    }

    /// The device-API group underneath.
    pub fn group(&mut self) -> &mut LlGroup {
        &mut self.group
    }

    /// The GPU.
    pub fn gpu(&self) -> &Gpu {
        self.group.gpu()
    }

    /// How long receives wait for peers before reporting a timeout.
    pub fn set_timeout(&mut self, timeout: std::time::Duration) {
        self.group.set_timeout(timeout);
    }

    /// The window layout.
    pub fn window(&self) -> &Window {
        self.group.window()
    }

    /// Allocates a call and its buffers (two calls may be in flight at once).
    pub fn new_call(&mut self) -> Result<HostCall, Error> {
        let s = self.group.spec().clone();
        let ep_codegen::Dims {
            tokens: m,
            hidden: h,
            top_k: k,
            ..
        } = s.dims();
        let g = self.group.local_ranks();
        let stream = self.group.gpu().stream().clone();
        let call = self.group.new_call()?;
        let mut host = HostCall {
            call,
            x: Vec::with_capacity(g),
            topk_idx: Vec::with_capacity(g),
            topk_weights: Vec::with_capacity(g),
            out: Vec::with_capacity(g),
            tokens: vec![0; g],
            dims: (m, h, k),
        };
        for _ in 0..g {
            host.x
                .push(stream.alloc_zeros::<u16>(m * h).cuda("allocating x")?);
            host.topk_idx.push(DeviceIndex::upload(
                &stream,
                s.index_dtype(),
                &vec![-1; m * k],
            )?);
            host.topk_weights.push(
                stream
                    .alloc_zeros::<f32>(m * k)
                    .cuda("allocating topk_weights")?,
            );
            host.out
                .push(stream.alloc_zeros::<u16>(m * h).cuda("allocating out")?);
        }
        Ok(host)
    }

    /// Starts a call: every rank writes its selections into the experts' windows.
    pub fn dispatch_send(&mut self, call: &mut HostCall) -> Result<(), Error> {
        let inputs = call.dispatch_inputs(&self.group)?;
        let cuda = self.group.gpu().stream().clone();
        let stream = Stream::from(&*cuda);
        self.group.dispatch_send(&mut call.call, &inputs, stream)
    }

    /// The call's whole dispatch ([`LlGroup::dispatch`]: one launch where the ranks fit one).
    pub fn dispatch(&mut self, call: &mut HostCall) -> Result<(), Error> {
        let inputs = call.dispatch_inputs(&self.group)?;
        let cuda = self.group.gpu().stream().clone();
        let stream = Stream::from(&*cuda);
        self.group.dispatch(&mut call.call, &inputs, stream)
    }

    /// The call's whole combine ([`LlGroup::combine`]).
    pub fn combine(&mut self, call: &mut HostCall) -> Result<(), Error> {
        let inputs = call.combine_inputs(&self.group)?;
        let cuda = self.group.gpu().stream().clone();
        let stream = Stream::from(&*cuda);
        self.group.combine(&call.call, &inputs, stream)
    }

    /// Completes the call's dispatch.
    pub fn dispatch_recv(&mut self, call: &mut HostCall) -> Result<(), Error> {
        let cuda = self.group.gpu().stream().clone();
        let stream = Stream::from(&*cuda);
        self.group.dispatch_recv(&call.call, stream)
    }

    /// Announces that every rank's expert outputs of the call are complete.
    pub fn combine_send(&mut self, call: &HostCall) -> Result<(), Error> {
        let cuda = self.group.gpu().stream().clone();
        let stream = Stream::from(&*cuda);
        self.group.combine_send(&call.call, stream)
    }

    /// Pulls and reduces the experts' rows into each rank's `out [T, H]`.
    pub fn combine_recv(&mut self, call: &mut HostCall) -> Result<(), Error> {
        let inputs = call.combine_inputs(&self.group)?;
        let cuda = self.group.gpu().stream().clone();
        let stream = Stream::from(&*cuda);
        self.group.combine_recv(&call.call, &inputs, stream)
    }

    /// Waits and reports (then clears) the first error the kernels recorded.
    pub fn check(&mut self) -> Result<(), Error> {
        let cuda = self.group.gpu().stream().clone();
        let stream = Stream::from(&*cuda);
        self.group.check(stream)
    }

    /// Writes the experts' outputs of a call into the windows: per rank `[L, R*M, H]` in the
    /// received layout (what an expert kernel would write in place). Only received rows are
    /// copied.
    pub fn set_expert_outputs(&mut self, call: &HostCall, y: &[Vec<u16>]) -> Result<(), Error> {
        call.call.require_sent("set_expert_outputs")?;
        let s = self.group.spec().clone();
        let per_rank =
            (s.local_experts() * s.ranks() * s.max_tokens_per_rank() * s.hidden()) as usize;
        if y.len() != self.group.local_ranks() || y.iter().any(|v| v.len() != per_rank) {
            return Err(Error::Input(format!(
                "expert outputs: expected {} ranks of [L, R*M, H] = {per_rank} values",
                self.group.local_ranks()
            )));
        }
        let row = s.hidden() as usize;
        let rows_per_expert = (s.ranks() * s.max_tokens_per_rank()) as usize;
        for (i, values) in y.iter().enumerate() {
            let got = call.call.received(&self.group, i)?;
            let counts = self.read_i32(&got.recv_count)?;
            for (le, &n) in counts.iter().enumerate() {
                let n = (n.max(0) as usize).min(rows_per_expert);
                let first = le * rows_per_expert * row;
                let bytes: Vec<u8> = values[first..][..n * row]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                self.write(got.y.ptr() + 2 * first as u64, &bytes)?;
            }
        }
        Ok(())
    }

    /// Waits, checks for errors and copies every rank's dispatch results of a call to the host.
    /// Only received rows are copied; the rest of each tensor is left zero.
    pub fn dispatched(&mut self, call: &HostCall) -> Result<Vec<RankDispatch>, Error> {
        call.call.require_sent("dispatched")?;
        self.check()?;
        let w = *self.group.window();
        let per_expert = w.rows_per_expert as usize;
        let (payload, sc) = (w.payload_bytes as usize, w.scale_count as usize);
        let mut out = Vec::with_capacity(self.group.local_ranks());
        for i in 0..self.group.local_ranks() {
            let got = call.call.received(&self.group, i)?;
            let counts = self.read_i32(&got.recv_count)?;
            let rows = counts.len() * per_expert;
            let (mut x, mut scales, mut src) = (
                vec![0u8; rows * payload],
                vec![0u8; rows * sc * 4],
                vec![0u8; rows * 4],
            );
            for (le, &n) in counts.iter().enumerate() {
                let n = (n.max(0) as usize).min(per_expert);
                let first = (le * per_expert) as u64;
                let f = first as usize;
                self.read(
                    got.recv_x.ptr() + first * payload as u64,
                    &mut x[f * payload..][..n * payload],
                )?;
                if let Some(sv) = got.recv_scales {
                    self.read(
                        sv.ptr() + first * sc as u64 * 4,
                        &mut scales[f * sc * 4..][..n * sc * 4],
                    )?;
                }
                self.read(got.recv_src.ptr() + first * 4, &mut src[f * 4..][..n * 4])?;
            }
            out.push(RankDispatch {
                recv_count: counts,
                recv_src: ints(&src),
                recv_range: self.read_i32(&got.recv_range)?,
                recv_x: x,
                recv_scales: ints(&scales)
                    .into_iter()
                    .map(|b| f32::from_bits(b as u32))
                    .collect(),
            });
        }
        Ok(out)
    }

    /// Waits, checks for errors and copies every rank's received row counts (`[L]` per rank)
    /// to the host: the cheap part of [`LowLatency::dispatched`].
    pub fn received_counts(&mut self, call: &HostCall) -> Result<Vec<Vec<i32>>, Error> {
        call.call.require_sent("received_counts")?;
        self.check()?;
        (0..self.group.local_ranks())
            .map(|i| {
                let got = call.call.received(&self.group, i)?;
                self.read_i32(&got.recv_count)
            })
            .collect()
    }

    /// Waits, checks for errors and copies every rank's combined `out [T, H]` to the host.
    pub fn combined(&mut self, call: &HostCall) -> Result<Vec<Vec<u16>>, Error> {
        self.check()?;
        let h = self.group.spec().hidden() as usize;
        let stream = self.group.gpu().stream().clone();
        call.out
            .iter()
            .zip(call.call.tokens())
            .map(|(out, &t)| {
                let mut v = vec![0u16; t * h];
                if t > 0 {
                    stream
                        .memcpy_dtoh(&out.slice(..t * h), &mut v)
                        .cuda("reading out")?;
                }
                Ok(v)
            })
            .collect()
    }

    /// Copies `dst.len()` bytes at device address `src` (a view of this group's memory).
    fn read(&self, src: u64, dst: &mut [u8]) -> Result<(), Error> {
        // SAFETY: `src` is inside a window or call state of this group (a view from
        // `received`) holding at least `dst.len()` bytes, alive while the group is.
        unsafe { crate::raw_copy::read(self.group.gpu(), src, dst) }
    }

    /// Copies `src` to device address `dst` (a view of this group's memory).
    fn write(&self, dst: u64, src: &[u8]) -> Result<(), Error> {
        if src.is_empty() {
            return Ok(());
        }
        let stream = self.group.gpu().stream();
        // SAFETY: `dst` is inside this group's window (the `y` view of a call), with room for
        // `src.len()` bytes (received rows only); `src` lives until the stream is synchronized.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, stream.cu_stream()) }
            .cuda("writing a window")?;
        stream.synchronize().cuda("writing a window")
    }

    fn read_i32(&self, view: &Tensor) -> Result<Vec<i32>, Error> {
        let mut bytes = vec![0u8; view.bytes()];
        self.read(view.ptr(), &mut bytes)?;
        Ok(ints(&bytes))
    }
}

impl HostCall {
    /// Uploads every local rank's tokens, ids and weights (one [`RankInput`] per rank).
    pub fn set_inputs(&mut self, gpu: &Gpu, inputs: &[RankInput]) -> Result<(), Error> {
        let routings: Vec<&Routing> = inputs.iter().map(|i| &i.routing).collect();
        let xs: Vec<&[u16]> = inputs.iter().map(|i| i.x.as_slice()).collect();
        self.upload(gpu, &routings, Some(&xs))
    }

    /// Uploads every local rank's ids and weights, keeping the activations uploaded last: a
    /// rank's call of T tokens reads their first T rows. For loops of many routings over the
    /// same activations (`epc soak`).
    pub fn set_routings(&mut self, gpu: &Gpu, routings: &[Routing]) -> Result<(), Error> {
        let routings: Vec<&Routing> = routings.iter().collect();
        self.upload(gpu, &routings, None)
    }

    fn upload(
        &mut self,
        gpu: &Gpu,
        routings: &[&Routing],
        xs: Option<&[&[u16]]>,
    ) -> Result<(), Error> {
        if routings.len() != self.x.len() {
            return Err(Error::Input(format!(
                "{} rank inputs for {} ranks",
                routings.len(),
                self.x.len()
            )));
        }
        let (m, h, k) = self.dims;
        let stream = gpu.stream();
        for (rank, routing) in routings.iter().enumerate() {
            let t = routing.num_tokens;
            let x = xs.map(|xs| xs[rank]);
            let shape_ok = routing.top_k == k
                && routing.topk_idx.len() == t * k
                && routing.topk_weights.len() == t * k
                && x.is_none_or(|x| x.len() == t * h);
            if !shape_ok {
                return Err(Error::Input(format!(
                    "rank {rank}: expected x [T, {h}] and topk_idx, topk_weights [T, {k}] with \
                     T = {t}; got {} x values, {} ids, {} weights, top-k {}",
                    x.map_or(t * h, <[u16]>::len),
                    routing.topk_idx.len(),
                    routing.topk_weights.len(),
                    routing.top_k
                )));
            }
            if t > m {
                return Err(Error::Input(format!(
                    "rank {rank}: {t} tokens exceed max_tokens_per_rank = {m}"
                )));
            }
            if t > 0 {
                if let Some(x) = x {
                    stream
                        .memcpy_htod(x, &mut self.x[rank].slice_mut(..t * h))
                        .cuda("uploading x")?;
                }
                self.topk_idx[rank].write(stream, &routing.topk_idx)?;
                stream
                    .memcpy_htod(
                        &routing.topk_weights,
                        &mut self.topk_weights[rank].slice_mut(..t * k),
                    )
                    .cuda("uploading topk_weights")?;
            }
            self.tokens[rank] = t;
        }
        Ok(())
    }

    /// The device-API call underneath.
    pub fn call(&self) -> &LlCall {
        &self.call
    }

    fn dispatch_inputs(&self, group: &LlGroup) -> Result<Vec<DispatchInput>, Error> {
        let s = group.spec();
        let (h, k) = (s.hidden() as usize, s.top_k() as usize);
        let stream = group.gpu().stream();
        (0..self.x.len())
            .map(|i| {
                let t = self.tokens[i];
                Ok(DispatchInput {
                    x: Tensor::of_slice(&self.x[i], stream, &[t, h], Elem::of(s.dtype()))?,
                    topk_idx: self.topk_idx[i].view(stream, &[t, k])?,
                })
            })
            .collect()
    }

    fn combine_inputs(&self, group: &LlGroup) -> Result<Vec<CombineInput>, Error> {
        let s = group.spec();
        let (h, k) = (s.hidden() as usize, s.top_k() as usize);
        let stream = group.gpu().stream();
        (0..self.x.len())
            .map(|i| {
                let t = self.call.tokens()[i];
                Ok(CombineInput {
                    topk_weights: Tensor::of_slice(
                        &self.topk_weights[i],
                        stream,
                        &[t, k],
                        Elem::F32,
                    )?,
                    out: Tensor::of_slice(&self.out[i], stream, &[t, h], Elem::of(s.dtype()))?,
                })
            })
            .collect()
    }
}

fn ints(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
