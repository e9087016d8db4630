"""The GRPO policy: a Megatron-core GPTModel trained by one process per rank, driven as Ray actors.

`PolicyWorker` is one rank (tensor x pipeline x data parallel; all 1 on CPU with gloo, NCCL on GPUs). It holds
the model in fp32 master weights (on GPU the forward runs under bf16 autocast when `policy.precision` is
bfloat16), AdamW + Megatron's LR scheduler (see `optim.py` for why not Megatron's optimizer), and offers:
`get_logprobs` (teacher-forced per-token log-probs for the previous/reference policy), `train` (GRPO loss over
micro-batches, token-normalised over the whole optimizer step), `export_weights_blob` (safetensors bytes of the
HF state dict, for refitting the generation engines), `save` / `load`.

`PolicyGroup` lives in the driver: it starts one actor per rank, initialises torch.distributed among them and
broadcasts each call, the way NeMo RL's lm_policy drives its Megatron workers; every worker sees the whole batch
and takes its own data-parallel shard, so the driver never splits tensors by rank.

Batch format (a dict of CPU tensors, right-padded):
  input_ids [N, S] long, input_lengths [N] long, loss_mask [N, S] (1 on trained tokens), advantages [N],
  prev_logprobs / generation_logprobs / reference_logprobs [N, S] (training only; without prev_logprobs a
  one-optimizer-step batch is trained on-policy),
  with `logprobs[b, t] = log p(input_ids[b, t] | input_ids[b, :t])` (position 0 is always 0).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from infra.io import atomic_path
from trainer.grpo.loss import LossConfig, clipped_pg_loss, reduce_loss_stats
from trainer.interfaces import SamplingParams

if TYPE_CHECKING:
    from trainer.generation.shared_weights import SharedWeights
    from trainer.generation.weight_broadcast import Rendezvous
    from trainer.ray_placement import Reservation

ModelFactory = Callable[..., torch.nn.Module]  # factory(tp=, pp=, dtype=) -> GPTModel
WeightsExporter = Callable[..., dict]  # (model, dtype=, on_device=) -> full HF state dict (gathered over TP)

# On GPUs the policy shares each GPU with a generation engine (colocated, as NeMo RL's default).
COLOCATED_GPU_SHARE = 0.5


def _shard(n: int, parts: int, index: int) -> slice:
    """Contiguous, near-equal split of range(n) into `parts`; the `index`-th piece."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (1 if index < extra else 0))


def _sum_grads(params: list, group) -> None:
    """All-reduce (sum) the gradients of `params` over `group` as one flat tensor; a missing gradient counts as 0."""
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=group)
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


