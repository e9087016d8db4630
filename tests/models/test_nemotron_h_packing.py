"""The packing rule for hybrid models: shared-prefix packing gives a NemotronH wrong log-probs (the Mamba state
flows across the packed rows, past the attention mask), so it is refused with a message that says what to set."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_nemotron_h_bridge import VOCAB, _write_random_nemotron_h
from test_packing import grouped_rows

from trainer.distributed import init_distributed
from trainer.models.megatron_bridge import (
    build_megatron_model,
    causal_attention_mask,
    hf_arch,
    packed_token_logprobs,
    selected_token_logprobs,
)
from trainer.models.packing import can_pack_shared_prefixes, pack_shared_prefixes


@pytest.fixture(scope="module")
def hybrid_model(tmp_path_factory):
    init_distributed(tp=1, pp=1)
    path = tmp_path_factory.mktemp("nemotron_h")
    _write_random_nemotron_h(path, seed=4)
    return build_megatron_model(path, tp=1, pp=1)


def test_packing_would_be_wrong_for_the_hybrid_model(hybrid_model):
    """What the rule is for: the packed forward (block mask and all) differs from the rows' own log-probs."""
    ids, lengths, mask = grouped_rows(VOCAB)
    packed = pack_shared_prefixes(ids, lengths, mask)
    seq = ids.shape[1]
    with torch.no_grad():
        rows = selected_token_logprobs(
            hybrid_model, ids, torch.arange(seq).expand(ids.shape[0], seq), causal_attention_mask(seq), mask, VOCAB
        )
        logits = hybrid_model(packed.input_ids, packed.positions, packed.masked)[0]  # [T, V]
    packed_lp = torch.log_softmax(logits[packed.source, :VOCAB], -1).gather(-1, packed.targets[:, None])[:, 0]
    gap = (packed_lp - rows[packed.rows, packed.cols]).abs()
    # the first family's first row sees only its prompt: right; rows packed after another continuation: wrong
    assert gap.max().item() > 1e-2, gap.max()


def test_packing_is_refused_for_the_hybrid_model(hybrid_model):
    assert not can_pack_shared_prefixes(hybrid_model)
    ids, lengths, mask = grouped_rows(VOCAB)
    packed = pack_shared_prefixes(ids, lengths, mask)
    with pytest.raises(ValueError, match=r"Mamba.*pack_shared_prefixes=false"):
        packed_token_logprobs(hybrid_model, packed, VOCAB)


def test_packing_stays_on_for_attention_only_models():
    qwen = hf_arch(
        {
            "model_type": "qwen3",
            "num_hidden_layers": 1,
            "hidden_size": 8,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 8,
            "vocab_size": 8,
            "max_position_embeddings": 8,
        }
    )
    assert can_pack_shared_prefixes(SimpleNamespace(hf_arch=qwen))
    assert can_pack_shared_prefixes(SimpleNamespace(module=SimpleNamespace(hf_arch=qwen)))  # wrapped (DDP)


def test_the_policy_trains_a_hybrid_model_unpacked_though_packing_is_on(tmp_path):
    """`policy.pack_shared_prefixes` is on by default: for a hybrid model the worker trains the rows unpacked
    (the refusal above is for callers that would pack anyway) and the step equals one with packing off."""
    from trainer.parity import make_worker

    _write_random_nemotron_h(tmp_path, seed=5)
    ids, lengths, mask = grouped_rows(VOCAB)
    batch = {"input_ids": ids, "input_lengths": lengths, "loss_mask": mask, "advantages": torch.randn(len(ids))}
    results = []
    for pack in (True, False):
        worker = make_worker(tmp_path, "local", gbs=len(ids), mbs=len(ids), precision="float32")
        worker.pack_prefixes, worker.pack_min_prefix = pack, 1  # the prompts here are 5 and 7 tokens
        (step,) = worker.train(dict(batch))
        results.append((step["grad_norm"], worker.param_checksum()))
    assert results[0] == pytest.approx(results[1], rel=1e-6)
