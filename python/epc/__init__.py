"""epc: MoE expert-parallel dispatch and combine, JIT-compiled per model shape.

A spec (``epc.spec(...)``) fixes the model shape; a group runs its kernels, compiled with NVRTC
on first use and cached:

* ``VirtualGroup(spec)``: all R ranks of the spec on one GPU, each call taking lists of tensors
  (one per rank), for development and tests;
* ``Group(spec, process_group)``: this process's rank of a ``torch.distributed`` job over NCCL.

Tensors go in and come out with no copy (DLPack, or ``__cuda_array_interface__``), on
``torch.cuda.current_stream()`` unless a stream is given; received buffers are tensors viewing
the group's windows, valid until the group's next call that reuses them. Errors are
``EpcError`` subclasses carrying epc's messages. ``epc.deep_ep.Buffer`` is a DeepEP-compatible
facade.
"""

from ._epc import (
    DeviceError,
    EpcError,
    Spec,
    SpecError,
    TensorError,
    UnavailableError,
    builtin_spec_names,
    compile,
    nccl_unique_id,
    spec,
    version,
)
from ._groups import Call, Group, VirtualGroup

__version__ = version()

__all__ = [
    "Call",
    "DeviceError",
    "EpcError",
    "Group",
    "Spec",
    "SpecError",
    "TensorError",
    "UnavailableError",
    "VirtualGroup",
    "builtin_spec_names",
    "compile",
    "nccl_unique_id",
    "spec",
]
