"""On a CUDA device: bf16 Megatron-core (SDPA + fused ops) vs transformers parity, and one GRPO training step.

Runs only where CUDA is (the device machine: `python3 -m pytest tests/gpu -m gpu`); `make bench-gpu` is the full
measurement. The checks and builders are trainer/parity's. Full-width Qwen3-1.7B-shaped layers (hidden 2048,
GQA 16/8, vocab 151,936), 2 of them, 2 x 1024 tokens: the same kernels and dtypes as the benchmark in a few seconds.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from trainer.parity import GPU_SHAPE, make_hf_model

    return make_hf_model(tmp_path_factory.mktemp("hf"), dict(GPU_SHAPE, num_hidden_layers=2), torch.device("cuda"))


def test_bf16_logprob_parity_with_transformers(hf_dir):
    from trainer.parity import logprob_parity

    result = logprob_parity(hf_dir, ["sdpa", "sdpa-unfused", "local"], batch=2, seq=1024, device=torch.device("cuda"))
    assert result["passed"], result
    assert result["ref_logit_std"] > 1.0, "near-uniform logits would make the comparison meaningless"
    # the fused path is not worse than the unfused one on the same weights
    assert result["megatron_sdpa_bf16"]["mean_abs"] <= 1.2 * result["megatron_sdpa-unfused_bf16"]["mean_abs"] + 1e-3


def test_grpo_training_step_changes_weights_and_keeps_logprobs_consistent(hf_dir):
    from trainer.parity import make_worker, rollout_batch

    worker = make_worker(hf_dir, "sdpa", gbs=4, mbs=2)
    batch = rollout_batch(4, 1024, 151936, prompt=128)
    before_lp = worker.get_logprobs(batch)
    batch["prev_logprobs"] = before_lp
    before = worker.param_checksum()
    (step,) = worker.train(batch)
    assert step["global_valid_tokens"] == 4 * (1024 - 128)
    assert all(torch.isfinite(torch.tensor(p["loss"])) for p in step["parts"])
    assert step["grad_norm"] > 0 and torch.isfinite(torch.tensor(step["grad_norm"]))
    assert worker.param_checksum() != before
    # on-policy before the update: the training forward's ratio is 1 up to bf16 noise
    parts = step["parts"]
    ratio = sum(p["probs_ratio_sum"] for p in parts) / step["global_valid_tokens"]
    assert abs(ratio - 1) < 0.05, ratio
    after_lp = worker.get_logprobs(batch)
    assert after_lp.shape == before_lp.shape and not torch.equal(after_lp, before_lp)
