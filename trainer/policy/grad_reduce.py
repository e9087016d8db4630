"""Data-parallel gradient all-reduce overlapped with the backward pass (what DDP's reducer does), for `PolicyWorker`.

The gradients live in persistent flat buffers, one per bucket of ~`bucket_mb` MB: every parameter's `.grad` is a
view into its bucket's buffer, so micro-batches accumulate into the buffers in place and the all-reduce needs no
flatten / copy-back. Buckets are filled in reverse parameter order (the backward produces the output layer's
gradients first and the embedding's last). During the last micro-batch of an optimizer step (`arm`), a
post-accumulate-grad hook on each parameter counts its bucket down; a bucket whose gradients are all final is
all-reduced asynchronously (`async_op=True`) on the data-parallel group while the backward goes on with the layers
below. `finish` launches whatever the hooks did not (parameters without a gradient in that micro-batch, ranks with
no micro-batch at all) and waits for everything: call it before the grad norm, clipping and the optimizer step.

Buckets are launched strictly in bucket order (a ready bucket waits for the ones before it), so every rank issues
the same collectives in the same order whatever order its hooks fire in; with unused parameters the overlap
shrinks, the result does not change. The reduction is a sum, as `PolicyWorker._allreduce_grads` (each rank's loss
is already divided by the global token count). Works with NCCL and with gloo (CPU).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class _Bucket:
    __slots__ = ("params", "buffer", "views", "ready")

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.buffer = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        self.views, offset = [], 0
        for p in params:
            self.views.append(self.buffer[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        self.ready: set[int] = set()


class OverlappedGradReducer:
    """Bucketed, asynchronous sum of `params`' gradients over `group`; see the module docstring.

    Per optimizer step: `zero_grad()` (instead of the optimizer's), the micro-batches' backward passes with `arm()`
    called before the last one, then `finish()`."""

    def __init__(self, params: Iterable[torch.nn.Parameter], group, bucket_mb: float = 40.0):
        params = [p for p in params if p.requires_grad]
        self.group = group
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.buckets: list[_Bucket] = []
        current: list[torch.nn.Parameter] = []
        size = 0
        for p in reversed(params):  # the backward's order, roughly: the last layers' gradients first
            nbytes = p.numel() * p.element_size()
            if current and (
                size + nbytes > self.bucket_bytes or p.dtype != current[0].dtype or p.device != current[0].device
            ):
                self.buckets.append(_Bucket(current))
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            self.buckets.append(_Bucket(current))
        self._where = {id(p): i for i, b in enumerate(self.buckets) for p in b.params}
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in params]
        self._armed = False
        self._next = 0  # the next bucket to launch (buckets go out in order)
        self._works: list = []
        self.last_overlapped = 0  # buckets of the last step launched during the backward (the rest in finish)

    @property
    def num_buckets(self) -> int:
        return len(self.buckets)

    def zero_grad(self) -> None:
        """Zero the buffers and point every parameter's .grad at its view (the optimizer's zero_grad, set_to_none
        elsewhere, or a load may have replaced it)."""
        if self._works:
            raise RuntimeError("zero_grad while a gradient all-reduce is in flight (finish() first)")
        for b in self.buckets:
            b.buffer.zero_()
            for p, v in zip(b.params, b.views):
                p.grad = v
            b.ready.clear()
        self._armed, self._next = False, 0

    def arm(self) -> None:
        """The next backward is the step's last: reduce each bucket as soon as its gradients are final."""
        for b in self.buckets:
            b.ready.clear()
        self._armed, self._next = True, 0

    def _hook(self, param: torch.Tensor) -> None:
        if not self._armed:
            return
        i = self._where[id(param)]
        bucket = self.buckets[i]
        bucket.ready.add(id(param))
        if len(bucket.ready) == len(bucket.params) and i == self._next:
            self._launch(until=len(self.buckets), only_ready=True)

    def _launch(self, until: int, only_ready: bool) -> None:
        import torch.distributed as dist

        while self._next < until:
            bucket = self.buckets[self._next]
            if only_ready and len(bucket.ready) < len(bucket.params):
                break
            self._works.append(dist.all_reduce(bucket.buffer, group=self.group, async_op=True))
            self._next += 1

    def finish(self) -> None:
        """Launch the buckets not yet launched, wait for all (on GPU: the current stream waits for NCCL's)."""
        for b in self.buckets:  # .grad must still be the buffer's view, or the sum never reaches it
            for p, v in zip(b.params, b.views):
                if p.grad is None or p.grad.data_ptr() != v.data_ptr():
                    raise RuntimeError(
                        "a parameter's .grad was replaced since zero_grad(): it is not in the all-reduced bucket buffer"
                    )
        self.last_overlapped = self._next if self._armed else 0  # launched by the hooks, during the backward
        self._launch(until=len(self.buckets), only_ready=False)
        for work in self._works:
            work.wait()
        self._works = []
        self._armed = False

    def remove(self) -> None:
        """Drop the hooks (the buffers go with the last reference to the parameters' .grad views)."""
        for h in self._handles:
            h.remove()
        self._handles = []
