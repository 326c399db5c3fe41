//! Launching the routing-layout kernel and reading its results.

use std::ffi::c_void;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg, sys::CUevent_flags};
use ep_codegen::{IndexDtype, KernelSource, Spec};

use crate::device_index::DeviceIndex;
use crate::error::CudaContextExt;
use crate::ll::Stream;
use crate::reference::Layout;
use crate::routing::Routing;
use crate::{Error, Gpu, Jit, LoadedKernel};

/// The layout kernel of one spec, loaded on a GPU.
#[derive(Debug)]
pub struct LayoutKernel {
    function: CudaFunction,
    experts: usize,
    ranks: usize,
    top_k: usize,
    max_tokens: usize,
    index_dtype: IndexDtype,
    block_threads: u32,
}

/// Device buffers of one call.
struct Buffers {
    topk_idx: DeviceIndex,
    counters: CudaSlice<i32>,
    is_token_in_rank: CudaSlice<bool>,
    num_tokens: usize,
}

impl LayoutKernel {
    /// Compiles (through the cache) and loads the layout kernel rendered for `spec`.
    pub fn load(
        gpu: &Gpu,
        jit: &Jit,
        spec: &Spec,
        kernel: &KernelSource,
    ) -> Result<(LayoutKernel, LoadedKernel), Error> {
        if kernel.name != "layout" || kernel.spec_hash != spec.hash() {
            return Err(Error::Input(format!(
                "{} is not the layout kernel of spec `{}`",
                kernel.file_name,
                spec.name()
            )));
        }
        let loaded = jit.load(gpu, kernel)?;
        Ok((
            LayoutKernel {
                function: loaded.functions[0].clone(),
                experts: spec.experts() as usize,
                ranks: spec.ranks() as usize,
                top_k: spec.top_k() as usize,
                max_tokens: spec.max_tokens_per_rank() as usize,
                index_dtype: spec.index_dtype(),
                block_threads: kernel.launch.block_threads,
            },
            loaded,
        ))
    }

    /// Computes the layout of `routing` on the GPU. Ids outside `[-1, E)` are an
    /// [`Error::BadExpertId`] naming the first one.
    pub fn run(&self, gpu: &Gpu, routing: &Routing) -> Result<Layout, Error> {
        let mut buffers = self.upload(gpu, routing)?;
        self.launch(gpu, &mut buffers)?;
        let stream = gpu.stream();
        let counters = stream
            .clone_dtoh(&buffers.counters)
            .cuda("reading the layout counters")?;
        let in_rank = stream
            .clone_dtoh(&buffers.is_token_in_rank)
            .cuda("reading is_token_in_rank")?;
        let (r, e) = (self.ranks, self.experts);
        let bad_count = counters[r + e];
        if bad_count > 0 {
            let flat = (i32::MAX - counters[r + e + 1]) as usize;
            let (token, slot) = (flat / self.top_k, flat % self.top_k);
            return Err(Error::BadExpertId {
                token,
                slot,
                value: routing.expert(token, slot),
                experts: self.experts as u32,
                count: bad_count as usize,
            });
        }
        Ok(Layout {
            num_tokens_per_rank: counters[..r].to_vec(),
            num_tokens_per_expert: counters[r..r + e].to_vec(),
            is_token_in_rank: in_rank[..routing.num_tokens * r]
                .iter()
                .map(|&b| u8::from(b))
                .collect(),
        })
    }

    /// Mean time of one launch (counter reset included) over `iters` launches after `warmup`,
    /// measured with CUDA events, in microseconds.
    pub fn time_us(
        &self,
        gpu: &Gpu,
        routing: &Routing,
        warmup: usize,
        iters: usize,
    ) -> Result<f64, Error> {
        let mut buffers = self.upload(gpu, routing)?;
        for _ in 0..warmup {
            self.launch(gpu, &mut buffers)?;
        }
        let ctx = gpu.context();
        let start = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .cuda("creating an event")?;
        let stop = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .cuda("creating an event")?;
        start.record(gpu.stream()).cuda("recording an event")?;
        for _ in 0..iters.max(1) {
            self.launch(gpu, &mut buffers)?;
        }
        stop.record(gpu.stream()).cuda("recording an event")?;
        stop.synchronize().cuda("waiting for the timed launches")?;
        let ms = start.elapsed_ms(&stop).cuda("reading the event timer")?;
        Ok(f64::from(ms) * 1e3 / iters.max(1) as f64)
    }

