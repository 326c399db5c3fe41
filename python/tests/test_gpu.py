"""Groups on a GPU with PyTorch, checked against references written here with PyTorch: LL and HT
through VirtualGroup with R = 8 (and LL captured in a CUDA graph and replayed), and the NCCL
group with world size 1. Skipped with the reason where PyTorch or a GPU is missing;
EPC_REQUIRE_GPU=1 makes that a failure."""

import os

import pytest

import epc

torch = pytest.importorskip("torch") if os.environ.get("EPC_REQUIRE_GPU") != "1" else __import__("torch")

if not torch.cuda.is_available():
    if os.environ.get("EPC_REQUIRE_GPU") == "1":
        raise RuntimeError("EPC_REQUIRE_GPU=1 but PyTorch sees no GPU")
    pytest.skip("no GPU", allow_module_level=True)

R, M, H, E, K = 8, 64, 1024, 64, 4


def ll_spec(**extra):
    fields = dict(name="py-ll", mode="low_latency", hidden=H, experts=E, top_k=K, ranks=R, max_tokens_per_rank=M)
    fields.update(extra)
    return epc.spec(**fields)


def routing(t, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(t)]) if t else torch.empty(0, K, dtype=torch.long)
    # Weights and values chosen so that every product and sum is exact in f32 and bf16.
    w = torch.tensor([0.5, 0.25, 0.125, 0.0625])[torch.randint(0, 4, (t, K), generator=g)]
    x = (torch.randint(-8, 8, (t, H), generator=g).float() / 8).to(torch.bfloat16)
    return idx.cuda(), w.float().cuda(), x.cuda()


def ll_check_received(group, received, inputs):
    """Every expert's rows are exactly the tokens routed to it, each row its token's x."""
    L = E // R
    for d, got in enumerate(received):
        counts = got["recv_count"].cpu()
        for l in range(L):
            e = d * L + l
            n = int(counts[l])
            src = got["recv_src"][l, :n].cpu()
            want = sorted((s * M + t) for s, (idx, _, _) in enumerate(inputs) for t in (idx == e).any(1).nonzero().flatten().tolist())
            assert sorted(src.tolist()) == want, f"rank {d} expert {l}"
            for row, st in enumerate(src.tolist()):
                s, t = divmod(st, M)
                assert torch.equal(got["recv_x"][l, row], inputs[s][2][t]), (d, l, row)


def ll_expected_out(inputs, factor):
    """out[t] = sum over k, in order, of w[t, k] * (x[t] * factor(expert)), in f32, then bf16."""
    outs = []
    for idx, w, x in inputs:
        acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for k in range(K):
            y = (x.float() * factor(idx[:, k]).unsqueeze(1)).to(torch.bfloat16).float()
            acc = acc + w[:, k : k + 1] * y
        outs.append(acc.to(torch.bfloat16))
    return outs


