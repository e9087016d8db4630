"""Weights handed from a policy rank to a vLLM engine on the same GPU without leaving it (colocated refit).

The policy packs its HF-named state dict, already in the engine's dtype, into one flat GPU buffer and shares that
buffer through a CUDA IPC handle; the engine's workers open the handle on their own device and load views of it.
No host copy, no serialisation of the tensors: the handle is a few hundred bytes, and one buffer means one handle
to open per refit instead of one per tensor. Each policy rank offers its buffer under its GPU's UUID (the UUID, not
the device index, names a GPU across processes whose CUDA_VISIBLE_DEVICES differ); an engine worker takes the one
of its own GPU. The policy keeps the buffer alive until every engine has loaded it, then frees it.

Import-light: vLLM imports this in every engine worker (through `weight_refit.py`); torch only inside functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ALIGN_BYTES = 256  # each tensor starts on a 256-byte boundary of the buffer (what CUDA kernels expect of a base)


@dataclass(frozen=True)
class TensorSpec:
    """Where one tensor lies in the flat buffer."""

    name: str
    dtype: str  # torch dtype name, e.g. "bfloat16"
    shape: tuple[int, ...]
    offset: int  # bytes from the buffer's start


@dataclass(frozen=True)
class SharedWeights:
    """What crosses to the engine: the buffer's IPC handle (torch's rebuild function and arguments) and the specs."""

    gpu_uuid: str
    rebuild: Any  # torch.multiprocessing.reductions.rebuild_cuda_tensor
    rebuild_args: tuple
    specs: tuple[TensorSpec, ...]
    nbytes: int


def _aligned(n: int) -> int:
    return (n + ALIGN_BYTES - 1) // ALIGN_BYTES * ALIGN_BYTES


def pack_state(state: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[TensorSpec, ...]]:
    """Copy `state` into one flat uint8 tensor on the tensors' device; returns it and where each tensor is."""
    import torch

    if not state:
        raise ValueError("pack_state: the state dict is empty")
    devices = {t.device for t in state.values()}
    if len(devices) != 1:
        raise ValueError(f"pack_state: tensors on several devices {sorted(map(str, devices))}")
    specs, offset = [], 0
    for name, tensor in state.items():
        specs.append(TensorSpec(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), offset))
        offset = _aligned(offset + tensor.numel() * tensor.element_size())
    buffer = torch.empty(offset, dtype=torch.uint8, device=devices.pop())
    for spec, tensor in zip(specs, state.values()):
        nbytes = tensor.numel() * tensor.element_size()
        buffer[spec.offset : spec.offset + nbytes].copy_(tensor.contiguous().view(-1).view(torch.uint8))
    return buffer, tuple(specs)


def unpack_state(buffer: torch.Tensor, specs: tuple[TensorSpec, ...]) -> list[tuple[str, torch.Tensor]]:
    """Views of the buffer, one per spec (no copy): (name, tensor) in packing order."""
    import math

    import torch

    out = []
    for spec in specs:
        dtype = getattr(torch, spec.dtype)
        nbytes = math.prod(spec.shape) * torch.empty((), dtype=dtype).element_size()
        if spec.offset + nbytes > buffer.numel():
            end = spec.offset + nbytes
            raise ValueError(f"tensor {spec.name!r} ends at byte {end}, past the buffer's {buffer.numel()}")
        out.append((spec.name, buffer[spec.offset : spec.offset + nbytes].view(dtype).view(spec.shape)))
    return out


def gpu_uuid(device: int | None = None) -> str:
    """The UUID of a CUDA device of this process (the current one by default)."""
    import torch

    index = torch.cuda.current_device() if device is None else device
    return str(torch.cuda.get_device_properties(index).uuid)


def share(buffer: torch.Tensor, specs: tuple[TensorSpec, ...]) -> SharedWeights:
    """The IPC handle of a CUDA buffer from `pack_state`; keep `buffer` alive until every receiver has loaded it."""
    from torch.multiprocessing.reductions import reduce_tensor

    if buffer.device.type != "cuda":
        raise ValueError(f"share: CUDA IPC needs a CUDA tensor, got one on {buffer.device}")
    rebuild, args = reduce_tensor(buffer)
    return SharedWeights(gpu_uuid(buffer.device.index), rebuild, tuple(args), specs, buffer.numel())


# position of the device index among rebuild_cuda_tensor's arguments (tensor_cls, size, stride, offset, storage_cls,
# dtype, storage_device, ...): the sender's index, which is rarely the receiver's
_DEVICE_ARG = 6


def open_shared(offers: Mapping[str, SharedWeights]) -> tuple[torch.Tensor, tuple[TensorSpec, ...]]:
    """In the receiving process: the buffer offered for this process's current GPU, mapped on that GPU."""
    import torch

    uuid = gpu_uuid()
    if uuid not in offers:
        raise RuntimeError(
            f"no policy rank shares weights on this engine's GPU {uuid} (offered on {sorted(offers)}): a CUDA IPC "
            "refit needs a policy rank on every GPU of every engine (colocated placement)"
        )
    offer = offers[uuid]
    args = list(offer.rebuild_args)
    args[_DEVICE_ARG] = torch.cuda.current_device()
    return offer.rebuild(*args), offer.specs
