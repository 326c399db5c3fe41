//! [`LlGroup`] over the `nccl` transport: one rank per GPU, windows in NCCL symmetric memory.

use ep_codegen::kernels::ll::Window;
use ep_codegen::{KernelSource, Spec};

use super::group::LlGroup;
use crate::transport::{LocalRank, NcclComm, Transport, register_windows};
use crate::{Error, Gpu, Jit};

impl LlGroup {
    /// The LL groups of the NCCL ranks this process drives: one member `(gpu, communicator)`
    /// per GPU (one for a process per GPU, several for one process over all GPUs with
    /// [`NcclComm::init_all`]). Registering the windows is collective: every rank of the
    /// communicators must call this at the same time, with the same spec. The same kernels as
    /// on virtual ranks run unchanged, one launch per GPU; each rank's peer table holds the
    /// LSA (NVLink) addresses of every rank's window, read with NCCL's device API.
    pub fn nccl(
        members: &[(&Gpu, &NcclComm)],
        jit: &Jit,
        spec: &Spec,
        kernels: &[KernelSource],
    ) -> Result<Vec<LlGroup>, Error> {
        let bytes = usize::try_from(Window::of(spec).bytes()).unwrap_or(usize::MAX);
        let windows = register_windows(spec, members, bytes)?;
        members
            .iter()
            .zip(windows)
            .map(|((gpu, _), window)| {
                let local = LocalRank::of_nccl(&window);
                LlGroup::build(
                    gpu,
                    jit,
                    spec,
                    kernels,
                    Transport::Nccl(window),
                    vec![local],
                )
            })
            .collect()
    }
}
