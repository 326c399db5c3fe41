"""Groups for PyTorch: lists of tensors in, tensors viewing the windows out, on the current
stream. The Rust core (``epc._epc._Group``) does the work; this layer only adapts PyTorch."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

from ._epc import Spec, TensorError, _Group, nccl_unique_id
from ._epc import spec as _spec


def _torch():
    import torch  # imported on first use: the spec and compile functions need no PyTorch

    return torch


def _as_spec(spec: Union[Spec, str]) -> Spec:
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, str):
        return _spec(builtin=spec) if "\n" not in spec else _spec(spec)
    raise TypeError(f"a Spec or a built-in spec name is expected, not {type(spec).__name__}")


def _stream(stream: Any) -> int:
    torch = _torch()
    s = torch.cuda.current_stream() if stream is None else stream
    return int(getattr(s, "cuda_stream", s))


def _list(tensors: Any, n: int, what: str) -> List[Any]:
    """One tensor per local rank; a single tensor stands for a list of one."""
    torch = _torch()
    items = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    if len(items) != n:
        raise TensorError(f"{what}: {len(items)} tensors given for the {n} ranks this group drives")
    out = []
    for i, t in enumerate(items):
        if not isinstance(t, torch.Tensor):
            out.append(t)  # any object with __dlpack__ or __cuda_array_interface__
            continue
        if not t.is_cuda:
            raise TensorError(f"{what}[{i}]: the tensor is on {t.device}, not on a CUDA device")
        if not t.is_contiguous():
            raise TensorError(f"{what}[{i}]: not contiguous; call .contiguous() first")
        if t.dtype == torch.float8_e4m3fn:
            t = t.view(torch.uint8)  # FP8 codes cross as bytes
        out.append(t)
    return out


class Call:
    """One low-latency call's state. Calls alternate between the two halves of the windows, so
    two may be in flight; a call can be reused for consecutive calls."""

    def __init__(self, raw: Any):
        self._raw = raw


class _GroupBase:
    def __init__(self, raw: Any):
        self._raw = raw
        self.spec: Spec = raw.spec
        self.device: int = raw.device
        self.ranks: List[int] = raw.ranks

    # Views -----------------------------------------------------------------------------------
    def _views(self, capsules: Dict[str, Any]) -> Dict[str, Any]:
        torch = _torch()
        out: Dict[str, Any] = {}
        for name, capsule in capsules.items():
            if capsule is None:
                out[name] = None
                continue
            t = torch.from_dlpack(capsule)
            if name == "recv_x" and self.spec.dispatch_dtype == "fp8_e4m3":
                t = t.view(torch.float8_e4m3fn)
            out[name] = t
        return out

    def check(self, stream: Any = None) -> None:
        """Waits for the stream, then raises the first error the kernels recorded
        (``DeviceError``: a bad expert id, a full receive buffer, a timeout). The one call that
        synchronizes with the host."""
        self._raw.check(_stream(stream))

    def close(self) -> None:
        """Frees the windows (over NCCL after meeting every rank once more)."""
        self._raw.close()

    # Low latency -----------------------------------------------------------------------------
    def new_call(self) -> Call:
        """A low-latency call's state (setup, not the hot path)."""
        return Call(self._raw.new_call())

    def dispatch_send(self, call: Call, x: Sequence[Any], topk_idx: Sequence[Any], stream: Any = None) -> None:
        """Starts a low-latency dispatch of each rank's ``x [T, H]`` by ``topk_idx [T, K]``
        (returns at once: the receive hook)."""
        n = len(self.ranks)
        self._raw.dispatch_send(call._raw, _list(x, n, "x"), _list(topk_idx, n, "topk_idx"), _stream(stream))

    def dispatch(self, call: Call, x: Sequence[Any], topk_idx: Sequence[Any], stream: Any = None) -> List[Dict[str, Any]]:
        """A whole low-latency dispatch (send and receive in one launch where the ranks fit
        one); returns each local rank's received views, as ``dispatch_recv`` does."""
        n = len(self.ranks)
        self._raw.dispatch(call._raw, _list(x, n, "x"), _list(topk_idx, n, "topk_idx"), _stream(stream))
        return [self._views(self._raw.received(call._raw, i)) for i in range(n)]

    def dispatch_recv(self, call: Call, stream: Any = None) -> List[Dict[str, Any]]:
        """Completes the dispatch; returns each local rank's received views: ``recv_x
        [L, R*M, H]``, ``recv_scales`` (FP8) , ``recv_count [L]``, ``recv_src [L, R*M]``,
        ``recv_range [L, R, 2]`` and ``y`` (write the experts' outputs there)."""
        self._raw.dispatch_recv(call._raw, _stream(stream))
        return [self._views(self._raw.received(call._raw, i)) for i in range(len(self.ranks))]

    def combine_send(self, call: Call, stream: Any = None) -> None:
        """Announces that the experts wrote ``y``."""
        self._raw.combine_send(call._raw, _stream(stream))

    def combine_recv(self, call: Call, topk_weights: Sequence[Any], out: Sequence[Any], stream: Any = None) -> None:
        """Reduces each token's expert rows into ``out [T, H]``, weighted by ``topk_weights
        [T, K]`` (f32) in slot order."""
        n = len(self.ranks)
        self._raw.combine_recv(
            call._raw, _list(topk_weights, n, "topk_weights"), _list(out, n, "out"), _stream(stream)
        )

    def combine(self, call: Call, topk_weights: Sequence[Any], out: Sequence[Any], stream: Any = None) -> None:
        """A whole low-latency combine (``combine_send`` and ``combine_recv`` in one launch where
        the ranks fit one)."""
        n = len(self.ranks)
        self._raw.combine(
            call._raw, _list(topk_weights, n, "topk_weights"), _list(out, n, "out"), _stream(stream)
        )

    # High throughput -------------------------------------------------------------------------
    def layout(self, topk_idx: Any, stream: Any = None) -> Dict[str, Any]:
        """The routing layout of one rank's ``topk_idx [T, K]`` on the device, with no host
        synchronization (DeepEP's ``get_dispatch_layout``): ``num_tokens_per_rank [R]``,
        ``num_tokens_per_expert [E]`` (int32), ``is_token_in_rank [T, R]`` (bool) and
        ``bad_slots [1]`` (slots whose id is outside ``[-1, E)``, which are skipped)."""
        torch = _torch()
        (ids,) = _list(topk_idx, 1, "topk_idx")
        r, e = self.spec.ranks, self.spec.experts
        counters = torch.empty(r + e + 2, dtype=torch.int32, device=ids.device)
        in_rank = torch.empty(ids.shape[0], r, dtype=torch.bool, device=ids.device)
        self._raw.ht_layout(ids, counters, in_rank, _stream(stream))
        return {
            "num_tokens_per_rank": counters[:r],
            "num_tokens_per_expert": counters[r : r + e],
            "is_token_in_rank": in_rank,
            "bad_slots": counters[r + e : r + e + 1],
        }

    def ht_dispatch(
        self, x: Sequence[Any], topk_idx: Sequence[Any], topk_weights: Sequence[Any], stream: Any = None
    ) -> List[Dict[str, Any]]:
        """High-throughput dispatch (layout, notify, the rows; no host synchronization); returns
        each local rank's views: ``recv_x [C, H]``, ``recv_scales``, ``recv_topk_idx [C, K]``,
        ``recv_topk_w``, ``recv_src [C]``, ``y [C, H]``, ``recv_rows [1]``,
        ``num_recv_tokens_per_expert [L]`` and ``group_offset [L + 1]`` (counts stay on the
        device)."""
        n = len(self.ranks)
        s = _stream(stream)
        self._raw.ht_dispatch_send(
            _list(x, n, "x"), _list(topk_idx, n, "topk_idx"), _list(topk_weights, n, "topk_weights"), s
        )
        self._raw.ht_dispatch_recv(s)
        return [self._views(self._raw.ht_received(i)) for i in range(n)]

    def ht_combine(
        self, topk_idx: Sequence[Any], topk_weights: Sequence[Any], out: Sequence[Any], stream: Any = None
    ) -> None:
        """High-throughput combine of the rows written in ``y`` into ``out [T, H]``."""
        n = len(self.ranks)
        s = _stream(stream)
        self._raw.ht_combine_send(s)
        self._raw.ht_combine_recv(
            _list(topk_idx, n, "topk_idx"), _list(topk_weights, n, "topk_weights"), _list(out, n, "out"), s
        )


