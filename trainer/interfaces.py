"""The trainer's seams: what the GRPO loop and the stages call on their collaborators, typed.

    Policy          the trainable model: log-probs, a training step, weights for the engines, checkpoints
                    (trainer.policy.worker: PolicyGroup over Ray actors, InProcessPolicy in this process)
    Generation      a generation backend: `generate(prompt_token_ids, SamplingParams)`, refits, sleep/wake
                    (trainer.generation: vllm_worker.GenerationGroup, torch_backend.TorchGeneration;
                    trainer.expert.ExpertGeneration plays given texts)
    SamplingParams  how to sample: built from `policy.generation` in one place (`from_config`), taken by every
                    backend; a plain frozen dataclass of builtins, so it pickles to the vLLM actors as it is
    RolloutFn       `collect_rollouts`' signature: rows -> one rollout per row, in order
    Components      what a GRPO run is built from (`trainer.components.build_components`), handed to GRPOTrainer

The Protocols are structural: an implementation does not inherit from them, it only has the methods. Nothing
heavy is imported here (torch, Ray and vLLM only for type checkers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, runtime_checkable

if TYPE_CHECKING:
    import torch

Batch = Mapping[str, "torch.Tensor"]  # the training batch (trainer.batch.rollouts_to_batch): right-padded tensors


# ---- sampling -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingParams:
    """How one `generate` call samples.

    `max_tokens`: one limit for every prompt or one per prompt. Seeds: `seeds` (one per prompt) or `seed`
    (prompt i gets seed + i) or neither (unseeded). Per-request seeds make a run reproducible whatever the batch
    composition or the number of engines. `top_k` None (or 0 or -1) means off.
    """

    max_tokens: int | tuple[int, ...] = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    seeds: tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        # builtins only (config nodes, numpy ints and lists become ints and tuples): equal values compare and
        # pickle the same, and nothing mutable is shared between the chunks a group sends to its engines
        norm = object.__setattr__
        limits = self.max_tokens
        norm(self, "max_tokens", tuple(int(m) for m in limits) if isinstance(limits, (list, tuple)) else int(limits))
        norm(self, "temperature", float(self.temperature))
        norm(self, "top_p", float(self.top_p))
        norm(self, "top_k", None if self.top_k is None else int(self.top_k))
        norm(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        norm(self, "seed", None if self.seed is None else int(self.seed))
        if self.seeds is not None:
            norm(self, "seeds", tuple(None if s is None else int(s) for s in self.seeds))

    @classmethod
    def from_config(cls, cfg: Any, stop_token_ids: Sequence[int] = (), seed: int | None = None) -> SamplingParams:
        """`policy.generation`'s sampling (max_new_tokens, temperature, top_p, top_k): the one place it is read."""
        gen = cfg.policy.generation
        return cls(
            max_tokens=int(gen.max_new_tokens),
            temperature=float(gen.temperature),
            top_p=float(gen.top_p),
            top_k=None if gen.top_k is None else int(gen.top_k),
            stop_token_ids=tuple(stop_token_ids),
            seed=seed,
        )

    def replace(self, **changes: Any) -> SamplingParams:
        return dataclasses.replace(self, **changes)

    @property
    def top_k_or_zero(self) -> int:
        """top_k as the engines take it: 0 when off."""
        return self.top_k if self.top_k is not None and self.top_k > 0 else 0

    def seeds_for(self, num_prompts: int) -> list[int | None]:
        """One seed per prompt: `seeds`, else seed + i, else None each."""
        if self.seeds is not None:
            if len(self.seeds) != num_prompts:
                raise ValueError(f"sampling seeds has {len(self.seeds)} entries for {num_prompts} prompts")
            return list(self.seeds)
        return [None if self.seed is None else self.seed + i for i in range(num_prompts)]

    def max_tokens_for(self, num_prompts: int) -> list[int]:
        """One token limit per prompt."""
        if isinstance(self.max_tokens, tuple):
            if len(self.max_tokens) != num_prompts:
                raise ValueError(f"sampling max_tokens has {len(self.max_tokens)} entries for {num_prompts} prompts")
            return list(self.max_tokens)
        return [self.max_tokens] * num_prompts

    def per_prompt(self, num_prompts: int) -> SamplingParams:
        """The same request with seeds and limits spelled out per prompt (slice with `prompts`)."""
        return self.replace(seed=None, seeds=self.seeds_for(num_prompts), max_tokens=self.max_tokens_for(num_prompts))

    def prompts(self, start: int, stop: int) -> SamplingParams:
        """Prompts start..stop of a `per_prompt` request: what one engine of a group gets."""
        if self.seeds is None or not isinstance(self.max_tokens, tuple):
            raise ValueError("slice a per_prompt() request")
        return self.replace(seeds=self.seeds[start:stop], max_tokens=self.max_tokens[start:stop])


class GenerationOutput(TypedDict):
    token_ids: list[int]
    logprobs: list[float]  # of each sampled token under the sampling distribution (after temperature etc.)
    finish_reason: str | None  # "stop" (a stop token) | "length" (max_tokens or the context)


