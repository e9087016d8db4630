"""Shared fixtures: one tiny model per session (tokenizer trained on env_sim text), one vLLM engine per module."""

from __future__ import annotations

import pytest
from tiny_fixtures import TEST_TINY, tiny_cfg


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from trainer.models.hub import resolve_model

    return resolve_model("tiny-qwen3", tmp_path_factory.mktemp("models"), tiny_cfg=TEST_TINY, seed=1)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def vllm_group(tiny_model_dir):
    """One vLLM engine (Ray actor) per test module; its start time is reported by the tests. Not per session:
    an idle engine would hold a Ray CPU (and its memory) while later modules start their own actors."""
    import ray

    from trainer.distributed import init_ray
    from trainer.generation.vllm_worker import GenerationGroup

    init_ray(num_cpus=2)
    group = GenerationGroup(tiny_cfg(), str(tiny_model_dir), num_engines=1)
    yield group
    group.shutdown()
    ray.shutdown()
