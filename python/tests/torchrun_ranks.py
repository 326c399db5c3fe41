"""One rank of an epc job under torchrun, one process per GPU (started by test_torchrun.py, or
by hand: ``torchrun --standalone --nproc-per-node N python/tests/torchrun_ranks.py``).

Every rank makes every rank's inputs from shared seeds, so each checks its own results against a
reference written here with PyTorch, bit for bit (the inputs make every product and sum exact):
``epc.Group`` from the default process group (low latency with ranks of different token counts,
and high throughput), then the DeepEP facade (``low_latency_dispatch``/``combine`` and
``dispatch``/``combine`` with a different token count on every rank)."""

import os

import torch
import torch.distributed as dist

import epc
from epc import deep_ep

H, K, M = 1024, 4, 64


def routing(t, e, seed):
    """Token ids, weights and activations of one rank: K distinct experts per token, weights and
    values exact in bf16 and f32."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(e, generator=g)[:K] for _ in range(t)]) if t else torch.empty(0, K, dtype=torch.long)
    w = torch.tensor([0.5, 0.25, 0.125, 0.0625])[torch.randint(0, 4, (t, K), generator=g)]
    x = (torch.randint(-8, 8, (t, H), generator=g).float() / 8).to(torch.bfloat16)
    return idx.cuda(), w.cuda(), x.cuda()


def weighted(x, idx, w, factor):
    """sum over k, in slot order, of w[t, k] * bf16(x[t] * factor(expert)), in f32, then bf16."""
    acc = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for k in range(K):
        keep = (idx[:, k] >= 0).float().unsqueeze(1)
        y = (x.float() * factor(idx[:, k].clamp(min=0)).unsqueeze(1)).to(torch.bfloat16).float()
        acc = acc + keep * w[:, k : k + 1] * y
    return acc.to(torch.bfloat16)


def low_latency_group(me, world):
    e = 8 * world
    local = e // world
    spec = epc.spec(name=f"torchrun-ll-r{world}", mode="low_latency", hidden=H, experts=e, top_k=K,
                    ranks=world, max_tokens_per_rank=M)
    group = epc.Group(spec)
    assert group.ranks == [me]
    call = group.new_call()
    for seed in range(1, 5):
        inputs = [routing([M, 17, 0, 1][(seed + s) % 4], e, seed * 100 + s) for s in range(world)]
        idx, w, x = inputs[me]
        group.dispatch_send(call, x, idx)
        (got,) = group.dispatch_recv(call)
        for l in range(local):
            expert = me * local + l
            n = int(got["recv_count"][l])
            want = sorted(s * M + t for s, (i, _, _) in enumerate(inputs)
                          for t in (i == expert).any(1).nonzero().flatten().tolist())
            src = got["recv_src"][l, :n].tolist()
            assert sorted(src) == want, f"rank {me} expert {l} seed {seed}"
            for row, st in enumerate(src):
                s, t = divmod(st, M)
                assert torch.equal(got["recv_x"][l, row], inputs[s][2][t]), (me, l, row)
            got["y"][l].copy_((got["recv_x"][l].float() * (l + 1)).to(torch.bfloat16))
        group.combine_send(call)
        out = torch.empty(x.shape, dtype=torch.bfloat16, device="cuda")
        group.combine_recv(call, w, out)
        group.check()
        want = weighted(x, idx, w, lambda ex: (ex % local + 1).float())
        assert torch.equal(out, want), f"rank {me} seed {seed}: combine"
    group.close()
    return "epc.Group low latency: 4 calls match"


def high_throughput_group(me, world):
    e = 8 * world
    local = e // world
    spec = epc.spec(name=f"torchrun-ht-r{world}", mode="high_throughput", hidden=H, experts=e, top_k=K,
                    ranks=world, max_tokens_per_rank=256, max_recv_tokens_per_rank=world * 256, layout="flat")
    group = epc.Group(spec)
    for seed in range(1, 3):
        inputs = [routing(256 - 16 * s - seed, e, 500 * seed + s) for s in range(world)]
        idx, w, x = inputs[me]
        (got,) = group.ht_dispatch(x, idx, w)
        rows = int(got["recv_rows"].item())
        want_src = [s * 256 + t for s, (i, _, _) in enumerate(inputs)
                    for t in ((i // local) == me).any(1).nonzero().flatten().tolist()]
        assert got["recv_src"][:rows].tolist() == want_src, f"rank {me} seed {seed}: sources"
        for row, st in enumerate(want_src):
            s, t = divmod(st, 256)
            assert torch.equal(got["recv_x"][row], inputs[s][2][t])
            here = (inputs[s][0][t] // local) == me
            assert torch.equal(got["recv_topk_idx"][row], torch.where(here, inputs[s][0][t] - me * local, -1))
            assert torch.equal(got["recv_topk_w"][row], torch.where(here, inputs[s][1][t], 0.0))
        got["y"][:rows].copy_(got["recv_x"][:rows])
        out = torch.empty(x.shape, dtype=torch.bfloat16, device="cuda")
        group.ht_combine(idx, w, out)
        group.check()
        reached = torch.stack([((idx // local) == d).any(1) for d in range(world)], 1).sum(1)
        assert torch.equal(out, (x.float() * reached.unsqueeze(1)).to(torch.bfloat16)), f"rank {me} seed {seed}"
    group.close()
    return "epc.Group high throughput: 2 calls match"


def deep_ep_facade(me, world):
    """As DeepEP's test_low_latency.py and test_intranode.py check, exactly."""
    e = 8 * world
    local = e // world
    buffer = deep_ep.Buffer(dist.group.WORLD, int(1e9), 0, low_latency_mode=True)
    # Low latency: every row carries its source rank and token in its last columns.
    inputs = [routing([M, 40, 0, 9][s % 4], e, 7000 + s) for s in range(world)]
    for s, (i, _, x) in enumerate(inputs):
        i[torch.arange(i.shape[0], device="cuda") % 5 == 3, 1] = -1  # empty slots, as DeepEP's tests have
        x[:, -128:-64] = s
        x[:, -64:] = torch.arange(x.shape[0], device="cuda").unsqueeze(1).to(torch.bfloat16)
    idx, w, x = inputs[me]
    recv_x, recv_count, handle, event, hook = buffer.low_latency_dispatch(x, idx, M, e, use_fp8=False,
                                                                          return_recv_hook=True)
    hook()
    event.current_stream_wait()
    for l in range(local):
        expert = me * local + l
        n = int(recv_count[l])
        want = sorted((s, t) for s, (i, _, _) in enumerate(inputs) for t in (i == expert).any(1).nonzero().flatten().tolist())
        got = sorted(zip(recv_x[l, :n, -128].float().long().tolist(), recv_x[l, :n, -1].float().long().tolist()))
        assert got == want, f"rank {me} expert {l}: sources"
        for row in range(n):
            s, t = int(recv_x[l, row, -128].float()), int(recv_x[l, row, -1].float())
            assert torch.equal(recv_x[l, row], inputs[s][2][t])
    y = buffer.get_next_low_latency_combine_buffer(handle)
    y.copy_(recv_x)
    out, event, hook = buffer.low_latency_combine(y, idx, w, handle, zero_copy=True, return_recv_hook=True)
    hook()
    event.current_stream_wait()
    assert torch.equal(out, weighted(x, idx, w, lambda ex: torch.ones_like(ex, dtype=torch.float32))), "LL combine"
    # Normal mode, a different token count on every rank (across a power of two).
    idx, w, x = routing(96 + 60 * me, e, 8000 + me)
    per_rank, _, per_expert, in_rank, _ = buffer.get_dispatch_layout(idx, e)
    recv_x, recv_idx, recv_w, counts, handle, event = buffer.dispatch(
        x, num_tokens_per_rank=per_rank, is_token_in_rank=in_rank, num_tokens_per_expert=per_expert,
        topk_idx=idx, topk_weights=w)
    event.current_stream_wait()
    everyone = [routing(96 + 60 * s, e, 8000 + s) for s in range(world)]
    kept = [((i // local) == me).any(1).nonzero().flatten() for i, _, _ in everyone]
    assert torch.equal(recv_x, torch.cat([xs[k] for (_, _, xs), k in zip(everyone, kept)])), "recv_x"
    want_idx = torch.cat([torch.where((i[k] // local) == me, i[k] - me * local, -1) for (i, _, _), k in zip(everyone, kept)])
    assert torch.equal(recv_idx, want_idx), "recv_topk_idx"
    assert counts == torch.bincount(want_idx[want_idx >= 0], minlength=local).tolist(), "counts"
    combined, _, _ = buffer.combine(recv_x, handle)
    reached = torch.stack([((idx // local) == d).any(1) for d in range(world)], 1).sum(1)
    assert torch.equal(combined, (x.float() * reached.unsqueeze(1)).to(torch.bfloat16)), "combine"
    buffer.destroy()
    return "DeepEP facade: low latency and normal dispatch/combine match"


def main():
    dist.init_process_group("nccl")
    me, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", me)))
    for part in (low_latency_group, high_throughput_group, deep_ep_facade):
        print(f"rank {me} of {world} on {torch.cuda.get_device_name()}: {part(me, world)}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