    /// Zeroes `counters` and launches on `stream` over `tokens` tokens: the device path of a
    /// high-throughput call, with no host work.
    ///
    /// # Safety
    /// `topk_idx` must hold `tokens * K` ids of the spec's index type, `counters` `R + E + 2`
    /// ints and `is_token_in_rank` `tokens * R` bytes, device memory of the stream's GPU alive
    /// until the launch completes; the GPU's context must be current.
    pub(crate) unsafe fn launch_raw(
        &self,
        stream: Stream<'_>,
        topk_idx: CUdeviceptr,
        tokens: usize,
        counters: CUdeviceptr,
        is_token_in_rank: CUdeviceptr,
    ) -> Result<(), Error> {
        let bytes = (self.ranks + self.experts + 2) * 4;
        // SAFETY: `counters` holds R + E + 2 ints (the caller's contract).
        unsafe { cudarc::driver::result::memset_d8_async(counters, 0, bytes, stream.raw()) }
            .cuda("zeroing the layout counters")?;
        let blocks = tokens.div_ceil(self.block_threads as usize).max(1) as u32;
        let (mut idx, mut n, mut c, mut in_rank) =
            (topk_idx, tokens as i32, counters, is_token_in_rank);
        let mut params = [
            (&raw mut idx).cast::<c_void>(),
            (&raw mut n).cast::<c_void>(),
            (&raw mut c).cast::<c_void>(),
            (&raw mut in_rank).cast::<c_void>(),
        ];
        // SAFETY: the parameters match the kernel's signature (index pointer, int, int*, bool*),
        // each passed by address and copied by the driver before it returns; the buffers are the
        // caller's contract.
        unsafe {
            cudarc::driver::result::launch_kernel(
                self.function.cu_function(),
                (blocks, 1, 1),
                (self.block_threads, 1, 1),
                0,
                stream.raw(),
                &mut params,
            )
        }
        .cuda("launching the layout kernel")
    }

    fn upload(&self, gpu: &Gpu, routing: &Routing) -> Result<Buffers, Error> {
        let t = routing.num_tokens;
        if routing.top_k != self.top_k {
            return Err(Error::Input(format!(
                "routing has top-k {}, the spec {}",
                routing.top_k, self.top_k
            )));
        }
        if t > self.max_tokens {
            return Err(Error::Input(format!(
                "{t} tokens exceed max_tokens_per_rank = {}",
                self.max_tokens
            )));
        }
        if routing.topk_idx.len() != t * self.top_k {
            return Err(Error::Input(format!(
                "topk_idx has {} entries, expected T * K = {t} * {}",
                routing.topk_idx.len(),
                self.top_k
            )));
        }
        let stream = gpu.stream();
        let topk_idx = DeviceIndex::upload(stream, self.index_dtype, &routing.topk_idx)?;
        let counters = stream
            .alloc_zeros::<i32>(self.ranks + self.experts + 2)
            .cuda("allocating the layout counters")?;
        let is_token_in_rank = stream
            .alloc_zeros::<bool>((t * self.ranks).max(1))
            .cuda("allocating is_token_in_rank")?;
        Ok(Buffers {
            topk_idx,
            counters,
            is_token_in_rank,
            num_tokens: t,
        })
    }

    /// Zeroes the counters and launches, on the GPU's stream.
    fn launch(&self, gpu: &Gpu, b: &mut Buffers) -> Result<(), Error> {
        let stream = gpu.stream();
        stream
            .memset_zeros(&mut b.counters)
            .cuda("zeroing the layout counters")?;
        let blocks = b.num_tokens.div_ceil(self.block_threads as usize).max(1) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (self.block_threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let num_tokens = b.num_tokens as i32;
        let mut launch = stream.launch_builder(&self.function);
        b.topk_idx.push(&mut launch);
        launch
            .arg(&num_tokens)
            .arg(&mut b.counters)
            .arg(&mut b.is_token_in_rank);
        // SAFETY: the arguments match the kernel's signature (index pointer of the spec's index
        // type, int, int*, bool*); `topk_idx` holds T * K ids, `counters` R + E + 2 ints and
        // `is_token_in_rank` at least T * R bytes, and the kernel touches nothing else.
        unsafe { launch.launch(cfg) }.cuda("launching the layout kernel")?;
        Ok(())
    }
}