def test_low_latency_virtual_group_matches_pytorch():
    print(f"GPU test_low_latency_virtual_group_matches_pytorch: on {torch.cuda.get_device_name()}")
    group = epc.VirtualGroup(ll_spec())
    call = group.new_call()
    for seed, t in [(1, M), (2, 17), (3, 0), (4, 1)]:
        inputs = [routing(t, seed * 100 + s) for s in range(R)]
        xs, ids = [x for _, _, x in inputs], [i for i, _, _ in inputs]
        # Odd seeds with the hook's two launches per phase, even ones with one.
        hook = seed % 2 == 1
        if hook:
            group.dispatch_send(call, xs, ids)
            received = group.dispatch_recv(call)
        else:
            received = group.dispatch(call, xs, ids)
        ll_check_received(group, received, inputs)
        # The experts: y = x * (local expert + 1).
        for got in received:
            for l in range(E // R):
                got["y"][l].copy_((got["recv_x"][l].float() * (l + 1)).to(torch.bfloat16))
        outs = [torch.empty(t, H, dtype=torch.bfloat16, device="cuda") for _ in range(R)]
        if hook:
            group.combine_send(call)
            group.combine_recv(call, [w for _, w, _ in inputs], outs)
        else:
            group.combine(call, [w for _, w, _ in inputs], outs)
        group.check()
        want = ll_expected_out(inputs, lambda e: (e % (E // R) + 1).float())
        for s in range(R):
            assert torch.equal(outs[s], want[s]), f"seed {seed} rank {s}"


def test_low_latency_calls_replay_in_a_cuda_graph_with_new_routings():
    print(f"GPU test_low_latency_calls_replay_in_a_cuda_graph_with_new_routings: on {torch.cuda.get_device_name()}")
    group = epc.VirtualGroup(ll_spec())
    call = group.new_call()
    inputs = [routing(M, 900 + s) for s in range(R)]
    xs = [x.clone() for _, _, x in inputs]
    ids = [i.clone() for i, _, _ in inputs]
    ws = [w.clone() for _, w, _ in inputs]
    outs = [torch.empty(M, H, dtype=torch.bfloat16, device="cuda") for _ in range(R)]

    def step():
        received = group.dispatch(call, xs, ids)
        for got in received:
            got["y"].copy_(got["recv_x"])
        group.combine(call, ws, outs)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for replay in range(3):
        fresh = [routing(M, 1000 * replay + s) for s in range(R)]
        for s, (i, w, x) in enumerate(fresh):
            ids[s].copy_(i)
            ws[s].copy_(w)
            xs[s].copy_(x)
        graph.replay()
        group.check()
        want = ll_expected_out(fresh, lambda e: torch.ones_like(e, dtype=torch.float32))
        for s in range(R):
            assert torch.equal(outs[s], want[s]), f"replay {replay} rank {s}"


def test_high_throughput_virtual_group_matches_pytorch():
    print(f"GPU test_high_throughput_virtual_group_matches_pytorch: on {torch.cuda.get_device_name()}")
    spec = epc.spec(
        name="py-ht", mode="high_throughput", hidden=H, experts=E, top_k=K, ranks=R,
        max_tokens_per_rank=256, max_recv_tokens_per_rank=R * 256, layout="flat",
    )
    group = epc.VirtualGroup(spec)
    L = E // R
    inputs = [routing(256 - 16 * s, 500 + s) for s in range(R)]
    received = group.ht_dispatch([x for _, _, x in inputs], [i for i, _, _ in inputs], [w for _, w, _ in inputs])
    for d, got in enumerate(received):
        rows = int(got["recv_rows"].item())
        # Flat layout: one row per (source, token) reaching rank d, in (s, t) order.
        want_src = [s * 256 + t for s, (idx, _, _) in enumerate(inputs) for t in ((idx // L) == d).any(1).nonzero().flatten().tolist()]
        assert got["recv_src"][:rows].tolist() == want_src, f"rank {d}"
        for row, st in enumerate(want_src):
            s, t = divmod(st, 256)
            assert torch.equal(got["recv_x"][row], inputs[s][2][t])
            here = (inputs[s][0][t] // L) == d
            want_idx = torch.where(here, inputs[s][0][t] - d * L, -1)
            assert torch.equal(got["recv_topk_idx"][row], want_idx)
            assert torch.equal(got["recv_topk_w"][row], torch.where(here, inputs[s][1][t], 0.0))
        got["y"][:rows].copy_(got["recv_x"][:rows])
    outs = [torch.empty(x.shape, dtype=torch.bfloat16, device="cuda") for _, _, x in inputs]
    group.ht_combine([i for i, _, _ in inputs], [w for _, w, _ in inputs], outs)
    group.check()
    for s, (idx, _, x) in enumerate(inputs):
        ranks_reached = torch.stack([((idx // L) == d).any(1) for d in range(R)], 1).sum(1)
        want = (x.float() * ranks_reached.unsqueeze(1)).to(torch.bfloat16)
        assert torch.equal(outs[s], want), f"rank {s}"


def test_bad_tensors_and_bad_ids_raise_with_epc_messages():
    print(f"GPU test_bad_tensors_and_bad_ids_raise_with_epc_messages: on {torch.cuda.get_device_name()}")
    group = epc.VirtualGroup(ll_spec())
    call = group.new_call()
    inputs = [routing(8, s) for s in range(R)]
    xs, ids = [x for _, _, x in inputs], [i for i, _, _ in inputs]
    with pytest.raises(epc.TensorError, match="8 ranks"):
        group.dispatch_send(call, xs[:3], ids)
    with pytest.raises(epc.TensorError, match="not contiguous"):
        group.dispatch_send(call, [x.t() for x in xs], ids)
    with pytest.raises(epc.TensorError, match="not on a CUDA device"):
        group.dispatch_send(call, [x.cpu() for x in xs], ids)
    with pytest.raises(epc.TensorError, match="rank 0: x: expected Bf16"):
        group.dispatch_send(call, [x.float() for x in xs], ids)
    bad = [i.clone() for i in ids]
    bad[2][3, 1] = E + 7
    group.dispatch_send(call, xs, bad)
    group.dispatch_recv(call)
    with pytest.raises(epc.DeviceError, match="outside"):
        group.check()


def test_nccl_group_of_one_rank():
    print(f"GPU test_nccl_group_of_one_rank: on {torch.cuda.get_device_name()}")
    try:
        group = epc.Group(ll_spec(ranks=1, experts=8), rank=0, world_size=1, unique_id=epc.nccl_unique_id())
    except epc.UnavailableError as e:
        if os.environ.get("EPC_REQUIRE_GPU") == "1":
            raise
        pytest.skip(f"no NCCL: {e}")
    call = group.new_call()
    g = torch.Generator().manual_seed(7)
    idx = torch.stack([torch.randperm(8, generator=g)[:K] for _ in range(M)]).cuda()
    x = (torch.randint(-8, 8, (M, H), generator=g).float() / 8).to(torch.bfloat16).cuda()
    w = torch.full((M, K), 0.25, device="cuda")
    group.dispatch_send(call, x, idx)
    (got,) = group.dispatch_recv(call)
    assert got["recv_count"].sum().item() == M * K
    got["y"].copy_(got["recv_x"])
    group.combine_send(call)
    out = torch.empty_like(x)
    group.combine_recv(call, w, out)
    group.check()
    assert torch.equal(out, x)  # four quarters of x
    group.close()


def test_the_layout_on_the_device_matches_pytorch():
    print(f"GPU test_the_layout_on_the_device_matches_pytorch: on {torch.cuda.get_device_name()}")
    spec = epc.spec(
        name="py-layout", mode="high_throughput", hidden=H, experts=E, top_k=K, ranks=R,
        max_tokens_per_rank=256, max_recv_tokens_per_rank=R * 256, layout="flat",
    )
    group = epc.VirtualGroup(spec)
    idx, _, _ = routing(200, 77)
    idx[3, 1] = -1
    idx[9, 2] = E + 3  # a bad id: skipped, counted
    got = group.layout(idx)
    torch.cuda.synchronize()
    valid = (idx >= 0) & (idx < E)
    want_experts = torch.bincount(idx[valid], minlength=E).int()
    in_rank = torch.stack([((idx // (E // R) == r) & valid).any(1) for r in range(R)], 1)
    assert torch.equal(got["num_tokens_per_expert"], want_experts)
    assert torch.equal(got["is_token_in_rank"], in_rank)
    assert torch.equal(got["num_tokens_per_rank"], in_rank.sum(0, dtype=torch.int32))
    assert int(got["bad_slots"]) == 1


def test_high_throughput_calls_replay_in_a_cuda_graph_with_new_routings():
    print(f"GPU test_high_throughput_calls_replay_in_a_cuda_graph_with_new_routings: on {torch.cuda.get_device_name()}")
    spec = epc.spec(
        name="py-ht-graph", mode="high_throughput", hidden=H, experts=E, top_k=K, ranks=R,
        max_tokens_per_rank=128, max_recv_tokens_per_rank=R * 128, layout="flat",
    )
    group = epc.VirtualGroup(spec)
    L = E // R
    first = [routing(128, 300 + s) for s in range(R)]
    ids = [i.clone() for i, _, _ in first]
    ws = [w.clone() for _, w, _ in first]
    xs = [x.clone() for _, _, x in first]
    outs = [torch.empty(128, H, dtype=torch.bfloat16, device="cuda") for _ in range(R)]

    def step():
        for got in group.ht_dispatch(xs, ids, ws):
            got["y"].copy_(got["recv_x"])  # the whole buffer: no host read of the row count
        group.ht_combine(ids, ws, outs)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for replay in range(3):
        fresh = [routing(128, 4000 + 100 * replay + s) for s in range(R)]
        for s, (i, w, x) in enumerate(fresh):
            ids[s].copy_(i)
            ws[s].copy_(w)
            xs[s].copy_(x)
        graph.replay()
        group.check()
        for s, (idx, _, x) in enumerate(fresh):
            reached = torch.stack([((idx // L) == d).any(1) for d in range(R)], 1).sum(1)
            assert torch.equal(outs[s], (x.float() * reached.unsqueeze(1)).to(torch.bfloat16)), (replay, s)
