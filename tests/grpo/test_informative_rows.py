"""Training only on rollouts with a non-zero advantage gives the whole batch's loss and gradient (KL off)."""

import pytest
import torch
from grpo_testlib import make_worker, random_batch

from trainer.batch import informative_rows


def _loss_and_grads(worker, batch):
    """Loss value and clipped gradient of one GRPO optimizer step (the worker's own train path)."""
    batch = dict(batch, prev_logprobs=worker.get_logprobs(batch))
    result = worker.train(batch)[0]
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in worker.model.parameters()]
    return sum(part["loss"] for part in result["parts"]), result["grad_norm"], grads


def test_subset_has_the_same_loss_and_gradient_as_the_whole_batch():
    batch = random_batch(n=8, seed=5)
    batch["advantages"] = torch.tensor([0.0, 1.2, 0.0, -0.7, 0.0, 0.0, 0.4, -0.9])
    subset = informative_rows(batch)
    assert subset["input_ids"].shape[0] == 4
    assert subset["input_ids"].shape[1] == int(subset["input_lengths"].max())  # trimmed to its longest row
    full_loss, full_norm, full_grads = _loss_and_grads(make_worker(), batch)
    sub_loss, sub_norm, sub_grads = _loss_and_grads(make_worker(), subset)
    assert sub_loss == pytest.approx(full_loss, rel=1e-5, abs=1e-7)
    assert sub_norm == pytest.approx(full_norm, rel=1e-5)
    for full, sub in zip(full_grads, sub_grads):
        assert torch.allclose(full, sub, rtol=1e-4, atol=1e-7)


def test_no_informative_row_keeps_the_shortest_trainable_row():
    batch = random_batch(n=6, seed=2)
    batch["advantages"] = torch.zeros(6)
    subset = informative_rows(batch)
    tokens = batch["loss_mask"].sum(dim=1)
    assert subset["input_ids"].shape[0] == 1
    assert float(subset["loss_mask"].sum()) == float(tokens.min())
    assert float(subset["advantages"].abs().sum()) == 0.0


def test_all_informative_returns_the_batch_unchanged():
    batch = random_batch(n=4, seed=1)
    batch["advantages"] = torch.tensor([0.5, -0.5, 1.0, -1.0])
    assert informative_rows(batch) is batch


def test_on_policy_batch_without_prev_logprobs_trains_like_one_with_them():
    """A one-step batch given without prev_logprobs (sft, and GRPO steps that fit one optimizer step) gets the
    same loss and gradient as with a separate get_logprobs pass, and reports the tokens' mean log-prob."""
    batch = random_batch(n=8, seed=7)
    with_prev, norm_with, grads_with = _loss_and_grads(make_worker(), batch)
    worker = make_worker()
    before = worker.get_logprobs(batch)
    result = worker.train(dict(batch))[0]
    assert sum(p["loss"] for p in result["parts"]) == pytest.approx(with_prev, rel=1e-5, abs=1e-7)
    assert result["grad_norm"] == pytest.approx(norm_with, rel=1e-5)
    for full, own in zip(grads_with, [p.grad for p in worker.model.parameters()]):
        assert torch.allclose(full, own, rtol=1e-4, atol=1e-7)
    from trainer.grpo.loss import reduce_loss_stats

    mean_lp = reduce_loss_stats(result["parts"], result["global_valid_tokens"])["logprob_mean"]
    expected = float((before * batch["loss_mask"]).sum() / batch["loss_mask"].sum())
    assert mean_lp == pytest.approx(expected, rel=1e-5)


def test_several_optimizer_steps_need_prev_logprobs():
    worker = make_worker({"train_global_batch_size": 4})
    with pytest.raises(ValueError, match="prev_logprobs"):
        worker.train(random_batch(n=8))
