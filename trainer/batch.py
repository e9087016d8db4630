"""Rollouts as training tensors: the batch the policy, the prompt selection, sft and sanity all feed on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def rollouts_to_batch(rollouts: Sequence[Any], advantages: torch.Tensor) -> dict[str, torch.Tensor]:
    """Right-padded tensors from rollouts (token_ids, loss_mask, generation_logprobs per token)."""
    lengths = [len(r.token_ids) for r in rollouts]
    for r in rollouts:
        if not (len(r.loss_mask) == len(r.token_ids) == len(r.generation_logprobs)):
            raise ValueError(
                f"rollout of row {r.row_id}: token_ids ({len(r.token_ids)}), loss_mask "
                f"({len(r.loss_mask)}) and generation_logprobs ({len(r.generation_logprobs)}) differ"
            )
    n, seq = len(rollouts), max(lengths)
    ids = torch.zeros(n, seq, dtype=torch.long)
    mask = torch.zeros(n, seq)
    gen_lp = torch.zeros(n, seq)
    for i, r in enumerate(rollouts):
        L = lengths[i]
        ids[i, :L] = torch.tensor(r.token_ids, dtype=torch.long)
        mask[i, :L] = torch.tensor(r.loss_mask, dtype=torch.float32)
        gen_lp[i, :L] = torch.tensor(r.generation_logprobs, dtype=torch.float32)
    mask[:, 0] = 0  # the first token has no prediction
    return {
        "input_ids": ids,
        "input_lengths": torch.tensor(lengths),
        "loss_mask": mask,
        "generation_logprobs": gen_lp,
        "advantages": advantages.float(),
    }


def informative_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rows of a one-optimizer-step batch that carry gradient, with the same loss and gradient as the whole.

    With the KL term off, a rollout whose advantage is 0 (every generation of its prompt got the same reward:
    most groups early in training) adds exactly nothing to the clipped policy-gradient loss; it only adds its
    tokens to the count that normalises the loss. Keeping the other rows and scaling their advantages by
    kept tokens / all tokens gives the same loss and gradient (clipping depends only on the advantage's sign)
    without the forward/backward passes over the rest. A batch with no such row keeps its shortest trainable
    row (advantage 0): the optimizer and LR schedule still step, as they would have on the whole batch.
    """
    tokens = batch["loss_mask"].sum(dim=1)
    keep = (batch["advantages"] != 0) & (tokens > 0)
    if not bool(keep.any()):
        if not bool((tokens > 0).any()):
            return batch
        shortest = int(torch.where(tokens > 0, tokens, torch.full_like(tokens, float("inf"))).argmin())
        keep = torch.zeros_like(keep)
        keep[shortest] = True
    if bool(keep.all()):
        return batch
    index = keep.nonzero().squeeze(1)
    subset = {key: value.index_select(0, index) for key, value in batch.items()}
    seq = int(subset["input_lengths"].max())
    for key in ("input_ids", "loss_mask", "generation_logprobs"):
        if key in subset:
            subset[key] = subset[key][:, :seq]
    subset["advantages"] = subset["advantages"] * (float(tokens[index].sum()) / float(tokens.sum()))
    return subset
