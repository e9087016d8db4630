"""On a CUDA device: the policy's optimizer offload between training steps (colocated with vLLM engines).

Full-width Qwen3-1.7B-shaped layers, 2 of them (0.5 B parameters, most in the 151,936-token embedding and output
layers): Adam's moments are 4 GB, enough to see on the allocator. Runs where CUDA is: `pytest tests/gpu -m gpu`.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_offload_moves_adam_state_to_the_host_and_back_unchanged(tmp_path):
    from trainer.parity import GPU_SHAPE, make_hf_model, make_worker, rollout_batch

    hf_dir = make_hf_model(tmp_path, dict(GPU_SHAPE, num_hidden_layers=2), torch.device("cuda"))
    worker = make_worker(hf_dir, "sdpa", gbs=4, mbs=2)
    batch = rollout_batch(4, 512, 151936, prompt=64)
    worker.train(batch)
    torch.cuda.synchronize()
    full = torch.cuda.memory_allocated()
    before = {
        (id(state), key): value.to("cpu", copy=True)  # a copy on the GPU would hide what the offload frees
        for state in worker.optimizer.state.values()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }
    devices = {
        (id(state), key): value.device.type
        for state in worker.optimizer.state.values()
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }
    moved = worker.offload_optimizer()
    torch.cuda.synchronize()
    offloaded = torch.cuda.memory_allocated()
    num_params = sum(p.numel() for p in worker.model.parameters())
    on_gpu = sum(before[key].numel() * before[key].element_size() for key, dev in devices.items() if dev == "cuda")
    assert moved == on_gpu >= 8 * num_params  # exp_avg and exp_avg_sq in fp32 (+ step counters if kept on the GPU)
    assert full - offloaded >= moved  # the moments and the gradients left the GPU
    assert all(
        value.device.type == "cpu"
        for state in worker.optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )
    worker.restore_optimizer()
    for state in worker.optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                assert value.device.type == devices[(id(state), key)]
                assert torch.equal(value.cpu(), before[(id(state), key)].cpu())
    # between steps, as a colocated run does it: the next step trains with the moments restored
    worker.offload_between_steps = True
    checksum = worker.param_checksum()
    (step,) = worker.train(batch)
    assert torch.isfinite(torch.tensor(step["grad_norm"])) and worker.param_checksum() != checksum
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= offloaded + 64 * 2**20


def test_a_step_without_offload_leaves_only_weights_and_adam_state_reserved(tmp_path):
    """The placement plan counts 16 bytes a parameter for a colocated policy while its engine generates (offload
    off): the step's activations and gradients must not stay in the allocator's cache, or the engine cannot wake."""
    from trainer.parity import GPU_SHAPE, make_hf_model, make_worker, rollout_batch

    hf_dir = make_hf_model(tmp_path, dict(GPU_SHAPE, num_hidden_layers=2), torch.device("cuda"))
    worker = make_worker(hf_dir, "sdpa", gbs=4, mbs=4)
    assert not worker.offload_between_steps
    worker.train(rollout_batch(4, 2048, 151936, prompt=64))
    torch.cuda.synchronize()
    num_params = sum(p.numel() for p in worker.model.parameters())
    assert all(p.grad is None for p in worker.model.parameters())
    # fp32 weights + two fp32 Adam moments (12 bytes a parameter), a little slack for small buffers
    stats = torch.cuda.memory_stats()
    seen = {
        "reserved": torch.cuda.memory_reserved(),
        "allocated": torch.cuda.memory_allocated(),
        "inactive_split": stats.get("inactive_split_bytes.all.current"),
        "segments": stats.get("segment.all.current"),
        "num_params": num_params,
    }
    assert torch.cuda.memory_reserved() <= 12 * num_params * 1.1 + 2**30, seen
