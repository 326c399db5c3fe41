"""The DeepEP facade on one GPU (a torch.distributed group of one rank, epc over NCCL), checked
as DeepEP's own tests check (every expert's rows are exactly its tokens, the counts, the combine)
but bit for bit, since these inputs make every sum exact. Skipped where PyTorch or a GPU is
missing; EPC_REQUIRE_GPU=1 makes that a failure."""

import os
import socket

import pytest

import epc

torch = pytest.importorskip("torch") if os.environ.get("EPC_REQUIRE_GPU") != "1" else __import__("torch")
if not torch.cuda.is_available():
    if os.environ.get("EPC_REQUIRE_GPU") == "1":
        raise RuntimeError("EPC_REQUIRE_GPU=1 but PyTorch sees no GPU")
    pytest.skip("no GPU", allow_module_level=True)

from epc import deep_ep  # noqa: E402

T, H, E, K, M = 96, 1024, 32, 4, 128


@pytest.fixture(scope="module")
def buffer():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield deep_ep.Buffer(dist.group.WORLD, int(1e9), 0, low_latency_mode=True)
    finally:
        dist.destroy_process_group()


def inputs(seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    idx[torch.rand(T, K, generator=g) < 0.1] = -1  # some empty slots, as DeepEP's tests have
    idx[5] = -1  # and a token with no expert at all
    w = torch.tensor([0.5, 0.25, 0.125, 0.0625])[torch.randint(0, 4, (T, K), generator=g)]
    x = (torch.randint(-8, 8, (T, H), generator=g).float() / 8)
    x[:, -128:] = torch.arange(T).float().unsqueeze(1)  # each row says which token it is
    return idx.cuda(), w.cuda(), x.to(torch.bfloat16).cuda()


def weighted_sum(x, idx, w, factor=1.0):
    acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for k in range(K):
        keep = (idx[:, k] >= 0).float().unsqueeze(1)
        acc = acc + keep * w[:, k : k + 1] * (x.float() * factor).to(torch.bfloat16).float()
    return acc.to(torch.bfloat16)


def test_low_latency_dispatch_and_combine(buffer):
    print(f"GPU test_low_latency_dispatch_and_combine: on {torch.cuda.get_device_name()}")
    for seed, hook_mode in [(1, False), (2, True)]:
        idx, w, x = inputs(seed)
        recv_x, recv_count, handle, event, hook = buffer.low_latency_dispatch(
            x, idx, M, E, use_fp8=False, return_recv_hook=hook_mode)
        hook()
        event.current_stream_wait()
        assert recv_x.shape == (E, M, H) and recv_count.dtype == torch.int32
        for e in range(E):
            want = sorted((idx == e).any(1).nonzero().flatten().tolist())
            n = int(recv_count[e])
            assert n == len(want), f"expert {e}"
            tokens = recv_x[e, :n, -1].float().long().tolist()
            assert sorted(tokens) == want, f"expert {e}"
            for row, t in enumerate(tokens):
                assert torch.equal(recv_x[e, row], x[t])
        # Zero copy: the experts write straight into the combine buffer.
        y = buffer.get_next_low_latency_combine_buffer(handle)
        y.copy_(recv_x)
        out, event, hook = buffer.low_latency_combine(y, idx, w, handle, zero_copy=True, return_recv_hook=hook_mode)
        hook()
        buffer._groups[handle.group.spec.hash].check()
        assert torch.equal(out, weighted_sum(x, idx, w)), f"seed {seed}"
        # And from a tensor of the caller's.
        recv_x, recv_count, handle, _, _ = buffer.low_latency_dispatch(x, idx, M, E, use_fp8=False)
        doubled = (recv_x.float() * 2).to(torch.bfloat16)
        out, _, _ = buffer.low_latency_combine(doubled, idx, w, handle)
        assert torch.equal(out, weighted_sum(x, idx, w, 2.0)), f"seed {seed}, copied"


def test_low_latency_fp8_dispatch(buffer):
    print(f"GPU test_low_latency_fp8_dispatch: on {torch.cuda.get_device_name()}")
    idx, w, x = inputs(3)
    (codes, scales), recv_count, handle, _, _ = buffer.low_latency_dispatch(x, idx, M, E, use_fp8=True)
    assert codes.dtype == torch.float8_e4m3fn and scales.shape == (E, M, H // 128)
    for e in range(E):
        n = int(recv_count[e])
        assert n == int((idx == e).any(1).sum())
        back = codes[e, :n].float().view(n, H // 128, 128) * scales[e, :n].unsqueeze(2)
        tokens = back.view(n, H)[:, -1].round().long().tolist()
        assert sorted(tokens) == sorted((idx == e).any(1).nonzero().flatten().tolist())
        for row, t in enumerate(tokens):
            ref = x[t].float()
            diff = 1 - 2 * (back.view(n, H)[row] * ref).sum() / (back.view(n, H)[row].square().sum() + ref.square().sum())
            assert diff < 1e-3, (e, row, float(diff))


def test_normal_dispatch_and_combine(buffer):
    print(f"GPU test_normal_dispatch_and_combine: on {torch.cuda.get_device_name()}")
    idx, w, x = inputs(4)
    per_rank, per_rdma, per_expert, in_rank, _ = buffer.get_dispatch_layout(idx, E)
    assert per_rdma is None
    want_per_expert = torch.bincount(idx[idx >= 0].flatten(), minlength=E).int()
    assert torch.equal(per_expert, want_per_expert)
    assert torch.equal(in_rank[:, 0], (idx >= 0).any(1)) and int(per_rank[0]) == int((idx >= 0).any(1).sum())
    recv_x, recv_idx, recv_w, counts, handle, event = buffer.dispatch(
        x, num_tokens_per_rank=per_rank, is_token_in_rank=in_rank, num_tokens_per_expert=per_expert,
        topk_idx=idx, topk_weights=w, expert_alignment=4)
    event.current_stream_wait()
    kept = (idx >= 0).any(1).nonzero().flatten()
    assert torch.equal(recv_x, x[kept]) and torch.equal(recv_idx, idx[kept])
    assert torch.equal(recv_w, torch.where(idx[kept] >= 0, w[kept], 0.0))
    assert counts == [(c + 3) // 4 * 4 for c in want_per_expert.tolist()]
    combined, combined_w, _ = buffer.combine(recv_x, handle, topk_weights=recv_w)
    want = torch.zeros_like(x)
    want[kept] = x[kept]
    assert torch.equal(combined, want)
    assert torch.equal(combined_w, torch.where(idx >= 0, w, 0.0))
    # A cached dispatch (same handle) routes the same tokens again.
    again = buffer.dispatch(x, handle=handle)
    assert torch.equal(again[0], recv_x)
    buffer.destroy()
