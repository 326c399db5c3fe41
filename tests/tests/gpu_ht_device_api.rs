//! The HT device API on virtual ranks, fed only with buffers the test allocates on its own
//! stream: a whole call (layout, notify, dispatch, combine) captured once as two CUDA graphs and
//! replayed with new routings, each replay's results read from the window views and compared
//! with the CPU reference bit for bit; and the errors the kernels record (bad ids, an overflowing
//! buffer) and the shape checks.

use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaSlice, CudaStream};
use ep_codegen::Spec;
use ep_runtime::check::ht::{Expected, check_combine, check_dispatch};
use ep_runtime::reference::ll::RankInput;
use ep_runtime::routing::SplitMix64;
use ep_runtime::{
    Elem, Error, HtCombineInput, HtDispatchInput, HtGroup, HtReceived, Stream, Tensor,
};
use ep_tests::{gpu_jit_or_skip, read_prefix, read_view, renderer, round_inputs, write_view};

fn spec(name: &str, tokens: u32, capacity: u32, extra: &str) -> Spec {
    let yaml = format!(
        "name: {name}\nmode: high_throughput\nhidden: 1024\nexperts: 64\ntop_k: 8\nranks: 8\n\
         max_tokens_per_rank: {tokens}\nmax_recv_tokens_per_rank: {capacity}\n\
         index_dtype: i64\n{extra}"
    );
    Spec::from_yaml(&yaml, None).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// One rank's tensors, allocated by the test (as a framework would), T tokens.
struct Buffers {
    x: CudaSlice<u16>,
    idx: CudaSlice<i64>,
    w: CudaSlice<f32>,
    out: CudaSlice<u16>,
    t: usize,
}

impl Buffers {
    fn new(stream: &Arc<CudaStream>, spec: &Spec, t: usize) -> Buffers {
        let d = spec.dims();
        let n = |v: usize| v.max(1);
        Buffers {
            x: stream.alloc_zeros(n(t * d.hidden)).unwrap(),
            idx: stream.alloc_zeros(n(t * d.top_k)).unwrap(),
            w: stream.alloc_zeros(n(t * d.top_k)).unwrap(),
            out: stream.alloc_zeros(n(t * d.hidden)).unwrap(),
            t,
        }
    }

    /// Writes a routing and activations of `t` tokens (a new call's inputs).
    fn fill(&mut self, stream: &Arc<CudaStream>, input: &RankInput) {
        assert_eq!(input.routing.num_tokens, self.t);
        if self.t == 0 {
            return;
        }
        stream.memcpy_htod(&input.x, &mut self.x).unwrap();
        stream
            .memcpy_htod(&input.routing.topk_idx, &mut self.idx)
            .unwrap();
        stream
            .memcpy_htod(&input.routing.topk_weights, &mut self.w)
            .unwrap();
    }

    fn dispatch(&self, stream: &CudaStream, spec: &Spec) -> HtDispatchInput {
        let d = spec.dims();
        HtDispatchInput {
            x: Tensor::of_slice(&self.x, stream, &[self.t, d.hidden], Elem::Bf16).unwrap(),
            topk_idx: Tensor::of_slice(&self.idx, stream, &[self.t, d.top_k], Elem::I64).unwrap(),
            topk_weights: Tensor::of_slice(&self.w, stream, &[self.t, d.top_k], Elem::F32).unwrap(),
        }
    }

    fn combine(&self, stream: &CudaStream, spec: &Spec) -> HtCombineInput {
        let d = spec.dims();
        let i = self.dispatch(stream, spec);
        HtCombineInput {
            topk_idx: i.topk_idx,
            topk_weights: i.topk_weights,
            out: Tensor::of_slice(&self.out, stream, &[self.t, d.hidden], Elem::Bf16).unwrap(),
        }
    }
}

/// Reads what every local rank received through the API's views (the rows in use only).
fn received(stream: &CudaStream, group: &HtGroup) -> Vec<HtReceived> {
    let counts = group.counts(Stream::from(stream)).unwrap();
    let spec = group.spec();
    let (h, k) = (spec.hidden() as usize, spec.top_k() as usize);
    counts
        .into_iter()
        .enumerate()
        .map(|(i, notify)| {
            let v = group.received(i).unwrap();
            let rows = group.rows_in_use(&notify);
            let payload = h * v.recv_x.elem().size();
            // The counts the views hold on the device equal what the host read.
            let on_device: Vec<i32> = read_view(
                stream,
                &v.num_recv_tokens_per_expert,
                notify.recv_tokens_per_expert.len(),
            );
            assert_eq!(on_device, notify.recv_tokens_per_expert);
            let offsets: Vec<i32> = read_view(stream, &v.group_offset, notify.group_offset.len());
            assert_eq!(offsets, notify.group_offset);
            assert_eq!(
                read_view::<i32>(stream, &v.recv_rows, 1),
                [notify.recv_rows]
            );
            HtReceived {
                recv_x: read_view(stream, &v.recv_x, rows * payload),
                recv_scales: v
                    .recv_scales
                    .map(|s| read_view(stream, &s, rows * s.shape()[1]))
                    .unwrap_or_default(),
                recv_topk_idx: read_view(stream, &v.recv_topk_idx, rows * k),
                recv_topk_w: read_view(stream, &v.recv_topk_w, rows * k),
                recv_src: read_view(stream, &v.recv_src, rows),
                notify,
            }
        })
        .collect()
}

/// Writes each rank's returned rows into its `y` view (the experts' job).
fn write_y(stream: &CudaStream, group: &HtGroup, y: &[Vec<u16>]) {
    for (i, values) in y.iter().enumerate() {
        write_view(stream, &group.received(i).unwrap().y, values);
    }
}

#[test]
fn ht_calls_captured_as_graphs_replay_with_new_routings() {
    let Some((gpu, jit, _dir)) =
        gpu_jit_or_skip("ht_calls_captured_as_graphs_replay_with_new_routings")
    else {
        return;
    };
    // The caller's own stream, not the GPU's.
    let stream = gpu.context().new_stream().unwrap();
    let fp8 = "dispatch_dtype: fp8_e4m3\nfp8:\n  block: 128\n  scale: f32\n";
    for spec in [
        spec("api-flat", 512, 8 * 512, ""),
        spec("api-domains", 512, 8 * 512, "nvlink_domain: 4\n"),
        spec(
            "api-major-fp8",
            512,
            8 * 512 * 8 + 8 * 31,
            &format!("layout: expert_major\nexpert_alignment: 32\n{fp8}"),
        ),
    ] {
        let kernels = renderer().render(&spec).unwrap();
        let mut group = HtGroup::virtual_ranks(&gpu, &jit, &spec, &kernels).unwrap();
        // Token counts fixed per rank (a graph fixes T), some ranks empty.
        let m = spec.max_tokens_per_rank() as usize;
        let tokens: Vec<usize> = (0..8).map(|r| [m, 0, 1, m / 3][r % 4]).collect();
        let mut bufs: Vec<Buffers> = tokens
            .iter()
            .map(|&t| Buffers::new(&stream, &spec, t))
            .collect();
        let dispatch_in: Vec<HtDispatchInput> =
            bufs.iter().map(|b| b.dispatch(&stream, &spec)).collect();
        let combine_in: Vec<HtCombineInput> =
            bufs.iter().map(|b| b.combine(&stream, &spec)).collect();
        let s = Stream::from(&*stream);
        let mode = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        let flags = CUgraphInstantiate_flags(0);
        stream.begin_capture(mode).unwrap();
        group.dispatch_send(&dispatch_in, s).unwrap();
        group.dispatch_recv(s).unwrap();
        let dispatch = stream.end_capture(flags).unwrap().unwrap();
        stream.begin_capture(mode).unwrap();
        group.combine_send(s).unwrap();
        group.combine_recv(&combine_in, s).unwrap();
        let combine = stream.end_capture(flags).unwrap().unwrap();
        for round in 0..4 {
            let what = format!("{} replay {round}", spec.name());
            let ins = round_inputs(&spec, round, &tokens);
            for (b, input) in bufs.iter_mut().zip(&ins) {
                b.fill(&stream, input);
            }
            dispatch.launch().unwrap();
            group
                .check(s, "dispatch")
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let got = received(&stream, &group);
            let want = Expected::of(&spec, &ins).unwrap();
            check_dispatch(&spec, &ins, &want, &got).unwrap_or_else(|e| panic!("{what}: {e}"));
            let mut rng = SplitMix64::new(round as u64 ^ 0x77);
            let y: Vec<Vec<u16>> = got
                .iter()
                .map(|g| {
                    (0..g.recv_src.len() * spec.hidden() as usize)
                        .map(|_| {
                            ep_runtime::reference::values::from_f32(
                                rng.next_f64() as f32 * 4.0 - 2.0,
                                spec.dtype(),
                            )
                        })
                        .collect()
                })
                .collect();
            write_y(&stream, &group, &y);
            combine.launch().unwrap();
            group
                .check(s, "combine")
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let out: Vec<Vec<u16>> = bufs
                .iter()
                .map(|b| read_prefix(&stream, &b.out, b.t * spec.hidden() as usize))
                .collect();
            check_combine(&spec, &ins, &want, &y, &out).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        eprintln!("{}: 4 graph replays with new routings match", spec.name());
    }
}

#[test]
fn ht_device_api_reports_bad_ids_overflow_and_shapes() {
    let Some((gpu, jit, _dir)) =
        gpu_jit_or_skip("ht_device_api_reports_bad_ids_overflow_and_shapes")
    else {
        return;
    };
    let stream = gpu.context().new_stream().unwrap();
    let s = Stream::from(&*stream);
    // A buffer of 64 rows: a hot routing overflows it.
    let spec = spec("api-errors", 64, 64, "");
    let kernels = renderer().render(&spec).unwrap();
    let mut group = HtGroup::virtual_ranks(&gpu, &jit, &spec, &kernels).unwrap();
    let tokens = [6; 8];
    let mut ins = round_inputs(&spec, 1, &tokens);
    ins[3].routing.topk_idx[9] = 1 << 40;
    ins[3].routing.topk_idx[12] = -7;
    let mut small: Vec<Buffers> = tokens
        .iter()
        .map(|&t| Buffers::new(&stream, &spec, t))
        .collect();
    for (b, input) in small.iter_mut().zip(&ins) {
        b.fill(&stream, input);
    }
    let good: Vec<HtDispatchInput> = small.iter().map(|b| b.dispatch(&stream, &spec)).collect();
    // Shapes: a rank missing, a wrong dtype, a combine before any dispatch.
    assert!(matches!(
        group.dispatch_send(&good[..7], s),
        Err(Error::Input(_))
    ));
    let mut wrong = good.clone();
    wrong[0].topk_weights = Tensor::of_slice(&small[0].w, &stream, &[6, 8], Elem::I32).unwrap();
    assert!(matches!(
        group.dispatch_send(&wrong, s),
        Err(Error::Input(_))
    ));
    assert!(matches!(group.combine_send(s), Err(Error::Input(_))));
    group.dispatch_send(&good, s).unwrap();
    group.dispatch_recv(s).unwrap();
    match group.check(s, "dispatch") {
        Err(Error::OnRank { rank: 3, source }) => match *source {
            Error::BadExpertId {
                token,
                slot,
                value,
                count,
                ..
            } => assert_eq!((token, slot, value, count), (1, 1, 1 << 40, 2)),
            other => panic!("{other:?}"),
        },
        other => panic!("expected a bad expert id on rank 3, got {other:?}"),
    }
    // The bad slots were skipped: the rest matches the reference with them as -1.
    let mut fixed = ins.clone();
    fixed[3].routing.topk_idx[9] = -1;
    fixed[3].routing.topk_idx[12] = -1;
    let want = Expected::of(&spec, &fixed).unwrap();
    check_dispatch(&spec, &fixed, &want, &received(&stream, &group)).unwrap();
    group.check(s, "dispatch").unwrap();

    // Every token of every rank to rank 0's experts: 8 x 64 rows for a buffer of 64.
    let full = vec![64; 8];
    let mut bufs: Vec<Buffers> = full
        .iter()
        .map(|&t| Buffers::new(&stream, &spec, t))
        .collect();
    let mut hot = round_inputs(&spec, 2, &full);
    for input in &mut hot {
        for (i, e) in input.routing.topk_idx.iter_mut().enumerate() {
            *e = (i % 8) as i64;
        }
    }
    for (b, input) in bufs.iter_mut().zip(&hot) {
        b.fill(&stream, input);
    }
    let over: Vec<HtDispatchInput> = bufs.iter().map(|b| b.dispatch(&stream, &spec)).collect();
    group.dispatch_send(&over, s).unwrap();
    group.dispatch_recv(s).unwrap();
    match group.check(s, "dispatch") {
        Err(Error::Capacity {
            rank: 0,
            rows,
            capacity: 64,
        }) => assert_eq!(rows, 8 * 64),
        other => panic!("expected rank 0 to overflow, got {other:?}"),
    }
    // The group still works after the errors: a routing that fits matches the reference.
    let ok = round_inputs(&spec, 3, &tokens);
    for (b, input) in small.iter_mut().zip(&ok) {
        b.fill(&stream, input);
    }
    let ok_in: Vec<HtDispatchInput> = small.iter().map(|b| b.dispatch(&stream, &spec)).collect();
    group.dispatch_send(&ok_in, s).unwrap();
    group.dispatch_recv(s).unwrap();
    group.check(s, "dispatch").unwrap();
    let want = Expected::of(&spec, &ok).unwrap();
    check_dispatch(&spec, &ok, &want, &received(&stream, &group)).unwrap();
}

#[test]
fn ht_a_receive_without_its_send_times_out_with_an_error() {
    let Some((gpu, jit, _dir)) =
        gpu_jit_or_skip("ht_a_receive_without_its_send_times_out_with_an_error")
    else {
        return;
    };
    let stream = gpu.context().new_stream().unwrap();
    let s = Stream::from(&*stream);
    let spec = spec("api-timeout", 64, 8 * 64, "");
    let kernels = renderer().render(&spec).unwrap();
    let mut group = HtGroup::virtual_ranks(&gpu, &jit, &spec, &kernels).unwrap();
    group.set_timeout(std::time::Duration::from_millis(20));
    let tokens = [16; 8];
    let ins = round_inputs(&spec, 4, &tokens);
    let mut bufs: Vec<Buffers> = tokens
        .iter()
        .map(|&t| Buffers::new(&stream, &spec, t))
        .collect();
    for (b, input) in bufs.iter_mut().zip(&ins) {
        b.fill(&stream, input);
    }
    let dispatch: Vec<HtDispatchInput> = bufs.iter().map(|b| b.dispatch(&stream, &spec)).collect();
    group.dispatch_send(&dispatch, s).unwrap();
    group.dispatch_recv(s).unwrap();
    group.check(s, "dispatch").unwrap();
    // The combine receive waits for every rank's "y is ready", which no send raised.
    let combine: Vec<HtCombineInput> = bufs.iter().map(|b| b.combine(&stream, &spec)).collect();
    group.combine_recv(&combine, s).unwrap();
    match group.check(s, "combine") {
        Err(Error::Timeout { phase, .. }) => assert_eq!(phase, "combine"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // With the send, the same call completes.
    group.combine_send(s).unwrap();
    group.combine_recv(&combine, s).unwrap();
    group.check(s, "combine").unwrap();
}
