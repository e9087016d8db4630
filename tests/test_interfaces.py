"""trainer.interfaces: every implementation satisfies its Protocol, SamplingParams carries the config's values
to the backends (and splits across engines without changing a request's seed), and the module stays light."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from infra.config import load_config
from tests.protocol_check import protocol_problems
from trainer.interfaces import Components, Generation, Policy, RolloutFn, RolloutRecord, SamplingParams

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_policies_satisfy_the_policy_protocol():
    from trainer.policy.worker import InProcessPolicy, PolicyGroup

    for cls in (PolicyGroup, InProcessPolicy):
        assert protocol_problems(cls, Policy) == [], cls


def test_generation_backends_and_fakes_satisfy_the_generation_protocol():
    from tests.grpo.toy import ToySampler
    from trainer.expert import ExpertGeneration
    from trainer.generation.torch_backend import TorchGeneration
    from trainer.generation.vllm_worker import GenerationGroup

    for cls in (GenerationGroup, TorchGeneration, ExpertGeneration, ToySampler):
        assert protocol_problems(cls, Generation) == [], cls
    assert isinstance(ExpertGeneration(None, [], 0), Generation)


def test_the_check_sees_a_mismatch():
    class Renamed:
        def generate(self, prompts, sampling):
            return []

        def update_weights(self, blob, strict):
            return {}

    problems = protocol_problems(Renamed, Generation)
    assert "generate: no parameter 'prompt_token_ids'" in problems
    assert "update_weights: extra parameter 'strict' without a default" in problems
    assert "shutdown: missing" in problems


def test_rollout_functions_satisfy_the_rollout_protocol():
    from tests.grpo.toy import ToyRollout, make_toy_rollout_fn
    from trainer.rollout import Rollout, collect_rollouts

    for fn in (collect_rollouts, make_toy_rollout_fn()):
        assert protocol_problems(fn, RolloutFn) == [], fn
    record_fields = set(RolloutRecord.__annotations__)
    assert record_fields <= {f.name for f in dataclasses.fields(Rollout)}
    assert isinstance(ToyRollout({"id": 1}, [1, 2], [3], [-0.5], 1.0), RolloutRecord)


def test_components_hold_the_collaborators_and_shut_them_down_in_order():
    stopped = []

    class Stub:
        def __init__(self, name):
            self.name = name

        def shutdown(self):
            stopped.append(self.name)

    components = Components(policy=Stub("policy"), generation=Stub("generation"), rollout_fn=lambda *a: [])
    assert components.tokenizer is None and components.expert_fn is None
    components.shutdown()
    assert stopped == ["generation", "policy"]


def test_sampling_params_from_config_round_trips_the_config():
    cfg = load_config(
        "tiny_cpu",
        [
            "policy.generation.temperature=0.7",
            "policy.generation.top_p=0.9",
            "policy.generation.top_k=20",
            "policy.generation.max_new_tokens=33",
        ],
    )
    sampling = SamplingParams.from_config(cfg, stop_token_ids=[5, 6], seed=3)
    gen = cfg.policy.generation
    assert (
        (sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.top_k)
        == (gen.max_new_tokens, gen.temperature, gen.top_p, gen.top_k)
        == (33, 0.7, 0.9, 20)
    )
    assert sampling.stop_token_ids == (5, 6) and sampling.seed == 3 and sampling.seeds is None
    assert sampling.top_k_or_zero == 20
    default = SamplingParams.from_config(load_config("tiny_cpu"))
    assert default.top_k is None and default.top_k_or_zero == 0
    assert default.max_tokens == load_config("tiny_cpu").policy.generation.max_new_tokens
    # builtins only: it pickles to the vLLM actors and back unchanged
    assert pickle.loads(pickle.dumps(sampling)) == sampling
    assert type(sampling.max_tokens) is int and type(sampling.temperature) is float


def test_sampling_params_per_prompt_seeds_and_limits():
    base = SamplingParams(max_tokens=8, seed=10)
    assert base.seeds_for(3) == [10, 11, 12] and base.max_tokens_for(3) == [8, 8, 8]
    assert SamplingParams().seeds_for(2) == [None, None]
    listed = base.replace(max_tokens=[4, 5, 6], seeds=[7, 8, 9])
    assert listed.max_tokens == (4, 5, 6) and listed.seeds_for(3) == [7, 8, 9]  # seeds win over seed
    with pytest.raises(ValueError, match="seeds"):
        listed.seeds_for(2)
    with pytest.raises(ValueError, match="max_tokens"):
        listed.max_tokens_for(4)
    # a group's chunks carry the seeds and limits of the prompts' global positions
    whole = base.per_prompt(5)
    assert whole.seed is None and whole.seeds == (10, 11, 12, 13, 14) and whole.max_tokens == (8,) * 5
    chunks = [whole.prompts(0, 3), whole.prompts(3, 5)]
    assert [c.seeds_for(n) for c, n in zip(chunks, (3, 2))] == [[10, 11, 12], [13, 14]]
    assert chunks[1].temperature == base.temperature and chunks[1].max_tokens == (8, 8)
    with pytest.raises(ValueError):
        base.prompts(0, 1)


def test_interfaces_import_nothing_heavy():
    code = "import sys, trainer.interfaces; print(' '.join(m for m in ('torch', 'ray', 'vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
