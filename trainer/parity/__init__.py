"""Numerical parity checks of the policy: correctness lives here, speed in bench/.

    builders.py        the random Qwen3-shaped HF model, the `PolicyWorker` over it, rollout-shaped batches
    megatron_vs_hf.py  Megatron-core token log-probs against transformers (fp32 and the bf16 autocast recipe)
    tp_dp.py           one GRPO step with TP=2 and DP=2 against one rank (log-probs, loss, gradient, update)

Each module's docstring says what is compared, at what tolerance and why. Tests (tests/test_parity.py, tests/gpu/)
and the benchmarks (bench/gpu_bench.py, bench/multi_gpu_bench.py) call them. torch is imported here; transformers
and Megatron-core inside the functions. Not imported on a login node.
"""

from __future__ import annotations

from trainer.parity.builders import GPU_SHAPE, TINY_SHAPE, free, make_hf_model, make_worker, rollout_batch
from trainer.parity.megatron_vs_hf import hf_token_logprobs, logprob_parity
from trainer.parity.tp_dp import checks as tp_dp_checks
from trainer.parity.tp_dp import run_parity, tp_dp_parity

__all__ = [
    "GPU_SHAPE",
    "TINY_SHAPE",
    "free",
    "hf_token_logprobs",
    "logprob_parity",
    "make_hf_model",
    "make_worker",
    "rollout_batch",
    "run_parity",
    "tp_dp_checks",
    "tp_dp_parity",
]
