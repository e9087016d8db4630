"""The overlapped data-parallel gradient all-reduce (`trainer/policy/grad_reduce.py`, `overlap_grad_reduce`) on CPU:
2 gloo ranks, the same two optimizer steps with the all-reduce after the backward (off), overlapped in one bucket
and overlapped with a bucket per parameter. The ranks get different numbers of micro-batches (5 and 4 rows of each
step at micro-batch 2), so each arms its own last backward. The two-rank sum a + b is the same in any bucketing:
gradients and weights must agree bit for bit, and the hooks must have launched buckets during the backward."""

import copy
import functools
import os

import pytest
import torch
from grpo_testlib import LOSS_CFG, POLICY_CFG, random_batch

MODES = {"off": (False, 40), "on": (True, 40), "on_tiny_buckets": (True, 1e-6)}


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    from tests.grpo.toy import build_toy_gpt, export_toy_state_dict
    from trainer.distributed import destroy_distributed
    from trainer.policy.optim import build_optimizer, build_scheduler
    from trainer.policy.worker import PolicyWorker

    torch.set_num_threads(1)
    cfg = copy.deepcopy(POLICY_CFG)
    cfg.update(train_global_batch_size=9, train_micro_batch_size=2)
    worker = PolicyWorker(
        cfg,
        LOSS_CFG,
        functools.partial(build_toy_gpt, seed=3),
        export_toy_state_dict,
        total_steps=10,
        rank=rank,
        world_size=world,
    )
    worker.setup("127.0.0.1", port)
    assert worker.dp == 2 and not worker.overlap_grad_reduce()  # CPU default: off
    initial = copy.deepcopy(worker.model.state_dict())
    batch = random_batch(n=18, seed=4)
    batch["prev_logprobs"] = torch.cat([s for s in _gather(worker.get_logprobs(batch)) if s is not None])
    results = {}
    for name, (on, bucket_mb) in MODES.items():
        worker.model.load_state_dict(initial)
        mcfg = worker.policy_cfg["megatron_cfg"]
        mcfg.update(overlap_grad_reduce=on, grad_reduce_bucket_mb=bucket_mb)
        worker.optimizer = build_optimizer(worker.model, mcfg["optimizer"])
        worker.scheduler = build_scheduler(worker.optimizer, mcfg["optimizer"], mcfg["scheduler"], 10)
        steps = worker.train(batch)
        reducer = worker._reducer if on else None
        results[name] = {
            "grad_norms": [s["grad_norm"] for s in steps],
            "grads": {n: p.grad.detach().clone() for n, p in worker.model.named_parameters()},
            "params": {n: p.detach().clone() for n, p in worker.model.named_parameters()},
            "buckets": reducer.num_buckets if reducer else 0,
            "overlapped": reducer.last_overlapped if reducer else 0,
            "num_params": sum(1 for _ in worker.model.parameters()),
        }
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    destroy_distributed()


def _gather(obj) -> list:
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@pytest.mark.slow
def test_overlapped_allreduce_matches_allreduce_after_backward(tmp_path):
    import torch.multiprocessing as mp

    from trainer.distributed import free_port

    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for res in ranks:
        ref = res["off"]
        for name in ("on", "on_tiny_buckets"):
            assert res[name]["grad_norms"] == ref["grad_norms"], name
            for key in ("grads", "params"):
                for p, t in ref[key].items():
                    assert torch.equal(res[name][key][p], t), (name, key, p)
        assert res["on"]["buckets"] == 1  # the toy model fits one 40 MB bucket
        assert res["on_tiny_buckets"]["buckets"] == res["on_tiny_buckets"]["num_params"]
        # the hooks launched buckets during the last backward (the embedding's gradient comes last: in finish)
        assert res["on"]["overlapped"] == 1
        assert 0 < res["on_tiny_buckets"]["overlapped"] <= res["on_tiny_buckets"]["buckets"]
    # the replicas agree, and the two steps moved the weights
    for p, t in ranks[0]["on"]["params"].items():
        assert torch.equal(ranks[1]["on"]["params"][p], t), p
    assert len(ranks[0]["off"]["grad_norms"]) == 2
