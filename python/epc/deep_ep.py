"""A DeepEP-compatible facade: code written for DeepEP's ``deep_ep.Buffer`` runs on epc by
changing the import to ``from epc.deep_ep import Buffer`` (and ``EventOverlap``, ``Config``).

Each call derives an epc spec from its shapes (hidden size, experts, top-k, the group's size,
dtypes) and JIT-compiles it on first use (cached in memory and, as cubins, on disk). The
differences that remain:

* ``num_nvl_bytes`` / ``num_rdma_bytes`` / ``num_qps_per_rank`` / ``Config`` / ``set_num_sms``
  are accepted and ignored: epc sizes its windows from the spec and its grids from the GPU.
* Events: every call runs on ``torch.cuda.current_stream()``; ``async_finish`` and
  ``allocate_on_comm_stream`` change nothing, and the returned ``EventOverlap`` waits on an
  event recorded there.
* ``dispatch`` takes BF16/FP16 ``x``; a pre-quantized ``(x_fp8, scales)`` tuple is refused
  (epc quantizes inside its kernels). ``num_worst_tokens`` and ``bias`` are not supported.
  ``dispatch`` reads the received row count on the host, as DeepEP's non-cached dispatch does,
  and takes the most tokens of any rank with an all-reduce on ``group`` (one spec for all ranks);
  a cached dispatch (``handle=``) routes the tokens again from the handle's ids.
* Low-latency FP8 scales come back as ``[L, R*M, H/128]`` f32, row-major (DeepEP's are a
  transposed view of ``[L, H/128, R*M]``); ``use_ue8m0`` gives power-of-two f32 scales, not
  packed UE8M0 integers. ``use_logfmt`` and the cost statistics are not supported.
* ``get_dispatch_layout`` computes DeepEP's layout tensors with PyTorch (``num_tokens_per_rdma_rank``
  is ``None``: one NVLink domain); epc's dispatch runs its own layout kernel on the device.
* Internode (RDMA) groups: epc runs one NVLink domain per group here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import epc

_MIN_HT_TOKENS = 128


def _torch():
    import torch

    return torch


class EventOverlap:
    """DeepEP's event handle. epc's work is ordered on the current stream; ``current_stream_wait``
    waits for the event recorded after it (a no-op on the same stream)."""

    def __init__(self, event: Any = None, extra_tensors: Optional[Tuple[Any, ...]] = None):
        self.event = event
        self.extra_tensors = extra_tensors

    def current_stream_wait(self) -> None:
        if self.event is not None:
            _torch().cuda.current_stream().wait_event(self.event)

    def __enter__(self) -> "EventOverlap":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.current_stream_wait()


def _event() -> EventOverlap:
    torch = _torch()
    e = torch.cuda.Event()
    e.record(torch.cuda.current_stream())
    return EventOverlap(e)


class Config:
    """DeepEP's performance config; accepted and ignored (epc sizes its grids itself)."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs


def _dtype_name(dtype: Any) -> str:
    torch = _torch()
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    raise epc.TensorError(f"x must be bfloat16 or float16, not {dtype}")


def _index_name(dtype: Any) -> str:
    torch = _torch()
    if dtype == torch.int64:
        return "i64"
    if dtype == torch.int32:
        return "i32"
    raise epc.TensorError(f"topk_idx must be int64 or int32, not {dtype}")


def low_latency_spec(
    hidden: int, num_experts: int, top_k: int, num_ranks: int, num_max_dispatch_tokens_per_rank: int,
    dtype: str = "bf16", index_dtype: str = "i64", use_fp8: bool = True, use_ue8m0: bool = False,
) -> epc.Spec:
    """The epc spec of a DeepEP low-latency call's shapes."""
    fields: Dict[str, Any] = dict(
        name=f"deep-ep-ll-h{hidden}-e{num_experts}-k{top_k}-r{num_ranks}-m{num_max_dispatch_tokens_per_rank}",
        mode="low_latency", hidden=hidden, dtype=dtype, index_dtype=index_dtype, experts=num_experts,
        top_k=top_k, ranks=num_ranks, max_tokens_per_rank=num_max_dispatch_tokens_per_rank,
    )
    if use_fp8:
        fields["name"] += "-fp8"
        fields["dispatch_dtype"] = "fp8_e4m3"
        fields["fp8"] = {"block": 128, "scale": "ue8m0" if use_ue8m0 else "f32"}
    return epc.spec(**fields)


