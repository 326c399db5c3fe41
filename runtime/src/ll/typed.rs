//! Kernels of a spec declared in Rust (`#[ep_kernel]`, `ep_spec!`), with typed handles.
//!
//! [`LlKernels<S>`] compiles the sources that the macro embedded for `S` (through the cache) and
//! hands out [`SpecCall<S>`]s: a call of one spec cannot be given to another's kernels, and the
//! shapes of inputs and expert outputs are checked against `S` on every call.

use std::marker::PhantomData;

use ep_codegen::KernelSpec;

use super::harness::{HostCall, LowLatency, RankDispatch};
use crate::reference::ll::RankInput;
use crate::{Error, Gpu, Jit};

/// The low-latency kernels of the compile-time spec `S`.
pub struct LlKernels<S: KernelSpec> {
    ll: LowLatency,
    _spec: PhantomData<S>,
}

/// One call's tensors for the kernels of `S`.
pub struct SpecCall<S: KernelSpec> {
    call: HostCall,
    _spec: PhantomData<S>,
}

impl<S: KernelSpec> LlKernels<S> {
    /// Compiles `S`'s embedded kernels for the GPU (NVRTC, through the cache) and allocates its
    /// windows on virtual ranks.
    pub fn load(gpu: &Gpu, jit: &Jit) -> Result<LlKernels<S>, Error> {
        let spec = S::spec()?;
        let ll = LowLatency::from_kernels(gpu, jit, &spec, &S::kernel_sources()?)?;
        Ok(LlKernels {
            ll,
            _spec: PhantomData,
        })
    }

    /// A new call of `S`.
    pub fn new_call(&mut self) -> Result<SpecCall<S>, Error> {
        Ok(SpecCall {
            call: self.ll.new_call()?,
            _spec: PhantomData,
        })
    }

    /// Dispatches `inputs` (one per rank: `x [T, H]`, routing `[T, K]`) and returns what every
    /// rank received.
    pub fn dispatch(
        &mut self,
        call: &mut SpecCall<S>,
        inputs: &[RankInput],
    ) -> Result<Vec<RankDispatch>, Error> {
        call.call.set_inputs(self.ll.gpu(), inputs)?;
        self.ll.dispatch(&mut call.call)?;
        self.ll.dispatched(&call.call)
    }

    /// Combines the experts' outputs `y` (per rank `[L, R*M, H]` in the received layout) and
    /// returns every rank's `out [T, H]`.
    pub fn combine(
        &mut self,
        call: &mut SpecCall<S>,
        y: &[Vec<u16>],
    ) -> Result<Vec<Vec<u16>>, Error> {
        self.ll.set_expert_outputs(&call.call, y)?;
        self.ll.combine(&mut call.call)?;
        self.ll.combined(&call.call)
    }

    /// The untyped kernels, for the separate send and receive launches and graph capture.
    pub fn low_latency(&mut self) -> &mut LowLatency {
        &mut self.ll
    }
}

impl<S: KernelSpec> SpecCall<S> {
    /// The untyped call.
    pub fn call(&mut self) -> &mut HostCall {
        &mut self.call
    }
}
