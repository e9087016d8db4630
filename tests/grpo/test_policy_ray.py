"""The policy as Ray actors (the production path): data parallelism over 2 CPU ranks (gloo) gives the same
update as 1 rank, and vLLM generates with the policy's weights after a refit (log-probs agree)."""
import pytest
import torch

from pipeline.config import load_config
from pipeline.grpo.toy import build_toy_gpt, export_toy_state_dict

from conftest import random_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    import ray
    from pipeline.distributed import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def _cfg(tmp_path, *extra):
    return load_config("tiny_cpu", [f"run.root={tmp_path}", "policy.train_global_batch_size=8",
                                    "policy.train_micro_batch_size=2", "policy.logprob_batch_size=4",
                                    "policy.megatron_cfg.optimizer.lr=0.01", *extra])


def test_two_data_parallel_ranks_match_one(ray_session, tmp_path):
    from pipeline.grpo.policy import PolicyGroup

    batch = random_batch(n=8, seed=11)
    results = {}
    for world in (1, 2):
        group = PolicyGroup(_cfg(tmp_path), build_toy_gpt, export_toy_state_dict, total_steps=4, world_size=world)
        assert [info["dp_rank"] for info in group.setup_info] == list(range(world))
        prev = group.get_logprobs(batch)
        metrics = group.train(dict(batch, prev_logprobs=prev))
        results[world] = (prev, metrics, group.param_checksums(), group.get_logprobs(batch))
        group.shutdown()
    (prev1, m1, sums1, after1), (prev2, m2, sums2, after2) = results[1], results[2]
    assert torch.allclose(prev1, prev2, atol=1e-6)
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5)
    assert sums2[0] == pytest.approx(sums2[1], rel=1e-12)  # the replicas stay identical
    assert torch.allclose(after1, after2, atol=1e-4)
    assert not torch.allclose(after1, prev1, atol=1e-4)  # and the update did something