def high_throughput_spec(
    hidden: int, num_experts: int, top_k: int, num_ranks: int, num_tokens: int,
    dtype: str = "bf16", index_dtype: str = "i64",
) -> epc.Spec:
    """The epc spec of a DeepEP normal (high-throughput) call's shapes: tokens per rank rounded
    up to a power of two (at least 128), a receive buffer for every token of every rank."""
    m = _MIN_HT_TOKENS
    while m < num_tokens:
        m *= 2
    return epc.spec(
        name=f"deep-ep-ht-h{hidden}-e{num_experts}-k{top_k}-r{num_ranks}-m{m}",
        mode="high_throughput", hidden=hidden, dtype=dtype, index_dtype=index_dtype,
        experts=num_experts, top_k=top_k, ranks=num_ranks, max_tokens_per_rank=m,
        max_recv_tokens_per_rank=m * num_ranks, layout="flat",
    )


class _LowLatencyHandle:
    """What ``low_latency_combine`` needs from its dispatch."""

    def __init__(self, group: Any, call: Any, views: Dict[str, Any], tokens: int):
        self.group, self.call, self.views, self.tokens = group, call, views, tokens


class _HighThroughputHandle:
    """What ``combine`` (and a cached ``dispatch``) needs from a dispatch."""

    def __init__(self, group: Any, view: Dict[str, Any], rows: int, topk_idx: Any, topk_weights: Any):
        self.group, self.view, self.rows = group, view, rows
        self.topk_idx, self.topk_weights = topk_idx, topk_weights


