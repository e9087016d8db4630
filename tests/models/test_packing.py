"""Shared-prompt packing gives the log-probs and gradients of the unpacked rows (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
from test_attention import VOCAB, _write_qwen3

from trainer.distributed import init_distributed
from trainer.models.packing import Family, pack_shared_prefixes, shared_prefix_families


@pytest.fixture(scope="module")
def dist_tp1():
    init_distributed(tp=1, pp=1)
    yield


def grouped_rows(vocab: int, seed: int = 0):
    """Two prompts (7 and 5 tokens) with 3 and 2 rollouts of different lengths, each with an untrained gap
    (a tool output inside the continuation), plus a row with no trained token; right-padded."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, vocab, (7,), generator=g), torch.randint(1, vocab, (5,), generator=g)]
    specs = [(0, 12), (1, 9), (0, 15), (0, 10), (1, 14), (1, 8)]
    seq = max(end for _, end in specs) + 2
    ids = torch.zeros(len(specs), seq, dtype=torch.long)
    mask = torch.zeros(len(specs), seq)
    for row, (which, end) in enumerate(specs):
        prompt = prompts[which]
        ids[row, : len(prompt)] = prompt
        ids[row, len(prompt) : end] = torch.randint(1, vocab, (end - len(prompt),), generator=g)
        mask[row, len(prompt) : end] = 1
        mask[row, len(prompt) + 2] = 0  # an environment token between two assistant turns
    ids[3, 7:9] = ids[0, 7:9]  # rows 0 and 3 also share their first two trained tokens
    mask[5] = 0  # nothing trained in the last row
    lengths = torch.tensor([end for _, end in specs])
    return ids, lengths, mask


def test_layout_shares_each_prompt_once():
    ids, lengths, mask = grouped_rows(VOCAB)
    families = shared_prefix_families(ids, lengths, mask)
    assert {(frozenset(f.rows), f.prefix) for f in families} == {(frozenset({0, 2, 3}), 7), (frozenset({1, 4}), 5)}
    packed = pack_shared_prefixes(ids, lengths, mask, multiple_of=4)
    unpadded = 7 + (12 - 7) + (15 - 7) + (10 - 7) + 5 + (9 - 5) + (14 - 5)
    assert packed.packed_tokens == unpadded + (-unpadded) % 4
    assert len(packed.targets) == int(mask[:5].sum())
    # every trained token is predicted by the packed token that holds the token before it in its row
    for src, row, col in zip(packed.source.tolist(), packed.rows.tolist(), packed.cols.tolist()):
        assert packed.input_ids[0, src] == ids[row, col - 1]
        assert packed.positions[0, src] == col - 1
    allowed = ~packed.masked[0, 0]
    assert allowed.diagonal().all()  # every token, pads included, attends at least to itself
    # a row's own tokens see its family's prefix and themselves, never another row's tokens
    segment_of = {}
    for src, row in zip(packed.source.tolist(), packed.rows.tolist()):
        if packed.positions[0, src] >= 7 or (row in (1, 4) and packed.positions[0, src] >= 5):
            segment_of.setdefault(row, []).append(src)
    for row, own in segment_of.items():
        others = [i for r, idx in segment_of.items() if r != row for i in idx]
        assert not allowed[own][:, others].any()


def test_segment_batches_allow_exactly_what_the_block_mask_allows():
    """The SDPA backend attends by segments (prompts, then continuations): each real token must get the same keys
    as its row of the dense block mask, and every packed token must come back exactly once."""
    ids, lengths, mask = grouped_rows(VOCAB)
    for families in (None, [Family((0, 3), 9), Family((1, 4), 5), Family((2,), 0)]):
        packed = pack_shared_prefixes(ids, lengths, mask, families, multiple_of=4)
        dense = ~packed.masked[0, 0]
        from_segments = torch.zeros_like(dense)
        covered = torch.zeros(packed.packed_tokens, dtype=torch.long)
        for batch in packed.segments:
            width = batch.q_index.shape[1]
            for flat, position in zip(batch.take.tolist(), batch.dest.tolist()):
                n, query = divmod(flat, width)
                assert batch.q_index[n, query] == position
                from_segments[position, batch.k_index[n][batch.allowed[n, 0, query]]] = True
                covered[position] += 1
        assert covered.tolist() == [1] * packed.packed_tokens
        assert torch.equal(from_segments, dense)


