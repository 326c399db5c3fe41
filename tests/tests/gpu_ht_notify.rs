//! High-throughput notify on virtual ranks against its definition: every rank's layout (from
//! the layout kernel) exchanged through the windows, the offsets each rank derives, and a
//! receive buffer too small reported as an error.

use ep_codegen::Spec;
use ep_runtime::routing::{Pattern, generate};
use ep_runtime::{Error, HtNotify, LayoutKernel, expected_notify};
use ep_tests::{gpu_jit_or_skip, renderer};

fn spec(ranks: u32, extra: &str) -> Spec {
    let yaml = format!(
        "name: notify-r{ranks}\nmode: high_throughput\nhidden: 256\nexperts: {}\ntop_k: 8\n\
         ranks: {ranks}\nmax_tokens_per_rank: 8192\n{extra}",
        16 * ranks
    );
    Spec::from_yaml(&yaml, None).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

#[test]
fn notify_matches_its_definition() {
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip("notify_matches_its_definition") else {
        return;
    };
    let renderer = renderer();
    let mut checked = 0;
    for ranks in [1u32, 2, 4, 8, 16] {
        let cap = 8192 * ranks;
        for extra in [
            format!("max_recv_tokens_per_rank: {cap}\n"),
            // Every slot on one rank, plus the padding of its 16 groups.
            format!(
                "max_recv_tokens_per_rank: {}\nlayout: expert_major\nexpert_alignment: 64\n",
                cap * 8 + 16 * 63
            ),
        ] {
            let s = spec(ranks, &extra);
            let kernels = renderer.render(&s).unwrap();
            let (layout, _) = LayoutKernel::load(&gpu, &jit, &s, &kernels[0]).unwrap();
            let mut notify = HtNotify::virtual_ranks(&gpu, &jit, &s, &kernels).unwrap();
            let (r, k, e) = (ranks as usize, 8, s.experts() as usize);
            // Several calls on the same windows: the epochs tell them apart.
            for (call, (t, pattern)) in [
                (0, Pattern::Uniform),
                (1, Pattern::Hot),
                (4096, Pattern::EmptyRanks),
                (8192, Pattern::Uniform),
                (777, Pattern::Sparse),
            ]
            .into_iter()
            .enumerate()
            {
                let layouts: Vec<_> = (0..r)
                    .map(|rank| {
                        // Ranks send different numbers of tokens (some none).
                        let tokens = (t * (rank + 1) / r).min(8192);
                        let routing = generate(pattern, tokens, k, e, r, (call * 64 + rank) as u64);
                        layout.run(&gpu, &routing).unwrap()
                    })
                    .collect();
                let got = notify.run(&layouts).unwrap();
                let want = expected_notify(&s, &layouts);
                assert_eq!(got, want, "R={ranks} {extra:?} call {call}");
                checked += 1;
            }
        }
    }
    eprintln!("{checked} notify calls checked");
}

#[test]
fn a_receive_buffer_too_small_is_an_error() {
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip("a_receive_buffer_too_small_is_an_error") else {
        return;
    };
    let s = spec(4, "max_recv_tokens_per_rank: 100\n");
    let kernels = renderer().render(&s).unwrap();
    let (layout, _) = LayoutKernel::load(&gpu, &jit, &s, &kernels[0]).unwrap();
    let mut notify = HtNotify::virtual_ranks(&gpu, &jit, &s, &kernels).unwrap();
    let layouts: Vec<_> = (0..4)
        .map(|rank| {
            let routing = generate(Pattern::Uniform, 1000, 8, 64, 4, rank);
            layout.run(&gpu, &routing).unwrap()
        })
        .collect();
    match notify.run(&layouts) {
        Err(Error::Capacity {
            rank,
            rows,
            capacity,
        }) => {
            assert_eq!(capacity, 100);
            assert_eq!(rank, 0);
            assert_eq!(rows, expected_notify(&s, &layouts)[0].recv_rows as usize);
        }
        other => panic!("expected a capacity error, got {other:?}"),
    }
    // The next call, with a routing that fits, succeeds: the status is cleared per call.
    let small: Vec<_> = (0..4)
        .map(|rank| {
            let routing = generate(Pattern::Uniform, 10, 8, 64, 4, rank);
            layout.run(&gpu, &routing).unwrap()
        })
        .collect();
    assert_eq!(notify.run(&small).unwrap(), expected_notify(&s, &small));
}
