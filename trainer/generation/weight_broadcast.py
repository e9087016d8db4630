"""Weights broadcast from policy rank 0 to every engine worker over a process group of their own (split placement:
the engines have GPUs of their own, so CUDA IPC cannot reach them).

The group is made without `torch.distributed.init_process_group`: the policy ranks and vLLM's workers each have a
default group already (Megatron's, the engine's TP group), and a process can have one default group only. A
`TCPStore` on policy rank 0's node and a backend object (NCCL between GPUs, gloo on CPUs) are all a broadcast
needs. Rank 0 is the policy's rank 0; engine `e`'s worker `w` is rank 1 + e x TP + w. Each refit: policy rank 0
packs the HF state dict into one buffer (`shared_weights.pack_state`), the driver hands its layout to the engines,
and one broadcast of the buffer reaches them all.

Import-light: vLLM imports this in every engine worker (through `weight_refit.py`); torch only inside functions.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

GROUP_TIMEOUT = datetime.timedelta(minutes=10)  # a refit waits this long for every member before failing


@dataclass(frozen=True)
class Rendezvous:
    """Where the refit group meets: policy rank 0's node and a free port there, and how many members it has."""

    host: str
    port: int
    world_size: int


def open_group(meet: Rendezvous, rank: int, device: torch.device) -> Any:
    """This process's member of the refit group (blocks until all `world_size` members have joined)."""
    from torch.distributed import TCPStore

    store = TCPStore(meet.host, meet.port, meet.world_size, is_master=rank == 0, timeout=GROUP_TIMEOUT)
    if device.type == "cuda":
        from torch.distributed import ProcessGroupNCCL

        return ProcessGroupNCCL(store, rank, meet.world_size)
    from torch.distributed import ProcessGroupGloo

    return ProcessGroupGloo(store, rank, meet.world_size, GROUP_TIMEOUT)


def broadcast(group: Any, buffer: torch.Tensor) -> None:
    """Rank 0's `buffer` into every member's `buffer` (same size and device type on all)."""
    import torch

    group.broadcast(buffer, 0).wait()
    if buffer.device.type == "cuda":
        torch.cuda.current_stream(buffer.device).synchronize()
