//! Groups: made from a spec and an `ncclComm_t` (one rank per process and GPU) or as all of the
//! spec's ranks as virtual ranks of one GPU, then described and destroyed.

use std::ffi::{CStr, c_char, c_void};
use std::path::Path;
use std::time::Duration;

use ep_codegen::{Mode, Renderer, Spec, find_builtin, parse_spec_file};
use ep_runtime::transport::NcclComm;
use ep_runtime::{Gpu, Jit, ModeGroup};

use crate::error::{Failure, boundary, epcResult_t};
use crate::tensor::epcDataType_t;

/// How to make a group. Set `size` to `sizeof(epcGroupConfig_t)` and exactly one of
/// `spec_yaml`, `spec_path` and `spec_name`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct epcGroupConfig_t {
    /// `sizeof(epcGroupConfig_t)`, so that later versions can add fields.
    pub size: u32,
    /// CUDA device ordinal of the group's GPU (with a communicator: the communicator's device).
    pub device: i32,
    /// The spec as YAML text, NUL-terminated, or null.
    pub spec_yaml: *const c_char,
    /// The path of a spec file, or null.
    pub spec_path: *const c_char,
    /// The name of a built-in spec (`"deepseek-v3-ll"`), or null.
    pub spec_name: *const c_char,
    /// How long any wait for a peer lasts before it is reported as `epcDeviceError`, in
    /// nanoseconds; 0 keeps the default (10 s).
    pub timeout_ns: u64,
}

/// What a group runs, as `epcGroupGetInfo` reports it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct epcGroupInfo_t {
    /// 0: low latency (`epcDispatchSend` and the rest), 1: high throughput.
    pub mode: i32,
    /// Ranks of the deployment (R).
    pub ranks: u32,
    /// Ranks this group drives: R for virtual ranks, 1 over a communicator.
    pub local_ranks: u32,
    /// The global rank of the first local rank (0 for virtual ranks).
    pub first_rank: u32,
    /// Hidden size (H).
    pub hidden: u32,
    /// Experts (E) and experts per rank (E / R).
    pub experts: u32,
    /// Experts per rank.
    pub local_experts: u32,
    /// Slots per token (K).
    pub top_k: u32,
    /// Tokens per rank and call, at most (M).
    pub max_tokens_per_rank: u32,
    /// `epcDataType_t` of `x` and `out`.
    pub dtype: i32,
    /// `epcDataType_t` of the received payload (FP8 codes with scales, or `dtype`).
    pub dispatch_dtype: i32,
    /// `epcDataType_t` of `topk_idx`.
    pub index_dtype: i32,
}

/// A group (`epcGroup_t`): its kernels' state, in the spec's mode.
pub struct epcGroup {
    pub(crate) kind: ModeGroup,
    /// The caller's communicator, wrapped (not owned); held while the windows are registered.
    _comm: Option<NcclComm>,
}

/// A C string argument, or an error naming it.
pub(crate) fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::argument(format!("{what} is null")));
    }
    // SAFETY: the caller passes a NUL-terminated string (the documented contract), checked
    // non-null above; it is only borrowed for this call.
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str()
        .map_err(|_| Failure::argument(format!("{what} is not UTF-8")))
}

/// The spec a config names.
fn spec_of(config: &epcGroupConfig_t) -> Result<Spec, Failure> {
    let given = [
        !config.spec_yaml.is_null(),
        !config.spec_path.is_null(),
        !config.spec_name.is_null(),
    ];
    if given.iter().filter(|&&g| g).count() != 1 {
        return Err(Failure::argument(
            "set exactly one of spec_yaml, spec_path and spec_name",
        ));
    }
    if !config.spec_yaml.is_null() {
        let yaml = text(config.spec_yaml, "spec_yaml")?;
        return Spec::from_yaml(yaml, None).map_err(|e| Failure::from(ep_codegen::Error::Spec(e)));
    }
    if !config.spec_path.is_null() {
        let path = text(config.spec_path, "spec_path")?;
        return Ok(parse_spec_file(Path::new(path))?);
    }
    let name = text(config.spec_name, "spec_name")?;
    let builtin =
        find_builtin(name).ok_or_else(|| Failure::argument(ep_codegen::unknown_builtin(name)))?;
    Ok(builtin.parse()?)
}

