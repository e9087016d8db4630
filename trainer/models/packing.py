"""Shared-prefix packing: rows with a common prefix (a GRPO group's prompt) run it through the model once.

A group's rollouts start with the same prompt (~300 tokens in the tiny demo) and differ only in the ~50 tokens
the model wrote after it. Trained as separate rows, the prompt is computed once per rollout: 85% of the
policy's work. Packed, one sequence holds the prompt once and then each rollout's continuation; a block mask
lets every continuation see the prompt and itself (never another continuation), and every token keeps the
position it has in its own rollout (RoPE / learned positions). The hidden state of any rollout token is then
the one the unpacked row gives, so the log-probs and, the loss being a sum over tokens, the gradients are
the same (tests/models/test_packing.py).

`pack_shared_prefixes` builds the packed layout on the host; `packed_token_logprobs` runs the model on it and
returns log-probs in the rows' own [rows, seq] layout, so the loss code does not know about packing.

The block mask over the whole packed sequence makes a dense attention kernel score every token against every
other: with two ~700-token families in a 1,400-token pack, ~5x the pairs that may attend, and half the tiny
model's training step. `SegmentBatch` describes the same attention as two batched calls (the prompts, then all
continuations, each against its prompt and itself), which the SDPA backend runs instead of the dense one.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PackedRows:
    """One packed sequence and where each trained token of the original rows comes from."""

    input_ids: torch.Tensor  # [1, T] prompt once, then each row's continuation (families one after another)
    positions: torch.Tensor  # [1, T] each token's position in its own row
    masked: torch.Tensor  # [1, 1, T, T] bool, True = may NOT attend (Megatron's convention)
    source: torch.Tensor  # [N] packed index whose hidden state predicts the n-th trained token
    rows: torch.Tensor  # [N] that token's row ...
    cols: torch.Tensor  # [N] ... and column in the row layout
    targets: torch.Tensor  # [N] its token id
    shape: tuple[int, int]  # the row layout (rows, seq)
    segments: tuple[SegmentBatch, ...] = ()  # the mask's attention as batched segments (empty: use the mask)

    @property
    def packed_tokens(self) -> int:
        return int(self.input_ids.shape[1])


@dataclass
class SegmentBatch:
    """Segments of the packed sequence padded to one length, for one batched attention call: segment n's
    tokens (queries `q_index[n]`) attend to `k_index[n]` (its prompt's tokens, then its own) where `allowed`.
    Padding repeats a real position and is never allowed as a key nor read back as a query."""

    q_index: torch.Tensor  # [n, Lq] packed positions of each segment's tokens
    k_index: torch.Tensor  # [n, Lk] packed positions of the keys: the prompt's tokens, then the segment's
    allowed: torch.Tensor  # [n, 1, Lq, Lk] bool, True = may attend (SDPA's convention)
    take: torch.Tensor  # [m] flat index into the [n * Lq] queries of each real token ...
    dest: torch.Tensor  # [m] ... and its packed position

    def to(self, device) -> SegmentBatch:
        return SegmentBatch(
            *(t.to(device, non_blocking=True) for t in (self.q_index, self.k_index, self.allowed, self.take, self.dest))
        )


def _segment_batch(spans: list[tuple[int, int]], prompts: list[tuple[int, int]]) -> SegmentBatch:
    """Batch segments (start, length) of the packed sequence, each attending to its prompt span (start, length;
    length 0 for none) and causally to itself."""
    width_q = max(length for _, length in spans)
    width_k = max(p_len + length for (_, length), (_, p_len) in zip(spans, prompts))
    q_index = torch.zeros(len(spans), width_q, dtype=torch.long)
    k_index = torch.zeros(len(spans), width_k, dtype=torch.long)
    allowed = torch.zeros(len(spans), 1, width_q, width_k, dtype=torch.bool)
    causal = torch.ones(width_q, width_q, dtype=torch.bool).tril()
    take, dest = [], []
    for n, ((start, length), (p_start, p_len)) in enumerate(zip(spans, prompts)):
        q_index[n] = start
        q_index[n, :length] = torch.arange(start, start + length)
        k_index[n] = start
        k_index[n, :p_len] = torch.arange(p_start, p_start + p_len)
        k_index[n, p_len : p_len + length] = torch.arange(start, start + length)
        allowed[n, 0, :, :p_len] = True
        allowed[n, 0, :, p_len : p_len + length] = causal[:, :length]
        take.append(torch.arange(n * width_q, n * width_q + length))
        dest.append(torch.arange(start, start + length))
    return SegmentBatch(q_index, k_index, allowed, torch.cat(take), torch.cat(dest))


def segment_batches(segment: list[int], parent: list[int]) -> tuple[SegmentBatch, ...]:
    """The packed sequence's attention (token i of segment s sees its own segment causally and all of segment
    parent[s]) as two batches: the segments without a parent (prompts, pads), then those with one."""
    starts: dict[int, int] = {}
    lengths: dict[int, int] = {}
    for position, seg in enumerate(segment):
        starts.setdefault(seg, position)
        lengths[seg] = lengths.get(seg, 0) + 1
    span = lambda seg: (starts.get(seg, 0), lengths.get(seg, 0))  # noqa: E731
    batches = []
    for has_prompt in (False, True):
        own = [seg for seg in sorted(lengths) if (parent[seg] >= 0) == has_prompt]
        if own:
            batches.append(
                _segment_batch([span(seg) for seg in own], [span(parent[seg]) if has_prompt else (0, 0) for seg in own])
            )
    return tuple(batches)


@dataclass(frozen=True)
class Family:
    """Rows whose first `prefix` tokens are the same: packed, the prefix is computed once for all of them."""

    rows: tuple[int, ...]
    prefix: int

    def packed_size(self, lengths: torch.Tensor) -> int:
        return self.prefix + sum(int(lengths[row]) - self.prefix for row in self.rows)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def shared_prefix_families(
    ids: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor, max_tokens: int | None = None, min_prefix: int = 1
) -> list[Family]:
    """Rows grouped into families that share a prefix (a GRPO group's prompt, or the system prompt and tool list
    of sft rows of one domain), packing to the fewest tokens with each family at most `max_tokens`; rows with
    no trained token are left out.

    Rows sorted by their tokens put long common prefixes next to each other; the common prefix of a run of
    sorted rows is the smallest common prefix of neighbours in it. A run is split at that weakest link when its
    two parts pack into fewer tokens (e.g. two GRPO groups whose ~300-token prompts agree on ~250 tokens:
    each group's own prompt saves more), when it is over `max_tokens`, or when its prefix is shorter than
    `min_prefix` (a chat template's first tokens save less than the block mask costs). A lone row has prefix 0."""
    seqs = {
        row: ids[row, : int(lengths[row])].tolist()
        for row in range(ids.shape[0])
        if bool((mask[row, : int(lengths[row])] != 0).any())
    }
    order = sorted(seqs, key=lambda r: seqs[r])
    links = [_common_prefix(seqs[a], seqs[b]) for a, b in zip(order, order[1:])]

    def split(rows: list[int], links: list[int]) -> list[Family]:
        if len(rows) == 1:
            return [Family((rows[0],), 0)]
        prefix = min(links)
        cut = links.index(prefix) + 1
        parts = split(rows[:cut], links[: cut - 1]) + split(rows[cut:], links[cut:])
        whole = Family(tuple(rows), prefix)
        size = whole.packed_size(lengths)
        worth_it = prefix >= max(1, min_prefix) and size <= sum(f.packed_size(lengths) for f in parts)
        return [whole] if worth_it and (max_tokens is None or size <= max_tokens) else parts

    return split(order, links) if order else []


def pack_shared_prefixes(
    ids: torch.Tensor,
    lengths: torch.Tensor,
    mask: torch.Tensor,
    families: list[Family] | None = None,
    multiple_of: int = 1,
) -> PackedRows:
    """Pack rows [B, S] (right-padded, `lengths` real tokens, `mask` 1 on trained tokens) into one sequence.

    `families` (default: `shared_prefix_families`) say which rows share which prefix; rows outside every
    family are not packed (their log-probs come back as 0, as for masked positions). The packed length is
    padded up to a multiple of `multiple_of` (tensor-parallel kernels); pad tokens attend only to themselves."""
    families = shared_prefix_families(ids, lengths, mask) if families is None else families
    tokens: list[int] = []
    positions: list[int] = []
    segment: list[int] = []
    parent: list[int] = []
    source: list[int] = []
    rows: list[int] = []
    cols: list[int] = []
    for family in families:
        start, first_row = family.prefix, family.rows[0]
        prompt_segment, offset = len(parent), len(tokens)
        parent.append(-1)
        tokens += ids[first_row, :start].tolist()
        positions += range(start)
        segment += [prompt_segment] * start
        for row in family.rows:
            end = int(lengths[row])
            if end < start or not torch.equal(ids[row, :start], ids[first_row, :start]):
                raise ValueError(f"row {row} does not share its family's prefix of {start} tokens")
            own, first = len(parent), len(tokens)
            parent.append(prompt_segment)
            tokens += ids[row, start:end].tolist()
            positions += range(start, end)
            segment += [own] * (end - start)
            for col in (mask[row, 1:end] != 0).nonzero().flatten().add(1).tolist():
                # position col-1 predicts token col: inside the shared prefix, or in the row's own part
                source.append(offset + col - 1 if col - 1 < start else first + col - 1 - start)
                rows.append(row)
                cols.append(col)
    pad = (-len(tokens)) % multiple_of if tokens else multiple_of
    for _ in range(pad):
        parent.append(-1)
        segment.append(len(parent) - 1)
        tokens.append(0)
        positions.append(0)
    seg = torch.tensor(segment)
    seg_parent = torch.tensor(parent)[seg]
    index = torch.arange(len(tokens))
    # token i may attend to token j <= i of its own segment or of its segment's prompt
    allowed = (index[None, :] <= index[:, None]) & (
        (seg[None, :] == seg[:, None]) | (seg[None, :] == seg_parent[:, None])
    )
    row_index = torch.tensor(rows, dtype=torch.long)
    col_index = torch.tensor(cols, dtype=torch.long)
    return PackedRows(
        input_ids=torch.tensor(tokens, dtype=ids.dtype).unsqueeze(0),
        positions=torch.tensor(positions, dtype=torch.long).unsqueeze(0),
        masked=~allowed[None, None],
        source=torch.tensor(source, dtype=torch.long),
        rows=row_index,
        cols=col_index,
        targets=ids[row_index, col_index] if len(rows) else torch.zeros(0, dtype=ids.dtype),
        shape=(int(ids.shape[0]), int(ids.shape[1])),
        segments=segment_batches(segment, parent),
    )


def packing_refusal(model) -> str | None:
    """Why shared-prefix packing is wrong for `model` (None where it is right).

    Packing relies on every layer mixing tokens only through attention, which the block mask confines to a row's
    prompt and its own tokens. A Mamba layer (the hybrid NemotronH) carries a recurrent state along the packed
    sequence past any mask: each continuation would start from the state left by the previous continuation, not
    by its prompt. (Carrying per-segment initial states through the scan would make it right; not done.)"""
    while hasattr(model, "module"):  # DDP / Float16Module wrappers
        model = model.module
    arch: Any = getattr(model, "hf_arch", None)
    if getattr(arch, "hybrid", False):
        return (
            f"shared-prefix packing (policy.pack_shared_prefixes) is wrong for the hybrid model "
            f"'{arch.model_type}' (layers {arch.pattern}): its Mamba layers carry a recurrent state along the packed "
            "sequence, past the attention mask, so a continuation would see the continuations packed before it. "
            "Set policy.pack_shared_prefixes=false for this model."
        )
    return None


def can_pack_shared_prefixes(model) -> bool:
    """Whether `pack_shared_prefixes` + `packed_token_logprobs` give `model` the unpacked rows' log-probs."""
    return packing_refusal(model) is None


@contextmanager
def rotary_positions(module, positions: torch.Tensor):
    """Make a GPTModel's rotary embedding give each token the angles of `positions` [T] instead of 0..T-1
    (Megatron derives RoPE from the sequence length alone and ignores position_ids)."""
    rope = getattr(module, "rotary_pos_emb", None)
    if rope is None:  # learned absolute positions: position_ids already carry them
        yield
        return

    def by_position(_module, _args, emb):
        if not isinstance(emb, torch.Tensor):
            raise NotImplementedError(f"packing: rotary embedding {type(rope).__name__} is not supported")
        return emb.index_select(0, positions.to(emb.device))

    handle = rope.register_forward_hook(by_position)
    try:
        yield
    finally:
        handle.remove()