class Buffer:
    """DeepEP's ``Buffer`` over epc: ``group`` is the ``torch.distributed`` process group of the
    expert-parallel ranks (one rank per GPU)."""

    num_sms: int = 20

    def __init__(
        self, group: Any, num_nvl_bytes: int = 0, num_rdma_bytes: int = 0, low_latency_mode: bool = False,
        num_qps_per_rank: int = 24, allow_nvlink_for_low_latency_mode: bool = True,
        allow_mnnvl: bool = False, explicitly_destroy: bool = False, **_ignored: Any,
    ):
        import torch.distributed as dist

        self.group = group
        self.rank = dist.get_rank(group)
        self.group_size = dist.get_world_size(group)
        self.low_latency_mode = low_latency_mode
        self.explicitly_destroy = explicitly_destroy
        self._groups: Dict[str, Any] = {}
        self._calls: Dict[str, List[Any]] = {}
        self._next_call: Dict[str, int] = {}

    @staticmethod
    def set_num_sms(new_num_sms: int) -> None:
        """Accepted for compatibility; epc sizes its grids from the GPU."""
        Buffer.num_sms = new_num_sms

    @staticmethod
    def get_low_latency_rdma_size_hint(num_max_dispatch_tokens_per_rank: int, hidden: int, num_ranks: int,
                                       num_experts: int) -> int:
        """Bytes epc's low-latency window takes per rank for these shapes (FP8 dispatch)."""
        spec = low_latency_spec(hidden, num_experts, 1, num_ranks, num_max_dispatch_tokens_per_rank)
        return spec.window_bytes

    def destroy(self) -> None:
        """Frees every group's windows (collective over the ranks)."""
        for g in self._groups.values():
            g.close()
        self._groups.clear()
        self._calls.clear()

    def _group(self, spec: epc.Spec) -> Any:
        g = self._groups.get(spec.hash)
        if g is None:
            g = epc.Group(spec, self.group)
            self._groups[spec.hash] = g
        return g

    # Layout ------------------------------------------------------------------------------------
    def get_dispatch_layout(self, topk_idx: Any, num_experts: int, previous_event: Any = None,
                            async_finish: bool = False, allocate_on_comm_stream: bool = False):
        """``(num_tokens_per_rank [R] int32, None, num_tokens_per_expert [E] int32,
        is_token_in_rank [T, R] bool, event)``, as DeepEP defines them."""
        torch = _torch()
        per_rank = num_experts // self.group_size
        valid = topk_idx >= 0
        ids = topk_idx.masked_fill(~valid, 0).long()
        num_tokens_per_expert = torch.zeros(num_experts, dtype=torch.int32, device=topk_idx.device)
        num_tokens_per_expert.index_add_(0, ids[valid], torch.ones_like(ids[valid], dtype=torch.int32))
        ranks = torch.where(valid, ids // per_rank, torch.full_like(ids, -1))
        is_token_in_rank = torch.stack([(ranks == r).any(1) for r in range(self.group_size)], 1)
        num_tokens_per_rank = is_token_in_rank.sum(0, dtype=torch.int32)
        return num_tokens_per_rank, None, num_tokens_per_expert, is_token_in_rank, _event()

    # High throughput ---------------------------------------------------------------------------
    def dispatch(self, x: Any, handle: Optional[_HighThroughputHandle] = None, num_tokens_per_rank: Any = None,
                 num_tokens_per_rdma_rank: Any = None, is_token_in_rank: Any = None,
                 num_tokens_per_expert: Any = None, topk_idx: Any = None, topk_weights: Any = None,
                 expert_alignment: int = 1, num_worst_tokens: int = 0, config: Any = None,
                 previous_event: Any = None, async_finish: bool = False, allocate_on_comm_stream: bool = False):
        """``(recv_x, recv_topk_idx, recv_topk_weights, num_recv_tokens_per_expert_list, handle,
        event)``: the rows of every token that has an expert here, in (source rank, token) order,
        with the slots as local expert ids (-1 elsewhere)."""
        torch = _torch()
        if isinstance(x, tuple):
            raise NotImplementedError("epc's dispatch quantizes BF16 itself; pass x unquantized")
        if num_worst_tokens:
            raise NotImplementedError("num_worst_tokens is not supported by epc's facade")
        if handle is not None:
            topk_idx, topk_weights = handle.topk_idx, handle.topk_weights
        if topk_idx is None or topk_weights is None:
            raise epc.TensorError("dispatch needs topk_idx and topk_weights (or a handle)")
        num_experts = (num_tokens_per_expert.numel() if num_tokens_per_expert is not None
                       else handle.group.spec.experts if handle is not None else None)
        if num_experts is None:
            raise epc.TensorError("dispatch needs num_tokens_per_expert (from get_dispatch_layout) or a handle")
        spec = high_throughput_spec(x.shape[1], num_experts, topk_idx.shape[1], self.group_size,
                                    self._most_tokens(x.shape[0], x.device), _dtype_name(x.dtype),
                                    _index_name(topk_idx.dtype))
        group = self._group(spec)
        (view,) = group.ht_dispatch(x, topk_idx, topk_weights.float())
        group.check()
        rows = int(view["recv_rows"].item())
        counts = view["num_recv_tokens_per_expert"].tolist()
        a = max(1, int(expert_alignment))
        per_expert = [(c + a - 1) // a * a for c in counts]
        new = _HighThroughputHandle(group, view, rows, topk_idx, topk_weights)
        return (view["recv_x"][:rows], view["recv_topk_idx"][:rows], view["recv_topk_w"][:rows],
                per_expert, new, _event())

    def _most_tokens(self, tokens: int, device: Any) -> int:
        """The most tokens any rank dispatches in this call: every rank must derive the same spec
        (the same windows), and DeepEP lets each rank pass its own token count."""
        if self.group_size == 1:
            return tokens
        import torch.distributed as dist

        torch = _torch()
        on = device if "nccl" in str(dist.get_backend(self.group)) else "cpu"
        most = torch.tensor([tokens], dtype=torch.int64, device=on)
        dist.all_reduce(most, op=dist.ReduceOp.MAX, group=self.group)
        return int(most.item())

    def combine(self, x: Any, handle: _HighThroughputHandle, topk_weights: Any = None, bias: Any = None,
                config: Any = None, previous_event: Any = None, async_finish: bool = False,
                allocate_on_comm_stream: bool = False):
        """``(combined_x [T, H], combined_topk_weights, event)``: each token's rows (``x``, one per
        received row, already weighted) summed over the ranks that received it."""
        torch = _torch()
        if bias is not None:
            raise NotImplementedError("bias is not supported by epc's facade")
        if x.shape[0] != handle.rows:
            raise epc.TensorError(f"combine: x has {x.shape[0]} rows, the dispatch received {handle.rows}")
        if x.data_ptr() != handle.view["y"].data_ptr():
            handle.view["y"][: handle.rows].copy_(x)
        out = torch.empty(handle.topk_idx.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
        handle.group.ht_combine(handle.topk_idx, handle.topk_weights.float(), out)
        combined_weights = None
        if topk_weights is not None:
            combined_weights = handle.topk_weights.masked_fill(handle.topk_idx < 0, 0)
        return out, combined_weights, _event()

    # Low latency -------------------------------------------------------------------------------
    def _call(self, group: Any) -> Any:
        """DeepEP's two buffers: calls alternate between the two halves of epc's windows."""
        key = group.spec.hash
        calls = self._calls.setdefault(key, [group.new_call(), group.new_call()])
        i = self._next_call.get(key, 0)
        self._next_call[key] = 1 - i
        return calls[i]

    def low_latency_dispatch(self, x: Any, topk_idx: Any, num_max_dispatch_tokens_per_rank: int,
                             num_experts: int, cumulative_local_expert_recv_stats: Any = None,
                             dispatch_wait_recv_cost_stats: Any = None, use_fp8: bool = True,
                             round_scale: bool = False, use_ue8m0: bool = False, async_finish: bool = False,
                             return_recv_hook: bool = False):
        """``(recv_x, recv_count, handle, event, hook)``: ``recv_x [L, R*M, H]`` (FP8:
        ``(codes, scales)``), ``recv_count [L]`` int32; with ``return_recv_hook`` the receive runs
        when ``hook()`` is called."""
        if dispatch_wait_recv_cost_stats is not None:
            raise NotImplementedError("dispatch_wait_recv_cost_stats is not supported by epc's facade")
        spec = low_latency_spec(x.shape[1], num_experts, topk_idx.shape[1], self.group_size,
                                num_max_dispatch_tokens_per_rank, _dtype_name(x.dtype),
                                _index_name(topk_idx.dtype), use_fp8, use_ue8m0 or round_scale)
        group = self._group(spec)
        call = self._call(group)

        def stats() -> None:
            if cumulative_local_expert_recv_stats is not None:
                cumulative_local_expert_recv_stats.add_(views["recv_count"])

        def receive() -> None:
            group._raw.dispatch_recv(call._raw, _torch().cuda.current_stream().cuda_stream)
            stats()

        if return_recv_hook:
            group.dispatch_send(call, x, topk_idx)
            views = group._views(group._raw.received(call._raw, 0))
        else:
            views = group.dispatch(call, [x], [topk_idx])[0]
            stats()
        recv_x = (views["recv_x"], views["recv_scales"]) if use_fp8 else views["recv_x"]
        handle = _LowLatencyHandle(group, call, views, x.shape[0])
        return recv_x, views["recv_count"], handle, _event(), (receive if return_recv_hook else (lambda: None))

    def get_next_low_latency_combine_buffer(self, handle: _LowLatencyHandle) -> Any:
        """The ``[L, R*M, H]`` buffer ``low_latency_combine`` reads: write the experts' outputs
        there and pass it back with ``zero_copy=True``."""
        return handle.views["y"]

    def low_latency_combine(self, x: Any, topk_idx: Any, topk_weights: Any, handle: _LowLatencyHandle,
                            use_logfmt: bool = False, zero_copy: bool = False, async_finish: bool = False,
                            return_recv_hook: bool = False, out: Any = None, **_ignored: Any):
        """``(combined_x [T, H], event, hook)``: ``out[t] = sum over k of topk_weights[t, k] *
        x(row of t, k)``, f32 sums in slot order."""
        torch = _torch()
        if use_logfmt:
            raise NotImplementedError("use_logfmt is not supported by epc's facade")
        group, call = handle.group, handle.call
        if not zero_copy and x.data_ptr() != handle.views["y"].data_ptr():
            handle.views["y"].copy_(x)
        if out is None:
            out = torch.empty(handle.tokens, x.shape[2], dtype=x.dtype, device=x.device)

        def receive() -> None:
            group.combine_recv(call, topk_weights.float(), out)

        if return_recv_hook:
            group.combine_send(call)
        else:
            group.combine(call, topk_weights.float(), out)
        return out, _event(), (receive if return_recv_hook else (lambda: None))
