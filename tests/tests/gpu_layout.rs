//! The layout kernel on a GPU against the CPU reference, over many random routings.

use ep_runtime::reference;
use ep_runtime::routing::{Pattern, Routing, generate};
use ep_runtime::{Error, LayoutKernel};
use ep_tests::{all_specs, gpu_jit_or_skip, renderer};

#[test]
fn layout_matches_the_reference_on_every_spec() {
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip("layout_matches_the_reference_on_every_spec")
    else {
        return;
    };
    let renderer = renderer();
    let mut checked = 0;
    for spec in all_specs() {
        let kernel = renderer.render(&spec).unwrap().remove(0);
        let (layout, _) = LayoutKernel::load(&gpu, &jit, &spec, &kernel).unwrap();
        let (e, r, k, m) = (
            spec.experts() as usize,
            spec.ranks() as usize,
            spec.top_k() as usize,
            spec.max_tokens_per_rank() as usize,
        );
        // T = 0, T = 1, T = M, a block boundary and its neighbours, and random sizes.
        let block = kernel.launch.block_threads as usize;
        let mut sizes = vec![
            0,
            1,
            m,
            block.min(m),
            (block + 1).min(m),
            (block - 1).min(m),
        ];
        for i in 0..6 {
            sizes.push((i * 7919 + 13) % (m + 1));
        }
        for (i, &t) in sizes.iter().enumerate() {
            for pattern in Pattern::ALL {
                let seed = (i as u64) << 8 | pattern as u64;
                let routing = generate(pattern, t, k, e, r, seed);
                let got = layout.run(&gpu, &routing).unwrap();
                let (want, bad) = reference::layout(&routing, e, r);
                assert_eq!(bad, None);
                assert_eq!(
                    got,
                    want,
                    "spec {} T={t} pattern {pattern:?} seed {seed}",
                    spec.name()
                );
                checked += 1;
            }
        }
    }
    eprintln!("{checked} routings checked against the reference");
    assert!(checked >= 9 * 12 * 5);
}

#[test]
fn bad_expert_ids_are_reported_and_nothing_else_is_written() {
    let Some((gpu, jit, _dir)) =
        gpu_jit_or_skip("bad_expert_ids_are_reported_and_nothing_else_is_written")
    else {
        return;
    };
    // One i64 and one i32 spec.
    for spec in all_specs()
        .into_iter()
        .filter(|s| s.name() == "deepseek-v3-ht" || s.name() == "qwen3-235b-a22b-ll")
    {
        let kernel = renderer().render(&spec).unwrap().remove(0);
        let (layout, _) = LayoutKernel::load(&gpu, &jit, &spec, &kernel).unwrap();
        let (e, r, k) = (
            spec.experts() as usize,
            spec.ranks() as usize,
            spec.top_k() as usize,
        );
        for (t, slot, value) in [
            (5usize, 3usize, e as i64),
            (77, 0, -2),
            (100, k - 1, i64::MAX),
        ] {
            let mut routing: Routing = generate(Pattern::Uniform, 128, k, e, r, 9);
            routing.topk_idx[t * k + slot] = value;
            // A second, later bad slot: the first must be the one reported.
            routing.topk_idx[127 * k] = -7;
            match layout.run(&gpu, &routing) {
                Err(Error::BadExpertId {
                    token,
                    slot: s,
                    value: v,
                    count,
                    experts,
                }) => {
                    assert_eq!((token, s, v, count, experts), (t, slot, value, 2, e as u32));
                }
                other => panic!("{}: expected BadExpertId, got {other:?}", spec.name()),
            }
            let (_, bad) = reference::layout(&routing, e, r);
            let bad = bad.unwrap();
            assert_eq!((bad.token, bad.slot, bad.count), (t, slot, 2));
        }
    }
}

#[test]
fn wrong_shapes_are_errors() {
    let Some((gpu, jit, _dir)) = gpu_jit_or_skip("wrong_shapes_are_errors") else {
        return;
    };
    let spec = all_specs()
        .into_iter()
        .find(|s| s.name() == "gpt-oss-120b-ll")
        .unwrap();
    let kernel = renderer().render(&spec).unwrap().remove(0);
    let (layout, _) = LayoutKernel::load(&gpu, &jit, &spec, &kernel).unwrap();
    let m = spec.max_tokens_per_rank() as usize;
    let too_many = generate(Pattern::Uniform, m + 1, 4, 128, 8, 1);
    assert!(matches!(layout.run(&gpu, &too_many), Err(Error::Input(_))));
    let wrong_k = generate(Pattern::Uniform, 4, 8, 128, 8, 1);
    assert!(matches!(layout.run(&gpu, &wrong_k), Err(Error::Input(_))));
    let mut short = generate(Pattern::Uniform, 4, 4, 128, 8, 1);
    short.topk_idx.pop();
    assert!(matches!(layout.run(&gpu, &short), Err(Error::Input(_))));
    // A kernel of another spec is refused.
    let other = all_specs()
        .into_iter()
        .find(|s| s.name() == "mixtral-8x7b-ht")
        .unwrap();
    assert!(LayoutKernel::load(&gpu, &jit, &other, &kernel).is_err());
}