# ---- the collaborators ----------------------------------------------------------------------------------------
@runtime_checkable
class Policy(Protocol):
    """The trainable policy (GRPOTrainer, the sft / sanity / eval stages, prompt selection)."""

    def get_logprobs(self, batch: Batch, use_reference: bool = False) -> torch.Tensor:
        """Teacher-forced per-token log-probs [N, S] (of the reference weights with use_reference)."""
        ...

    def train(self, batch: Batch) -> dict[str, float]:
        """One optimizer step (or several, by train_global_batch_size) over the batch; loss, grad_norm, lr, ..."""
        ...

    def export_weights_blob(self, dtype: str = "bfloat16") -> bytes:
        """The HF state dict as safetensors bytes: what `Generation.update_weights` takes."""
        ...

    def save(self, directory: str | Path) -> None: ...

    def load(self, directory: str | Path) -> None: ...

    def param_checksums(self) -> list[float]: ...

    def extend_lr_decay(self, extra_steps: int) -> None: ...

    def save_hf_model(self, template_hf_dir: str | Path, out_dir: str | Path, dtype: str = "bfloat16") -> Path: ...

    def shutdown(self) -> None: ...


@runtime_checkable
class Generation(Protocol):
    """A generation backend: token ids in, sampled token ids with their log-probs out."""

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[GenerationOutput]:
        """One continuation per prompt, in prompt order."""
        ...

    def update_weights(self, blob: bytes) -> dict[str, float]:
        """Refit from safetensors bytes (HF names); timings and sizes for the metrics."""
        ...

    def sleep(self) -> list[bool]: ...

    def wake_up(self) -> list[bool]: ...

    def shutdown(self) -> None: ...


@runtime_checkable
class SharesWeightsOnGpu(Protocol):
    """A policy that can offer its weights to engines on its GPUs without a host copy (CUDA IPC, colocated)."""

    def share_weights(self, dtype: str = "bfloat16") -> Mapping[str, Any]:
        """Offers by GPU UUID (`trainer.generation.shared_weights.SharedWeights`), valid until released."""
        ...

    def release_shared_weights(self) -> None: ...


@runtime_checkable
class LoadsSharedWeights(Protocol):
    """A generation backend whose engines load weights a policy rank on the same GPU shares."""

    def update_weights_shared(self, offers: Mapping[str, Any]) -> dict[str, float]: ...


@runtime_checkable
class BroadcastsWeights(Protocol):
    """A policy whose rank 0 can broadcast its weights to engines on other GPUs or hosts (split placement).
    The `join`/`send` calls return pending handles: the driver waits on them together with the engines'."""

    def rendezvous_address(self) -> tuple[str, int]: ...

    def join_weight_broadcast(self, meet: Any) -> list: ...

    def weights_for_broadcast(self, dtype: str = "bfloat16") -> tuple[tuple, int]: ...

    def send_weights(self) -> list: ...


@runtime_checkable
class ReceivesWeightBroadcast(Protocol):
    """A generation backend whose engine workers receive a weight broadcast from policy rank 0."""

    @property
    def broadcast_members(self) -> int: ...

    def join_weight_broadcast(self, host: str, port: int, world_size: int) -> list: ...

    def receive_weights(self, specs: tuple, nbytes: int) -> list: ...


@runtime_checkable
class RolloutRecord(Protocol):
    """What the trainer reads from a rollout (trainer.rollout.Rollout has more)."""

    row_id: Any
    category: Any
    token_ids: list[int]
    loss_mask: list[int]
    generation_logprobs: list[float]
    reward: float
    truncated: bool


class RolloutFn(Protocol):
    """`trainer.rollout.collect_rollouts`: one rollout per row, in row order, seeded by `seed`."""

    def __call__(
        self, rows: Sequence[Mapping[str, Any]], generation: Generation, tokenizer: Any, cfg: Any, seed: int
    ) -> Sequence[RolloutRecord]: ...


ExpertFn = Callable[[Sequence[dict]], Sequence[RolloutRecord]]  # rows -> their expert trajectories


@dataclass
class Components:
    """What GRPOTrainer runs on; `trainer.components.build_components` builds them from the config, tests pass
    their own. `expert_fn` is needed only by `grpo.prompt_selection`; `tokenizer` only by a rollout_fn that
    renders text."""

    policy: Policy
    generation: Generation
    rollout_fn: RolloutFn
    tokenizer: Any = None
    expert_fn: ExpertFn | None = None
    placement: Any = None  # trainer.ray_placement.Reservation: the GPUs held for them (None on CPU)
    refit_transport: str = "host"  # how weights reach the engines: host | cuda_ipc | broadcast (trainer.refit)
    refit_group_joined: bool = False  # broadcast: the refit group exists (trainer.refit makes it at the first refit)

    def shutdown(self) -> None:
        """Stop the engines, then the policy workers, then give their GPUs back."""
        self.generation.shutdown()
        self.policy.shutdown()
        if self.placement is not None:
            self.placement.release()