class VirtualGroup(_GroupBase):
    """All R ranks of ``spec`` as virtual ranks of one GPU (``device``, default the current one):
    every call takes a list of R tensors, rank order."""

    def __init__(self, spec: Union[Spec, str], device: Optional[int] = None):
        torch = _torch()
        dev = torch.cuda.current_device() if device is None else int(device)
        super().__init__(_Group.virtual_ranks(_as_spec(spec), dev))


class Group(_GroupBase):
    """This process's rank of a job over NCCL: made from a ``torch.distributed`` process group
    (the NCCL unique id is broadcast through it), or from explicit ``rank``, ``world_size`` and
    ``unique_id`` (``epc.nccl_unique_id()`` on one rank). Collective. The spec's rank count must
    be the job's; every call takes one tensor (or a list of one)."""

    def __init__(
        self,
        spec: Union[Spec, str],
        process_group: Any = None,
        *,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        unique_id: Optional[bytes] = None,
        device: Optional[int] = None,
    ):
        torch = _torch()
        dev = torch.cuda.current_device() if device is None else int(device)
        if unique_id is None:
            import torch.distributed as dist

            rank = dist.get_rank(process_group)
            world_size = dist.get_world_size(process_group)
            box = [nccl_unique_id() if rank == 0 else None]
            dist.broadcast_object_list(box, src=dist.get_global_rank(process_group, 0) if process_group else 0, group=process_group)
            unique_id = box[0]
        if rank is None or world_size is None:
            raise ValueError("give rank and world_size with unique_id")
        super().__init__(_Group.nccl(_as_spec(spec), int(rank), int(world_size), bytes(unique_id), dev))