def test_families_respect_the_token_budget_and_keep_most_of_the_prefix():
    """sft-like rows: one long system prefix, then each row's own query and answer; one short unrelated row."""
    g = torch.Generator().manual_seed(1)
    system = torch.randint(1, VOCAB, (40,), generator=g)
    ids = torch.zeros(5, 60, dtype=torch.long)
    mask = torch.zeros(5, 60)
    for row in range(4):
        ids[row, :40] = system
        ids[row, 40:55] = torch.randint(1, VOCAB, (15,), generator=g)
        mask[row, 50:55] = 1
    ids[4, :20] = torch.randint(1, VOCAB, (20,), generator=g)
    mask[4, 10:20] = 1
    lengths = torch.tensor([55, 55, 55, 55, 20])
    families = shared_prefix_families(ids, lengths, mask)
    assert {(frozenset(f.rows), f.prefix) for f in families} == {(frozenset(range(4)), 40), (frozenset({4}), 0)}
    # a budget of 40 + 3 x 15 tokens: three rows share the prefix, the fourth starts its own family
    budgeted = shared_prefix_families(ids, lengths, mask, max_tokens=85)
    assert sorted(len(f.rows) for f in budgeted) == [1, 1, 3] and max(f.packed_size(lengths) for f in budgeted) <= 85
    # a prefix shorter than min_prefix is not shared
    assert all(f.prefix == 0 for f in shared_prefix_families(ids, lengths, mask, min_prefix=41))


def _unpacked_and_packed(model, ids, lengths, mask, vocab, families=None):
    from trainer.models.megatron_bridge import causal_attention_mask, packed_token_logprobs, selected_token_logprobs

    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(9)) * mask
    results = []
    for packed in (False, True):
        model.zero_grad(set_to_none=True)
        if packed:
            lp = packed_token_logprobs(model, pack_shared_prefixes(ids, lengths, mask, families), vocab)
        else:
            positions = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
            lp = selected_token_logprobs(model, ids, positions, causal_attention_mask(ids.shape[1]), mask, vocab)
        (lp * weights).sum().backward()
        results.append((lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    return results


def _assert_same(results, mask):
    (want, want_grads), (got, got_grads) = results
    assert torch.all(got[mask == 0] == 0)
    assert (got - want).abs().max() < 1e-5
    assert want_grads.keys() == got_grads.keys()
    for name, grad in want_grads.items():
        scale = grad.abs().max().clamp_min(1e-6)
        assert ((got_grads[name] - grad).abs().max() / scale) < 1e-4, name


@pytest.mark.parametrize("backend", ["sdpa", "local"])
def test_packed_rope_model_matches_unpacked_rows(tmp_path, dist_tp1, backend):
    """Qwen3 architecture (RoPE, GQA, q/k norms) with either attention backend."""
    from trainer.models.megatron_bridge import build_megatron_model

    _write_qwen3(tmp_path)
    model = build_megatron_model(tmp_path, parallel={"attention_backend": backend})
    ids, lengths, mask = grouped_rows(VOCAB)
    _assert_same(_unpacked_and_packed(model, ids, lengths, mask, VOCAB), mask)
    # a prefix that holds trained tokens (rows 0 and 3 agree on 2 of them): computed once, counted for both
    families = [Family((0, 3), 9), Family((1, 4), 5), Family((2,), 0)]
    _assert_same(_unpacked_and_packed(model, ids, lengths, mask, VOCAB, families), mask)


def test_packed_learned_position_model_matches_unpacked_rows(dist_tp1):
    """The toy GPT (learned absolute positions, Megatron's local attention): positions come from position_ids."""
    from tests.grpo.toy import build_toy_gpt

    model = build_toy_gpt()
    ids, lengths, mask = grouped_rows(32)
    _assert_same(_unpacked_and_packed(model, ids, lengths, mask, None), mask)


def test_rows_that_do_not_share_their_family_prefix_are_rejected():
    ids, lengths, mask = grouped_rows(VOCAB)
    with pytest.raises(ValueError, match="row 1 does not share"):
        pack_shared_prefixes(ids, lengths, mask, families=[Family((0, 1), 7)])