class PolicyWorker:
    """One rank of the policy. Construct, then `setup(...)` on every rank at once (collective)."""

    def __init__(
        self,
        policy_cfg: Mapping,
        loss_cfg: Mapping,
        model_factory: ModelFactory,
        weights_exporter: WeightsExporter,
        total_steps: int,
        rank: int,
        world_size: int,
        seed: int = 42,
        temperature: float = 1.0,
    ):
        self.policy_cfg = dict(policy_cfg)
        self.loss_cfg = LossConfig.from_cfg(loss_cfg)
        self.model_factory, self.weights_exporter = model_factory, weights_exporter
        self.total_steps, self.rank, self.world_size = total_steps, rank, world_size
        self.seed, self.temperature = seed, float(temperature)
        mcfg = self.policy_cfg["megatron_cfg"]
        self.tp, self.pp = int(mcfg["tensor_model_parallel_size"]), int(mcfg["pipeline_model_parallel_size"])
        if self.pp != 1:
            raise NotImplementedError("pipeline_model_parallel_size > 1 is not supported yet (use TP and DP)")
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.autocast_dtype = torch.bfloat16 if str(self.policy_cfg["precision"]) in ("bfloat16", "bf16") else None
        self.reference_state: dict | None = None
        # output layer + softmax only at loss-mask positions (trainer.models.megatron_bridge.selected_token_logprobs)
        self.select_logits = bool(self.policy_cfg["logits_only_where_loss"])
        # a prefix shared by several rows is computed once per micro-batch (trainer.models.packing)
        self.pack_prefixes = bool(self.policy_cfg["pack_shared_prefixes"])
        self.pack_min_prefix = int(self.policy_cfg["pack_min_shared_tokens"])
        self._reducer = None  # OverlappedGradReducer, built on the first training step that uses it
        # colocated on a GPU: Adam's moments and the gradients leave the GPU between training steps, so that a
        # vLLM engine sharing it has the memory while it generates (trainer.placement counts on this)
        self.offload_between_steps = bool(self.policy_cfg["offload_optimizer_for_generation"])
        self._offloaded: list[tuple[dict, str]] = []  # (optimizer state, key) of the tensors now on the host
        self._pinned: dict[tuple[int, str], torch.Tensor] = {}  # host copies of those, reused every step
        self._shared_buffer: torch.Tensor | None = None  # the weights offered to the engines (share_weights)
        self._refit_group: Any = None  # rank 0: the process group of a broadcast refit (split placement)
        self._broadcast_buffer: torch.Tensor | None = None  # rank 0: the packed weights until sent

    # ---- setup -------------------------------------------------------------------------------------------
    def where(self) -> dict[str, Any]:
        """This rank's node and GPU as Ray placed it."""
        from trainer.ray_placement import where_am_i

        return where_am_i()

    def node_address(self) -> tuple[str, int]:
        """Where rank 0 listens for the process group (asked before setup)."""
        import ray

        from trainer.distributed import free_port

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> dict:
        from megatron.core import parallel_state

        from trainer.distributed import init_distributed
        from trainer.policy.optim import build_optimizer, build_scheduler

        init_distributed(
            self.tp,
            self.pp,
            rank=self.rank,
            world_size=self.world_size,
            master_addr=master_addr,
            master_port=master_port,
            seed=self.seed,
        )
        if self.device.type == "cuda":  # the GPU init_distributed chose: the local rank's (torchrun, mp.spawn) or
            self.device = torch.device("cuda", torch.cuda.current_device())  # the one a Ray actor sees
        self.dp = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        if self.device.type == "cpu":
            # Ray pins an actor with num_cpus=1 to one OpenMP thread; the policy and the engines take turns
            # (generate, then train), so on CPU the policy may use every core this process is allowed on.
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // max(1, self.world_size)))
        torch.manual_seed(self.seed)
        mcfg = self.policy_cfg["megatron_cfg"]
        # the factory sees megatron_cfg (attention_backend, activation_checkpointing, sequence_parallel)
        self.model = self.model_factory(tp=self.tp, pp=self.pp, dtype=torch.float32, parallel=mcfg).to(self.device)
        self.optimizer = build_optimizer(self.model, mcfg["optimizer"])
        self.scheduler = build_scheduler(self.optimizer, mcfg["optimizer"], mcfg["scheduler"], self.total_steps)
        if self.loss_cfg.uses_reference:  # the initial weights are the reference policy (kept on CPU)
            self.reference_state = {
                k: v.detach().to("cpu", copy=True)
                for k, v in self.model.state_dict().items()
                if isinstance(v, torch.Tensor)
            }
        return {
            "rank": self.rank,
            "dp_rank": self.dp_rank,
            "tp_rank": self.tp_rank,
            "num_params": sum(p.numel() for p in self.model.parameters()),
        }

    @property
    def reports(self) -> bool:
        """Whether this rank's results are returned to the driver (one per data-parallel shard)."""
        return self.tp_rank == 0

    # ---- forward -----------------------------------------------------------------------------------------
    def _token_logprobs(self, input_ids: torch.Tensor, wanted: torch.Tensor | None = None) -> torch.Tensor:
        """log p(token_t | tokens_<t) for t >= 1, 0 at t = 0; [B, S]. Grad flows when enabled.

        With `wanted` (the loss mask), only those positions are computed (0 elsewhere): the logits of prompt and
        tool-output tokens are never needed."""
        from trainer.models.megatron_bridge import (
            can_select_logits,
            causal_attention_mask,
            selected_token_logprobs,
            token_logprobs,
        )

        batch, seq = input_ids.shape
        input_ids = self._to_device(input_ids)
        position_ids = torch.arange(seq, device=self.device).unsqueeze(0).expand(batch, seq)
        # CPU: Megatron's default causal mask is built on CUDA, so give it one; GPU: let the kernel build it.
        mask = causal_attention_mask(seq) if self.device.type == "cpu" else None
        amp = self._autocast()
        vocab_size = getattr(self.model, "hf_vocab_size", None)
        if wanted is not None and self.select_logits and can_select_logits(self.model):
            with amp:
                return selected_token_logprobs(
                    self.model, input_ids, position_ids, mask, wanted, vocab_size, self.temperature
                )
        with amp:
            logits = self.model(input_ids, position_ids, mask)  # [B, S, V / tp]
        # every position predicts the next token; the last has none (target 0, dropped below). Whole-tensor
        # logits (no [:, :-1] slice) let the fused GPU path read them in place. vLLM reports log-probs of the
        # temperature-scaled distribution, hence the temperature.
        targets = torch.cat([input_ids[:, 1:], torch.zeros_like(input_ids[:, :1])], dim=1)
        next_logprobs = token_logprobs(logits, targets, vocab_size=vocab_size, temperature=self.temperature)[:, :-1]
        return torch.cat([torch.zeros(batch, 1, device=self.device), next_logprobs], dim=1)

    def _autocast(self):
        """bf16 autocast where the policy's precision asks for it, else nothing."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()

    def _microbatches(self, rows: slice, size: int, lengths: torch.Tensor):
        """Index tensors of at most `size` of `rows`, grouped by length (shortest first), each with its sequence
        length: micro-batches of similar lengths pad little. Row results are independent of the grouping, and
        the training loss is a sum over the optimizer step's tokens, so it changes no gradient either."""
        order = torch.arange(rows.start, rows.stop)[torch.argsort(lengths[rows], stable=True)]
        for start in range(0, len(order), size):
            index = order[start : start + size]
            seq = int(lengths[index].max().item())
            seq += (-seq) % self.tp  # TP kernels like lengths divisible by the TP size
            yield index, max(seq, 2)

    def _packing_applies(self) -> bool:
        """Shared-prefix packing where it gives the unpacked log-probs: not for hybrid (Mamba) models, whose state
        would flow from one packed row into the next."""
        from trainer.models.megatron_bridge import can_select_logits
        from trainer.models.packing import can_pack_shared_prefixes

        return (
            self.pack_prefixes
            and self.select_logits
            and can_select_logits(self.model)
            and can_pack_shared_prefixes(self.model)
        )

    def _train_microbatches(self, rows: slice, size: int, batch: Mapping[str, torch.Tensor]):
        """(index, seq, packed) per micro-batch: rows sharing a prefix (a GRPO group's prompt, an sft domain's
        system prompt) packed together (`packed` a PackedRows) into micro-batches of at most `size` x the longest
        row's tokens; or, where nothing is shared or packing does not apply, the length-sorted rows of
        `_microbatches` (packed None)."""
        from trainer.models.packing import Family, pack_shared_prefixes, shared_prefix_families

        ids, lengths, mask = batch["input_ids"][rows], batch["input_lengths"][rows], batch["loss_mask"][rows]
        budget = size * int(lengths.max()) if len(ids) else 0
        families = (
            shared_prefix_families(ids, lengths, mask, budget, self.pack_min_prefix)
            if self._packing_applies() and budget
            else []
        )
        if not any(family.prefix > 0 for family in families):
            yield from ((index, seq, None) for index, seq in self._microbatches(rows, size, batch["input_lengths"]))
            return
        groups: list[list[Family]] = []
        current: list[Family] = []
        tokens = 0
        for family in sorted(families, key=lambda f: f.packed_size(lengths)):
            need = family.packed_size(lengths)
            if current and tokens + need > budget:
                groups.append(current)
                current, tokens = [], 0
            current.append(family)
            tokens += need
        groups.append(current)
        for group in groups:
            local = [row for family in group for row in family.rows]
            seq = max(int(lengths[local].max()), 2)
            renumber = {row: i for i, row in enumerate(local)}
            packed = pack_shared_prefixes(
                ids[local, :seq],
                lengths[local],
                mask[local, :seq],
                multiple_of=self.tp,
                families=[Family(tuple(renumber[row] for row in family.rows), family.prefix) for family in group],
            )
            yield torch.tensor(local) + rows.start, seq, packed

    def _packed_logprobs(self, packed) -> torch.Tensor:
        from trainer.models.megatron_bridge import packed_token_logprobs

        amp = self._autocast()
        with amp:
            return packed_token_logprobs(
                self.model, packed, getattr(self.model, "hf_vocab_size", None), self.temperature
            )

    @torch.no_grad()
    def get_logprobs(self, batch: Mapping[str, torch.Tensor], use_reference: bool = False) -> torch.Tensor | None:
        """Per-token log-probs of this rank's data-parallel shard ([n_shard, S], CPU) or None on non-reporting ranks."""
        ids, lengths = batch["input_ids"], batch["input_lengths"]
        rows = _shard(ids.shape[0], self.dp, self.dp_rank)
        swapped = self._swap_in_reference() if use_reference else None
        self.model.eval()
        out = torch.zeros(rows.stop - rows.start, ids.shape[1])
        try:
            mbs = int(self.policy_cfg["logprob_batch_size"] or self.policy_cfg["train_micro_batch_size"])
            # with a loss mask, rows sharing a prefix are packed as in training (same values, prefix once)
            micro = (
                self._train_microbatches(rows, mbs, batch)
                if "loss_mask" in batch
                else ((index, seq, None) for index, seq in self._microbatches(rows, mbs, lengths))
            )
            for index, seq, packed in micro:
                if packed is not None:
                    lp = self._packed_logprobs(packed)
                else:
                    wanted = self._pad_to(batch["loss_mask"][index], seq) if "loss_mask" in batch else None
                    lp = self._token_logprobs(self._pad_to(ids[index], seq), wanted)
                n = min(seq, ids.shape[1])
                out[index - rows.start, :n] = lp[:, :n].cpu()
        finally:
            if swapped is not None:
                self.model.load_state_dict(swapped, strict=False)
        return out if self.reports else None

    def _pad_to(self, ids: torch.Tensor, seq: int) -> torch.Tensor:
        if ids.shape[1] >= seq:
            return ids[:, :seq]
        return torch.nn.functional.pad(ids, (0, seq - ids.shape[1]), value=0)

    def _swap_in_reference(self) -> dict:
        if self.reference_state is None:
            raise RuntimeError("reference log-probs requested but the KL penalty is off (no reference kept)")
        current = {k: v.detach().clone() for k, v in self.model.state_dict().items() if isinstance(v, torch.Tensor)}
        self.model.load_state_dict(self.reference_state, strict=False)
        return current

    # ---- training ----------------------------------------------------------------------------------------
    def train(self, batch: Mapping[str, torch.Tensor]) -> list[dict] | None:
        """One or more optimizer steps (`train_global_batch_size` rollouts each) on the batch.

        Returns, on reporting ranks, per optimizer step: the raw micro-batch loss sums of this DP shard,
        the global valid-token count, grad_norm and lr (the driver combines the shards)."""
        from megatron.core import parallel_state

        from trainer.policy.optim import clip_grad_norm, current_lr

        n = batch["input_ids"].shape[0]
        gbs = int(self.policy_cfg["train_global_batch_size"])
        mbs = int(self.policy_cfg["train_micro_batch_size"])
        # Without prev_logprobs the batch is trained on-policy: the previous policy is the current one, whose
        # log-probs the training forward computes anyway (a separate get_logprobs pass would repeat it). Only
        # valid for one optimizer step: after it the weights have moved.
        on_policy = "prev_logprobs" not in batch
        if on_policy and n > gbs:
            raise ValueError(
                f"a batch of {n} rollouts spans several optimizer steps (train_global_batch_size="
                f"{gbs}): pass prev_logprobs"
            )
        max_grad_norm = self.policy_cfg["max_grad_norm"]
        self.model.train()
        self.restore_optimizer()
        results = []
        for step_start in range(0, n, gbs):
            step_rows = slice(step_start, min(step_start + gbs, n))
            mask_all = batch["loss_mask"][step_rows]
            global_tokens = float(mask_all.sum())
            shard = _shard(step_rows.stop - step_rows.start, self.dp, self.dp_rank)
            rows = slice(step_rows.start + shard.start, step_rows.start + shard.stop)
            reducer = self._grad_reducer()
            if reducer is not None:
                reducer.zero_grad()  # .grad = views of the persistent bucket buffers, zeroed
            else:
                self.optimizer.zero_grad(set_to_none=True)
            parts = []
            micro = list(self._train_microbatches(rows, mbs, batch)) if global_tokens > 0 else []
            for i, (index, seq, packed) in enumerate(micro):
                cpu = lambda key, index=index, seq=seq: self._pad_to(batch[key][index], seq)  # noqa: E731
                pick = lambda key, cpu=cpu: self._to_device(cpu(key))  # noqa: E731
                # the CPU mask: the loss positions are found on the host (no device sync in the forward)
                mask_cpu = cpu("loss_mask")
                mask = self._to_device(mask_cpu)
                logprobs = (
                    self._packed_logprobs(packed)
                    if packed is not None
                    else self._token_logprobs(pick("input_ids"), mask_cpu)
                )
                prev = logprobs.detach() if on_policy else pick("prev_logprobs")
                loss, stats = clipped_pg_loss(
                    self.loss_cfg,
                    logprobs,
                    prev,
                    self._to_device(batch["advantages"][index]),
                    mask.float(),
                    global_tokens,
                    generation_logprobs=pick("generation_logprobs") if "generation_logprobs" in batch else None,
                    reference_logprobs=pick("reference_logprobs") if "reference_logprobs" in batch else None,
                )
                if reducer is not None and i == len(micro) - 1:
                    reducer.arm()  # the last backward: all-reduce each bucket as soon as it is final
                loss.backward()
                parts.append({k: v.detach() for k, v in stats.items()})
            if reducer is not None:
                reducer.finish()  # the DP sum, overlapped with the last backward
            else:
                self._allreduce_grads(parallel_state.get_data_parallel_group())
            self._allreduce_tp_partial_grads()  # a sum too: the order of the two does not matter
            grad_norm = clip_grad_norm(
                self.model.parameters(), max_grad_norm, parallel_state.get_model_parallel_group()
            )
            lr = current_lr(self.optimizer)
            if global_tokens > 0:
                self.optimizer.step()
                self.scheduler.step(1)
            # read the stats only now: an .item() per micro-batch would stall the GPU queue between micro-batches
            parts = [{k: float(v) for k, v in p.items()} for p in parts]
            results.append({"parts": parts, "global_valid_tokens": global_tokens, "grad_norm": grad_norm, "lr": lr})
        if self.offload_between_steps:
            self.offload_optimizer()
        else:
            self.free_training_memory()
        return results if self.reports else None

    def free_training_memory(self) -> None:
        """Free the gradients and hand the allocator's cached blocks (the step's activations) back to the driver:
        a colocated engine waking up needs that memory, and the placement plan counts on it. A no-op off the GPU."""
        if self.device.type != "cuda":
            return
        if self._reducer is not None:  # its flat gradient buckets are rebuilt by the next step
            self._reducer.remove()
            self._reducer = None
        self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()

    def offload_optimizer(self) -> int:
        """Move Adam's moments to host memory and free the gradients; returns the bytes moved. The next `train`
        brings the moments back (`restore_optimizer`) and rebuilds the gradient buffers. A no-op off the GPU.
        Whatever was on the GPU goes back there, and only that (an optimizer may keep its step counters on the
        host)."""
        if self.device.type != "cuda" or self._offloaded:
            return 0
        moved = 0
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                    # into pinned host buffers kept across steps: a pageable copy runs at a fraction of the link's
                    # speed, and pinning fresh memory every step costs as much again
                    host = self._pinned.get((id(state), key))
                    if host is None or host.shape != value.shape or host.dtype != value.dtype:
                        host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                        self._pinned[(id(state), key)] = host
                    host.copy_(value, non_blocking=True)
                    state[key] = host
                    self._offloaded.append((state, key))
                    moved += value.numel() * value.element_size()
        torch.cuda.current_stream(self.device).synchronize()  # the copies are done before their GPU memory goes
        self.free_training_memory()
        return moved

    def restore_optimizer(self) -> None:
        """Adam's moments back on the GPU after `offload_optimizer` (nothing to do otherwise)."""
        for state, key in self._offloaded:
            # from pinned memory: asynchronous, ordered before the step's kernels on the same stream
            state[key] = state[key].to(self.device, non_blocking=True)
        self._offloaded = []

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A CPU tensor on the policy's device; on GPU through pinned memory, non-blocking: a pageable copy makes
        the host wait until the GPU has drained its queue (the previous micro-batch's backward), then the GPU
        idles while the host launches the next forward."""
        if self.device.type != "cuda" or tensor.device.type != "cpu":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def overlap_grad_reduce(self) -> bool:
        """`policy.megatron_cfg.overlap_grad_reduce`: true | false | null/auto (= on with CUDA). Read at each
        step. Only matters with data parallelism (DP > 1)."""
        flag = self.policy_cfg["megatron_cfg"]["overlap_grad_reduce"]
        if flag is None or str(flag).lower() == "auto":
            return self.device.type == "cuda"
        return str(flag).lower() not in ("false", "0", "off", "no")

    def _grad_reducer(self):
        """The overlapped data-parallel gradient reducer (`grad_reduce.py`) when on and DP > 1, else None (then
        `_allreduce_grads` runs after the backward). Built once; rebuilt if the bucket size changes."""
        from megatron.core import parallel_state

        from trainer.policy.grad_reduce import OverlappedGradReducer

        if self.dp == 1 or not self.overlap_grad_reduce():
            return None
        bucket_mb = float(self.policy_cfg["megatron_cfg"]["grad_reduce_bucket_mb"])
        if self._reducer is None or self._reducer.bucket_bytes != int(bucket_mb * 2**20):
            if self._reducer is not None:
                self._reducer.remove()
                self._reducer = None
                self.optimizer.zero_grad(set_to_none=True)  # let the old buffers go before the new ones come
            self._reducer = OverlappedGradReducer(
                self.model.parameters(), parallel_state.get_data_parallel_group(), bucket_mb
            )
        return self._reducer

    def _allreduce_tp_partial_grads(self) -> None:
        """Sum over the TP group the gradients of replicated parameters that each TP rank computes only in part:
        Qwen3's q/k norms (one weight, applied by each rank to its own heads) and, with sequence parallelism, the
        layer norms (each rank sees a slice of the sequence). Megatron's finalize_model_grads does the same
        (`_allreduce_non_tensor_model_parallel_grads`); without it the TP ranks' copies drift apart and the
        gradient (and grad norm) differs from TP=1."""
        from megatron.core import parallel_state

        from trainer.models.megatron_bridge import unwrap

        if self.tp == 1:
            return
        config = unwrap(self.model).config
        params = [
            p
            for name, p in self.model.named_parameters()
            if p.requires_grad
            and (
                (config.qk_layernorm and ("q_layernorm" in name or "k_layernorm" in name))
                or (config.sequence_parallel and getattr(p, "sequence_parallel", False))
            )
        ]
        if params:
            _sum_grads(params, parallel_state.get_tensor_model_parallel_group())

    def _allreduce_grads(self, group) -> None:
        """Sum gradients over data-parallel ranks (each rank's loss is already divided by the global tokens), after
        the backward (with `overlap_grad_reduce` off; on, `OverlappedGradReducer` does the same sum)."""
        import torch.distributed as dist

        if dist.get_world_size(group) == 1:
            return
        _sum_grads([p for p in self.model.parameters() if p.requires_grad or p.grad is not None], group)

    # ---- weights -----------------------------------------------------------------------------------------
    def export_weights_blob(self, dtype: str = "bfloat16") -> bytes | None:
        """safetensors bytes of the HF state dict (rank 0 only; every rank takes part in the TP gather)."""
        from safetensors.torch import save

        state = self.weights_exporter(self.model)
        if self.rank != 0:
            return None
        torch_dtype = getattr(torch, dtype)
        return save({k: v.detach().to("cpu", torch_dtype).contiguous().clone() for k, v in state.items()})

    def share_weights(self, dtype: str = "bfloat16") -> SharedWeights:
        """The HF state dict in `dtype`, packed into one buffer on this rank's GPU and offered to the engines on
        the same GPU through CUDA IPC (collective: every rank gathers its TP group's shards and offers the full
        model on its own GPU). The buffer stays until `release_shared_weights`."""
        from trainer.generation.shared_weights import pack_state, share

        if self.device.type != "cuda":
            raise RuntimeError("share_weights: CUDA IPC needs the policy on a GPU (on CPU: export_weights_blob)")
        self.release_shared_weights()
        state = self.weights_exporter(self.model, dtype=getattr(torch, dtype), on_device=True)
        buffer, specs = pack_state(state)
        del state  # the packed copy is all that stays
        self._shared_buffer = buffer
        return share(buffer, specs)

    def release_shared_weights(self) -> None:
        """Free the buffer of the last `share_weights` once the engines have loaded it."""
        if self._shared_buffer is None:
            return
        self._shared_buffer = None
        torch.cuda.ipc_collect()  # the allocator gets the block back once the receivers have closed it
        torch.cuda.empty_cache()

    def join_weight_broadcast(self, meet: Rendezvous) -> None:
        """Rank 0 joins the refit group as its rank 0 (`weight_broadcast.py`); other ranks take no part."""
        from trainer.generation.weight_broadcast import open_group

        if self.rank == 0:
            self._refit_group = open_group(meet, 0, self.device)

    def pack_weights_for_broadcast(self, dtype: str = "bfloat16") -> tuple[tuple, int] | None:
        """Collective (every rank gathers its TP group's shards); rank 0 packs the HF state dict in `dtype` into
        one buffer on its device for `send_weights` and returns its layout and size."""
        from trainer.generation.shared_weights import pack_state

        state = self.weights_exporter(self.model, dtype=getattr(torch, dtype), on_device=True)
        if self.rank != 0:
            return None
        self._broadcast_buffer, specs = pack_state(state)
        return specs, self._broadcast_buffer.numel()

    def send_weights(self) -> None:
        """Broadcast the packed buffer to the engines (they receive at the same time), then free it."""
        from trainer.generation.weight_broadcast import broadcast

        if self._refit_group is None or self._broadcast_buffer is None:
            raise RuntimeError("send_weights: join_weight_broadcast and pack_weights_for_broadcast come first")
        broadcast(self._refit_group, self._broadcast_buffer)
        self._broadcast_buffer = None

    def save_hf_model(self, template_hf_dir: str, out_dir: str, dtype: str = "bfloat16") -> str:
        """Export the current weights as a Hugging Face directory (collective; global rank 0 writes)."""
        from trainer.models.megatron_bridge import save_hf_model

        return str(save_hf_model(self.model, template_hf_dir, out_dir, getattr(torch, dtype)))

    def param_checksum(self) -> float:
        """Sum of |w| over this rank's parameters (tests: did the weights change, are replicas equal)."""
        return float(sum(p.detach().double().abs().sum() for p in self.model.parameters()))

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def extend_lr_decay(self, extra_steps: int) -> None:
        """Stretch the LR decay by `extra_steps` optimizer steps (a run that decides to train longer, like sft's
        copy check, still ends its schedule at min_lr). Saved with the scheduler, so a resumed run keeps it."""
        self.scheduler.lr_decay_steps += int(extra_steps)
        self.scheduler.wd_incr_steps += int(extra_steps)
        for group in self.optimizer.param_groups:  # the next step already uses the stretched schedule
            group["lr"] = self.scheduler.get_lr(group)

    def save(self, directory: str) -> None:
        """Weights, optimizer and scheduler state of this (tp, pp) shard; DP replicas are equal, rank dp 0 writes."""
        if self.dp_rank != 0:
            return
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "reference": self.reference_state,
            "torch_rng": torch.get_rng_state(),
            "tp": self.tp,
            "pp": self.pp,
        }
        with atomic_path(path / f"model_tp{self.tp_rank:02d}_pp00.pt") as tmp:
            torch.save(state, tmp)

    def load(self, directory: str) -> None:
        target = Path(directory) / f"model_tp{self.tp_rank:02d}_pp00.pt"
        if not target.exists():
            raise FileNotFoundError(f"policy checkpoint shard {target} is missing")
        state = torch.load(target, map_location="cpu", weights_only=False)
        if (state["tp"], state["pp"]) != (self.tp, self.pp):
            raise ValueError(
                f"{target} was saved with TP={state['tp']} PP={state['pp']}; this run uses "
                f"TP={self.tp} PP={self.pp} (resharding on load is not supported)"
            )
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for group in self.optimizer.param_groups:  # the scheduler sets lr when it steps; restore it now
            group["lr"] = self.scheduler.get_lr(group)
        self.reference_state = state.get("reference") or self.reference_state
        torch.set_rng_state(state["torch_rng"])
        self._offloaded = []  # load_state_dict put the moments next to their parameters
        if self.offload_between_steps:
            self.offload_optimizer()


def combine_train_results(per_rank: list[list[dict] | None]) -> dict[str, float]:
    """Merge the reporting ranks' per-step results into one metrics dict (mean over optimizer steps)."""
    reports = [r for r in per_rank if r is not None]
    num_steps = len(reports[0])
    steps = []
    for i in range(num_steps):
        parts = [p for r in reports for p in r[i]["parts"]]
        tokens = reports[0][i]["global_valid_tokens"]
        merged = reduce_loss_stats(parts, tokens) if parts else {"loss": 0.0}
        merged.update(grad_norm=reports[0][i]["grad_norm"], lr=reports[0][i]["lr"], global_valid_toks=tokens)
        steps.append(merged)
    out = {}
    for key in steps[0]:
        values = [s[key] for s in steps if key in s]
        if key == "probs_ratio_min":
            out[key] = min(values)
        elif key == "probs_ratio_max":
            out[key] = max(values)
        elif key == "global_valid_toks":
            out[key] = sum(values)
        elif key == "lr":
            out[key] = values[-1]
        else:
            out[key] = sum(values) / len(values)
    out["num_optimizer_steps"] = num_steps
    return out


def _config_dict(node: Any, name: str) -> dict[str, Any]:
    """The config section `node` (named `name` for errors) as a resolved plain dict, for the workers."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(node, resolve=True)
    if not isinstance(data, dict):
        raise TypeError(f"config section '{name}' is a {type(data).__name__}, not a mapping")
    return {str(key): value for key, value in data.items()}


class PolicyGroup:
    """Driver-side handle: one Ray actor per rank, each call broadcast to all and the results combined (a
    `trainer.interfaces.Policy`)."""

    def __init__(
        self,
        cfg,
        model_factory: ModelFactory,
        weights_exporter: WeightsExporter,
        total_steps: int,
        world_size: int | None = None,
        placement: Reservation | None = None,
    ):
        import ray

        from trainer.ray_placement import get_started

        policy_cfg = _config_dict(cfg.policy, "policy")
        loss_cfg = _config_dict(cfg.loss_fn, "loss_fn")
        gpus = int(cfg.cluster.gpus_per_node) * int(cfg.cluster.num_nodes)
        mcfg = policy_cfg["megatron_cfg"]
        world = world_size or (
            len(placement.plan.policy_gpus)
            if placement is not None
            else gpus
            if gpus > 0
            else int(mcfg["tensor_model_parallel_size"]) * int(mcfg["pipeline_model_parallel_size"])
        )
        options: dict[str, float] = {"num_cpus": 1}
        if gpus > 0:
            options["num_gpus"] = COLOCATED_GPU_SHARE
        actor_cls = ray.remote(PolicyWorker)
        # log-probs of the distribution the engines sample from: the same temperature
        temperature = SamplingParams.from_config(cfg).temperature
        self.workers = [
            actor_cls.options(**(placement.options_for_rank(rank) if placement is not None else options)).remote(
                policy_cfg,
                loss_cfg,
                model_factory,
                weights_exporter,
                total_steps,
                rank,
                world,
                int(cfg.grpo.seed),
                temperature,
            )
            for rank in range(world)
        ]
        ((addr, port),) = get_started([self.workers[0].node_address.remote()], "policy rank")
        self.setup_info = get_started([w.setup.remote(addr, port) for w in self.workers], "policy ranks")
        self._ray = ray

    def _all(self, method: str, *args, **kwargs) -> list:
        return self._ray.get([getattr(w, method).remote(*args, **kwargs) for w in self.workers])

    def _broadcast_batch(self, batch: Mapping[str, torch.Tensor]):
        return self._ray.put(dict(batch))

    def get_logprobs(self, batch: Mapping[str, torch.Tensor], use_reference: bool = False) -> torch.Tensor:
        shards = self._all("get_logprobs", self._broadcast_batch(batch), use_reference)
        return torch.cat([s for s in shards if s is not None], dim=0)

    def train(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        return combine_train_results(self._all("train", self._broadcast_batch(batch)))

    def export_weights_blob(self, dtype: str = "bfloat16") -> bytes:
        return self._all("export_weights_blob", dtype)[0]

    def share_weights(self, dtype: str = "bfloat16") -> dict[str, SharedWeights]:
        """Every rank's CUDA IPC offer of the full model, by GPU UUID (see `PolicyWorker.share_weights`)."""
        return {offer.gpu_uuid: offer for offer in self._all("share_weights", dtype)}

    def release_shared_weights(self) -> None:
        self._all("release_shared_weights")

    def rendezvous_address(self) -> tuple[str, int]:
        """Rank 0's node and a free port there: where a broadcast refit group meets."""
        return self._ray.get(self.workers[0].node_address.remote())

    def join_weight_broadcast(self, meet: Rendezvous) -> list:
        """Rank 0's pending join of the refit group: wait on it with the engines'."""
        return [self.workers[0].join_weight_broadcast.remote(meet)]

    def weights_for_broadcast(self, dtype: str = "bfloat16") -> tuple[tuple, int]:
        packed = self._all("pack_weights_for_broadcast", dtype)[0]
        if packed is None:
            raise RuntimeError("policy rank 0 packed no weights for the broadcast")
        return packed

    def send_weights(self) -> list:
        """Rank 0's pending broadcast: wait on it with the engines' receptions."""
        return [self.workers[0].send_weights.remote()]

    def save(self, directory: str | Path) -> None:
        self._all("save", str(directory))

    def load(self, directory: str | Path) -> None:
        self._all("load", str(directory))

    def param_checksums(self) -> list[float]:
        return self._all("param_checksum")

    def extend_lr_decay(self, extra_steps: int) -> None:
        self._all("extend_lr_decay", extra_steps)

    def save_hf_model(self, template_hf_dir: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
        return Path(self._all("save_hf_model", str(template_hf_dir), str(out_dir), dtype)[0])

    def shutdown(self) -> None:
        for w in self.workers:
            self._ray.kill(w)
        self.workers = []


class InProcessPolicy:
    """A single-rank policy in the calling process, same interface (`trainer.interfaces.Policy`) as `PolicyGroup`
    (no Ray).

    For unit tests and quick single-process checks (sanity stage); training jobs use `PolicyGroup`."""

    def __init__(
        self,
        cfg,
        model_factory: ModelFactory,
        weights_exporter: WeightsExporter,
        total_steps: int,
        master_port: int | None = None,
    ):
        from trainer.distributed import free_port

        self.worker = PolicyWorker(
            _config_dict(cfg.policy, "policy"),
            _config_dict(cfg.loss_fn, "loss_fn"),
            model_factory,
            weights_exporter,
            total_steps,
            0,
            1,
            int(cfg.grpo.seed),
            SamplingParams.from_config(cfg).temperature,
        )
        self.setup_info = [self.worker.setup("127.0.0.1", master_port or free_port())]

    def get_logprobs(self, batch: Mapping[str, torch.Tensor], use_reference: bool = False) -> torch.Tensor:
        return self.worker.get_logprobs(batch, use_reference)

    def train(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        return combine_train_results([self.worker.train(batch)])

    def export_weights_blob(self, dtype: str = "bfloat16") -> bytes:
        blob = self.worker.export_weights_blob(dtype)
        if blob is None:  # the worker is rank 0, which always returns the blob
            raise RuntimeError("the in-process policy worker (rank 0) returned no weights blob")
        return blob

    def save(self, directory: str | Path) -> None:
        self.worker.save(str(directory))

    def load(self, directory: str | Path) -> None:
        self.worker.load(str(directory))

    def param_checksums(self) -> list[float]:
        return [self.worker.param_checksum()]

    def extend_lr_decay(self, extra_steps: int) -> None:
        self.worker.extend_lr_decay(extra_steps)

    def save_hf_model(self, template_hf_dir: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
        return Path(self.worker.save_hf_model(str(template_hf_dir), str(out_dir), dtype))

    def shutdown(self) -> None:
        pass
