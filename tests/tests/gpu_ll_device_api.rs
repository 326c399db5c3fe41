//! The LL device API on virtual ranks, fed only with buffers the test allocates itself on its
//! own stream: no host-vector helper copies anything. Results are read from the window views
//! the API returns and compared with the CPU reference bit for bit.

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use ep_codegen::kernels::LaunchShape;
use ep_codegen::{IndexDtype, KernelSource, Spec};
use ep_runtime::check::ll::{check_combine, check_dispatch, expert_outputs};
use ep_runtime::reference::ll::RankInput;
use ep_runtime::{
    CombineInput, DispatchInput, Elem, Error, LlCall, LlGroup, RankDispatch, Stream, Tensor,
};
use ep_tests::{gpu_jit_or_skip, read_prefix, read_view, renderer, round_inputs, write_view};

fn spec(r: u32, h: u32, k: u32, e: u32, extra: &str) -> Spec {
    let yaml = format!(
        "name: api-r{r}-h{h}\nmode: low_latency\nhidden: {h}\nexperts: {e}\ntop_k: {k}\n\
         ranks: {r}\nmax_tokens_per_rank: 16\n{extra}"
    );
    Spec::from_yaml(&yaml, None).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// One rank's tensors, allocated by the test (as a framework would).
struct Buffers {
    x: CudaSlice<u16>,
    idx32: Option<CudaSlice<i32>>,
    idx64: Option<CudaSlice<i64>>,
    w: CudaSlice<f32>,
    out: CudaSlice<u16>,
    t: usize,
}

fn upload(stream: &Arc<CudaStream>, spec: &Spec, input: &RankInput) -> Buffers {
    let t = input.routing.num_tokens;
    let pad = |n: usize| n.max(1);
    let mut x = input.x.clone();
    x.resize(pad(x.len()), 0);
    let mut w = input.routing.topk_weights.clone();
    w.resize(pad(w.len()), 0.0);
    let mut ids = input.routing.topk_idx.clone();
    ids.resize(pad(ids.len()), -1);
    let (idx32, idx64) = match spec.index_dtype() {
        IndexDtype::I32 => {
            let v: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
            (Some(stream.clone_htod(&v).unwrap()), None)
        }
        IndexDtype::I64 => (None, Some(stream.clone_htod(&ids).unwrap())),
    };
    Buffers {
        x: stream.clone_htod(&x).unwrap(),
        idx32,
        idx64,
        w: stream.clone_htod(&w).unwrap(),
        out: stream
            .alloc_zeros::<u16>(pad(t * spec.hidden() as usize))
            .unwrap(),
        t,
    }
}

fn dispatch_inputs(stream: &CudaStream, spec: &Spec, b: &[Buffers]) -> Vec<DispatchInput> {
    let (h, k) = (spec.hidden() as usize, spec.top_k() as usize);
    b.iter()
        .map(|b| DispatchInput {
            x: Tensor::of_slice(&b.x, stream, &[b.t, h], Elem::Bf16).unwrap(),
            topk_idx: match (&b.idx32, &b.idx64) {
                (Some(s), _) => Tensor::of_slice(s, stream, &[b.t, k], Elem::I32).unwrap(),
                (_, Some(s)) => Tensor::of_slice(s, stream, &[b.t, k], Elem::I64).unwrap(),
                _ => unreachable!(),
            },
        })
        .collect()
}

fn combine_inputs(stream: &CudaStream, spec: &Spec, b: &[Buffers]) -> Vec<CombineInput> {
    let (h, k) = (spec.hidden() as usize, spec.top_k() as usize);
    b.iter()
        .map(|b| CombineInput {
            topk_weights: Tensor::of_slice(&b.w, stream, &[b.t, k], Elem::F32).unwrap(),
            out: Tensor::of_slice(&b.out, stream, &[b.t, h], Elem::Bf16).unwrap(),
        })
        .collect()
}

/// Reads what every rank received through the API's views.
fn received(stream: &CudaStream, group: &LlGroup, call: &LlCall) -> Vec<RankDispatch> {
    (0..group.local_ranks())
        .map(|i| {
            let v = call.received(group, i).unwrap();
            let x_bytes = v.recv_x.elements() * v.recv_x.elem().size();
            RankDispatch {
                recv_count: read_view(stream, &v.recv_count, v.recv_count.elements()),
                recv_src: read_view(stream, &v.recv_src, v.recv_src.elements()),
                recv_range: read_view(stream, &v.recv_range, v.recv_range.elements()),
                recv_x: read_view(stream, &v.recv_x, x_bytes),
                recv_scales: v
                    .recv_scales
                    .map(|s| read_view(stream, &s, s.elements()))
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// Writes the experts' outputs into each rank's `y` view (the expert kernel's job).
fn write_y(stream: &CudaStream, group: &LlGroup, call: &LlCall, y: &[Vec<u16>]) {
    for (i, values) in y.iter().enumerate() {
        let v = call.received(group, i).unwrap();
        assert_eq!(v.y.elements(), values.len());
        write_view(stream, &v.y, values);
    }
}

fn tokens(spec: &Spec, round: usize) -> Vec<usize> {
    let m = spec.max_tokens_per_rank() as usize;
    (0..spec.ranks() as usize)
        .map(|r| [m, 0, 1, (round * 7 + r * 3) % (m + 1)][(round + r) % 4])
        .collect()
}

/// One call of `spec`'s round `round` (`tokens` per rank) on the test's own buffers and
/// `stream`, odd rounds with the hook's separate launches, even ones a launch per phase; both
/// phases compared with the reference bit for bit.
fn checked_call(
    stream: &Arc<CudaStream>,
    group: &mut LlGroup,
    call: &mut LlCall,
    spec: &Spec,
    round: usize,
    tokens: &[usize],
    what: &str,
) {
    let ins = round_inputs(spec, round, tokens);
    let bufs: Vec<Buffers> = ins.iter().map(|i| upload(stream, spec, i)).collect();
    let s = Stream::from(&**stream);
    let hook = round % 2 == 1;
    let dispatch = dispatch_inputs(stream, spec, &bufs);
    if hook {
        group.dispatch_send(call, &dispatch, s).unwrap();
        group.dispatch_recv(call, s).unwrap();
    } else {
        group.dispatch(call, &dispatch, s).unwrap();
    }
    group.check(s).unwrap_or_else(|e| panic!("{what}: {e}"));
    let got = received(stream, group, call);
    check_dispatch(spec, &ins, &got).unwrap_or_else(|e| panic!("{what}: {e}"));
    write_y(stream, group, call, &expert_outputs(spec, &got));
    let combine = combine_inputs(stream, spec, &bufs);
    if hook {
        group.combine_send(call, s).unwrap();
        group.combine_recv(call, &combine, s).unwrap();
    } else {
        group.combine(call, &combine, s).unwrap();
    }
    group.check(s).unwrap_or_else(|e| panic!("{what}: {e}"));
    let out: Vec<Vec<u16>> = bufs
        .iter()
        .map(|b| read_prefix(stream, &b.out, b.t * spec.hidden() as usize))
        .collect();
    check_combine(spec, &ins, &out).unwrap_or_else(|e| panic!("{what}: {e}"));
}

#[test]
fn device_api_on_callers_buffers_and_stream_matches_the_reference() {
    let Some((gpu, jit, _dir)) =
        gpu_jit_or_skip("device_api_on_callers_buffers_and_stream_matches_the_reference")
    else {
        return;
    };
    // The caller's own stream, not the GPU's.
    let stream = gpu.context().new_stream().unwrap();
    for spec in [
        spec(
            8,
            7168,
            8,
            64,
            "dispatch_dtype: fp8_e4m3\nindex_dtype: i64\n",
        ),
        spec(4, 2880, 4, 16, "index_dtype: i32\n"),
        spec(
            16,
            2048,
            2,
            32,
            "dispatch_dtype: fp8_e4m3\nfp8: {scale: ue8m0}\n",
        ),
    ] {
        let kernels = renderer().render(&spec).unwrap();
        let mut group = LlGroup::virtual_ranks(&gpu, &jit, &spec, &kernels).unwrap();
        let mut call = group.new_call().unwrap();
        let rounds = std::env::var("EPC_LL_ROUTINGS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(12usize);
        for round in 0..rounds {
            let what = format!("{} round {round}", spec.name());
            checked_call(
                &stream,
                &mut group,
                &mut call,
                &spec,
                round,
                &tokens(&spec, round),
                &what,
            );
        }
        eprintln!(
            "{}: {rounds} rounds through the device API match",
            spec.name()
        );
    }
}

#[test]
fn device_api_reports_bad_ids_and_shapes() {
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip("device_api_reports_bad_ids_and_shapes") else {
        return;
    };
    let stream = gpu.context().new_stream().unwrap();
    let s = Stream::from(&*stream);
    let spec = spec(2, 2048, 2, 8, "index_dtype: i64\n");
    let kernels = renderer().render(&spec).unwrap();
    let mut group = LlGroup::virtual_ranks(&gpu, &jit, &spec, &kernels).unwrap();
    let mut call = group.new_call().unwrap();
    let mut ins = round_inputs(&spec, 1, &[6, 6]);
    ins[1].routing.topk_idx[3] = 1 << 40;
    ins[1].routing.topk_idx[5] = -7;
    let bufs: Vec<Buffers> = ins.iter().map(|i| upload(&stream, &spec, i)).collect();
    let good = dispatch_inputs(&stream, &spec, &bufs);
    // Shapes: one rank missing, a wrong dtype, T > M.
    assert!(matches!(
        group.dispatch_send(&mut call, &good[..1], s),
        Err(Error::Input(_))
    ));
    let mut wrong = good.clone();
    wrong[0].x = Tensor::of_slice(&bufs[0].x, &stream, &[6, 2048], Elem::F16).unwrap();
    assert!(matches!(
        group.dispatch_send(&mut call, &wrong, s),
        Err(Error::Input(_))
    ));
    assert!(matches!(
        group.dispatch_recv(&call, s),
        Err(Error::Input(_))
    ));
    group.dispatch_send(&mut call, &good, s).unwrap();
    group.dispatch_recv(&call, s).unwrap();
    match group.check(s) {
        Err(Error::OnRank { rank: 1, source }) => match *source {
            Error::BadExpertId {
                token,
                slot,
                value,
                count,
                ..
            } => assert_eq!((token, slot, value, count), (1, 1, 1 << 40, 2)),
            other => panic!("{other:?}"),
        },
        other => panic!("expected a bad expert id on rank 1, got {other:?}"),
    }
    // The bad slots were skipped: the rest matches the reference with them as -1.
    let mut fixed = ins.clone();
    fixed[1].routing.topk_idx[3] = -1;
    fixed[1].routing.topk_idx[5] = -1;
    let got = received(&stream, &group, &call);
    check_dispatch(&spec, &fixed, &got).unwrap();
    group.check(s).unwrap();
}

/// A kernel that holds `hold` SMs for `ns` nanoseconds: one block of 1024 threads and all the
/// shared memory a block may have per SM (no LL block fits beside it); its blocks beyond `hold`
/// SMs end at once.
const HOG: &str = r#"
extern "C" __global__ void __launch_bounds__(1024, 1)
epc_test_hog(unsigned long long ns, int* claimed, int* held, int hold) {
  __shared__ int spin;
  if (threadIdx.x == 0) {
    unsigned smid;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
    spin = atomicCAS(&claimed[smid % 4096], 0, 1) == 0 && atomicAdd(held, 1) < hold;
  }
  __syncthreads();
  if (!spin) return;
  unsigned long long start;
  unsigned long long now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns);
}
"#;

fn hog_source() -> KernelSource {
    KernelSource {
        spec_name: "test".into(),
        spec_hash: "0".into(),
        name: "hog".into(),
        entries: vec!["epc_test_hog".into()],
        file_name: "test.hog.cu".into(),
        source_hash: "0".into(),
        constants: Default::default(),
        launch: LaunchShape {
            block_threads: 1024,
            tokens_per_block: 0,
            shared_mem_bytes: 0,
            cooperative: false,
        },
        params: Vec::new(),
        source: HOG.into(),
    }
}

/// The LL grids need not be co-resident: while another stream's kernel holds all but 12 of the
/// GPU's SMs, the 8 virtual ranks' dispatches (a rank's share of the SMs each, in copy mode) and
/// combines, in one launch per phase and in the hook's two, complete beside it, correct, well
/// before it ends.
#[test]
fn calls_complete_while_another_kernel_holds_most_of_the_gpu() {
    let Some((gpu, jit, _dir)) =
        gpu_jit_or_skip("calls_complete_while_another_kernel_holds_most_of_the_gpu")
    else {
        return;
    };
    let spec = spec(8, 7168, 8, 64, "index_dtype: i32\n");
    let kernels = renderer().render(&spec).unwrap();
    let mut group = LlGroup::virtual_ranks(&gpu, &jit, &spec, &kernels).unwrap();
    group.set_timeout(Duration::from_millis(500));
    let mut call = group.new_call().unwrap();
    let hog = jit.load(&gpu, &hog_source()).unwrap().functions.remove(0);
    // All a block may take, less 1 KB for the kernel's own shared int.
    let shared = gpu
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .unwrap() as u32
        - 1024;
    hog.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        shared as i32,
    )
    .unwrap();
    let free = 12u32;
    assert!(gpu.sms() > 2 * free, "a GPU of {} SMs", gpu.sms());
    let busy = gpu.context().new_stream().unwrap();
    let work = gpu.context().new_stream().unwrap();
    let claimed = busy.alloc_zeros::<i32>(4096).unwrap();
    let held = busy.alloc_zeros::<i32>(1).unwrap();
    let (ns, hold) = (3_000_000_000u64, (gpu.sms() - free) as i32);
    let cfg = LaunchConfig {
        grid_dim: (gpu.sms(), 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: shared,
    };
    // SAFETY: the arguments match epc_test_hog's parameters; `claimed` holds 4096 ints and
    // `held` one, both alive until `busy` is synchronized below.
    unsafe {
        busy.launch_builder(&hog)
            .arg(&ns)
            .arg(&claimed)
            .arg(&held)
            .arg(&hold)
            .launch(cfg)
    }
    .unwrap();
    let hog_done = busy.record_event(None).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let m = spec.max_tokens_per_rank() as usize;
    for round in 0..4 {
        let what = format!("round {round} beside a kernel holding the GPU");
        let tokens = vec![m; spec.ranks() as usize];
        checked_call(&work, &mut group, &mut call, &spec, round, &tokens, &what);
    }
    assert!(
        !hog_done.is_complete(),
        "the kernel holding the GPU ended before the calls did"
    );
    busy.synchronize().unwrap();
    eprintln!("4 calls completed on {free} free SMs beside a kernel holding the rest");
}