/// Makes a group of `config`'s spec: with `comm` null, all of the spec's ranks as virtual ranks
/// of `config->device`; otherwise one rank per process over the caller's `ncclComm_t` (which
/// the caller keeps, alive and unused by other threads, until `epcGroupDestroy`), collective
/// over the communicator. Compiles the spec's kernels with NVRTC (cached) and allocates the
/// windows. On success `*group` is the new group; on failure it is left unchanged.
///
/// # Safety
/// `group` must point to writable memory for one handle; `config` to an `epcGroupConfig_t`
/// whose strings are NUL-terminated; `comm` must be null or a live `ncclComm_t` of the libnccl
/// epc loads (one per process).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcCreateGroup(
    group: *mut *mut epcGroup,
    comm: *mut c_void,
    config: *const epcGroupConfig_t,
) -> epcResult_t {
    boundary("epcCreateGroup", || {
        if group.is_null() {
            return Err(Failure::argument("group (the output) is null"));
        }
        if config.is_null() {
            return Err(Failure::argument("config is null"));
        }
        // SAFETY: non-null, and the caller passes an epcGroupConfig_t; `size` is read first
        // so that a smaller (older) struct is refused before its missing fields are read.
        let size = unsafe { std::ptr::addr_of!((*config).size).read_unaligned() };
        if (size as usize) < std::mem::size_of::<epcGroupConfig_t>() {
            return Err(Failure::argument(format!(
                "config->size is {size}; set it to sizeof(epcGroupConfig_t) = {}",
                std::mem::size_of::<epcGroupConfig_t>()
            )));
        }
        // SAFETY: the caller's struct is at least this version's size (checked above).
        let config = unsafe { config.read_unaligned() };
        let device = usize::try_from(config.device)
            .map_err(|_| Failure::argument(format!("device {} is negative", config.device)))?;
        let spec = spec_of(&config)?;
        let gpu = Gpu::open(device)?;
        let jit = Jit::nvrtc()?;
        let nccl = if comm.is_null() {
            None
        } else {
            // SAFETY: the caller's contract: a live ncclComm_t of the libnccl epc loads, kept
            // alive and unused elsewhere until the group is destroyed (the group holds this
            // wrapper, which does not destroy it).
            Some(unsafe { NcclComm::from_raw(&gpu, comm) }?)
        };
        let mut kind = ModeGroup::new(&gpu, &jit, &Renderer::new()?, &spec, nccl.as_ref())?;
        if config.timeout_ns > 0 {
            kind.set_timeout(Duration::from_nanos(config.timeout_ns));
        }
        let made = epcGroup { kind, _comm: nccl };
        // SAFETY: `group` is non-null and writable (the caller's contract).
        unsafe { group.write(Box::into_raw(Box::new(made))) };
        Ok(())
    })
}

/// The group behind a handle, or an error.
pub(crate) fn group_mut<'a>(group: *mut epcGroup) -> Result<&'a mut epcGroup, Failure> {
    if group.is_null() {
        return Err(Failure::argument("group is null"));
    }
    // SAFETY: a non-null handle comes from epcCreateGroup and is not yet destroyed (the
    // caller's contract); calls on one group are not made from two threads at once.
    Ok(unsafe { &mut *group })
}

/// Describes a group.
///
/// # Safety
/// `group` must be a live group from `epcCreateGroup`, `info` writable memory for one
/// `epcGroupInfo_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcGroupGetInfo(
    group: *mut epcGroup,
    info: *mut epcGroupInfo_t,
) -> epcResult_t {
    boundary("epcGroupGetInfo", || {
        let g = group_mut(group)?;
        if info.is_null() {
            return Err(Failure::argument("info is null"));
        }
        let s = g.kind.spec();
        let ranks = g.kind.ranks();
        let described = epcGroupInfo_t {
            mode: match s.mode() {
                Mode::LowLatency => 0,
                Mode::HighThroughput => 1,
            },
            ranks: s.ranks(),
            local_ranks: ranks.len() as u32,
            first_rank: ranks.first().copied().unwrap_or(0) as u32,
            hidden: s.hidden(),
            experts: s.experts(),
            local_experts: s.local_experts(),
            top_k: s.top_k(),
            max_tokens_per_rank: s.max_tokens_per_rank(),
            dtype: epcDataType_t::of(ep_runtime::Elem::of(s.dtype())) as i32,
            dispatch_dtype: epcDataType_t::of(ep_runtime::Elem::of(s.dispatch_dtype())) as i32,
            index_dtype: epcDataType_t::of(ep_runtime::Elem::of_index(s.index_dtype())) as i32,
        };
        // SAFETY: non-null and writable (the caller's contract).
        unsafe { info.write(described) };
        Ok(())
    })
}

/// Destroys a group: over a communicator, collective (every rank meets once more, so that no
/// peer still reads this rank's window), then frees its windows. The caller's communicator is
/// left alive. The handle is invalid afterwards, also when an error is returned.
///
/// # Safety
/// `group` must be a live group from `epcCreateGroup` that no other thread is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epcGroupDestroy(group: *mut epcGroup) -> epcResult_t {
    boundary("epcGroupDestroy", || {
        if group.is_null() {
            return Err(Failure::argument("group is null"));
        }
        // SAFETY: a live handle from epcCreateGroup (the caller's contract), taken back once.
        let g = unsafe { Box::from_raw(group) };
        let epcGroup { kind, _comm, .. } = *g;
        let closed = kind.close();
        drop(_comm);
        Ok(closed?)
    })
}
