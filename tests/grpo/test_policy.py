"""The Megatron-core policy worker on CPU (gloo, world 1): log-probs, a train step, micro-batch invariance,
LR schedule, save/load."""

import math

import pytest
import torch
from grpo_testlib import POLICY_CFG, make_worker, random_batch


@pytest.fixture
def worker():
    return make_worker()


@pytest.mark.parametrize("only_where_loss", [False, True])
def test_logprobs_match_manual_softmax_and_ignore_padding(only_where_loss):
    worker = make_worker({"logits_only_where_loss": only_where_loss})
    batch = random_batch()
    lp = worker.get_logprobs(batch)
    assert lp.shape == batch["input_ids"].shape
    assert torch.all(lp[:, 0] == 0)
    # recompute row 0 alone at its own length with a plain log_softmax of the model's logits
    L = int(batch["input_lengths"][0])
    ids = batch["input_ids"][:1, :L]
    with torch.no_grad():
        mask = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)[None, None]
        logits = worker.model(ids, torch.arange(L)[None], mask)
    manual = torch.log_softmax(logits.float(), -1)[0, :-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
    if only_where_loss:  # computed at the loss-mask positions only, 0 elsewhere
        manual = manual * batch["loss_mask"][0, 1:L]
        assert torch.all(lp[batch["loss_mask"] == 0] == 0)
    assert torch.allclose(lp[0, 1:L], manual, atol=1e-5)
    assert torch.all(lp <= 0)


def test_logits_only_where_loss_gives_the_same_update():
    """The output layer at loss positions only is an optimisation: same loss, gradient norm and weights."""
    batch = random_batch(seed=5)
    full, selected = make_worker({"logits_only_where_loss": False}), make_worker({"logits_only_where_loss": True})
    r_full, r_sel = full.train(dict(batch)), selected.train(dict(batch))
    assert r_sel[0]["grad_norm"] == pytest.approx(r_full[0]["grad_norm"], rel=1e-5)
    assert sum(p["loss"] for p in r_sel[0]["parts"]) == pytest.approx(
        sum(p["loss"] for p in r_full[0]["parts"]), rel=1e-5
    )
    for (name, a), (_, b) in zip(full.model.named_parameters(), selected.model.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-8), name  # gradients: see the test below


@pytest.mark.parametrize("mbs", [1, 4])
def test_packed_shared_prompts_give_the_same_update(mbs):
    """Groups of 4 rollouts sharing a prompt, packed (prompt computed once) or not: same loss and gradients."""
    batch = random_batch(seed=6, group=4)
    plain = make_worker({"pack_shared_prefixes": False, "train_micro_batch_size": mbs})
    packed = make_worker({"pack_shared_prefixes": True, "train_micro_batch_size": mbs, "pack_min_shared_tokens": 3})
    assert all(p is None for _, _, p in make_worker()._train_microbatches(slice(0, 8), mbs, batch))  # 3 < 32
    micro = list(packed._train_microbatches(slice(0, 8), mbs, batch))
    assert all(p is not None for _, _, p in micro) and sorted(torch.cat([i for i, _, _ in micro]).tolist()) == list(
        range(8)
    )
    assert sum(p.packed_tokens for _, _, p in micro) < int(batch["input_lengths"].sum())
    r_plain, r_packed = plain.train(dict(batch)), packed.train(dict(batch))
    assert r_packed[0]["grad_norm"] == pytest.approx(r_plain[0]["grad_norm"], rel=1e-5)
    assert sum(p["loss"] for p in r_packed[0]["parts"]) == pytest.approx(
        sum(p["loss"] for p in r_plain[0]["parts"]), rel=1e-5
    )
    for (name, a), (_, b) in zip(plain.model.named_parameters(), packed.model.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-8), name


def test_packed_logprobs_equal_the_unpacked_ones():
    """get_logprobs packs rows sharing a prefix too (informative prompt selection scores whole pools with it)."""
    batch = random_batch(seed=8, group=4)
    plain = make_worker({"pack_shared_prefixes": False})
    packed = make_worker({"pack_shared_prefixes": True, "pack_min_shared_tokens": 3})
    assert any(p is not None for _, _, p in packed._train_microbatches(slice(0, 8), 4, batch))
    a, b = plain.get_logprobs(batch), packed.get_logprobs(batch)
    trained = batch["loss_mask"] != 0
    assert torch.allclose(a[trained], b[trained], atol=1e-5) and (a[~trained] == 0).all() and (b[~trained] == 0).all()


def _trained_state(mbs, batch):
    w = make_worker({"train_micro_batch_size": mbs})
    batch = dict(batch, prev_logprobs=w.get_logprobs(batch))
    before = w.param_checksum()
    res = w.train(batch)
    return w, res, before


def test_train_step_changes_weights_with_finite_metrics():
    batch = random_batch()
    w, res, before = _trained_state(2, batch)
    assert len(res) == 1  # 8 rollouts, global batch 8: one optimizer step
    step = res[0]
    assert math.isfinite(step["grad_norm"]) and step["grad_norm"] > 0
    assert step["lr"] == pytest.approx(1e-2)
    assert all(math.isfinite(p["loss"]) for p in step["parts"])
    assert w.param_checksum() != pytest.approx(before, rel=1e-9)
    # on-policy first step: the ratio is exactly 1 and nothing is clipped
    assert all(p["probs_ratio_clamped"] == 0 for p in step["parts"])


def test_microbatch_size_does_not_change_the_update():
    batch = random_batch(seed=3)
    w1, r1, _ = _trained_state(1, batch)
    w4, r4, _ = _trained_state(4, batch)
    assert r1[0]["grad_norm"] == pytest.approx(r4[0]["grad_norm"], rel=1e-5)
    assert sum(p["loss"] for p in r1[0]["parts"]) == pytest.approx(sum(p["loss"] for p in r4[0]["parts"]), rel=1e-5)
    # compare the (clipped) gradients the optimizer used; Adam's first step ~ lr * sign(g) would amplify
    # float noise in near-zero gradients, so the weights themselves are not the right thing to compare
    for (n, a), (_, b) in zip(w1.model.named_parameters(), w4.model.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-8), n


def test_two_optimizer_steps_when_batch_exceeds_global_batch():
    batch = random_batch(n=8)
    w = make_worker({"train_global_batch_size": 4})
    res = w.train(dict(batch, prev_logprobs=w.get_logprobs(batch)))
    assert len(res) == 2
    assert res[0]["global_valid_tokens"] == float(batch["loss_mask"][:4].sum())


def test_scheduler_warmup_then_cosine_to_min_lr():
    w = make_worker(
        {
            "megatron_cfg": {
                **POLICY_CFG["megatron_cfg"],
                "scheduler": {"lr_decay_style": "cosine", "lr_warmup_iters": 2, "lr_decay_iters": None},
            }
        },
        total_steps=6,
    )
    lrs = []
    for _ in range(8):
        lrs.append(w.current_lr())
        w.scheduler.step(1)
    lr, min_lr = 1e-2, 1e-3
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(lr / 2) and lrs[2] == pytest.approx(lr)
    # cosine from step 2 to 6: halfway (step 4) is the midpoint of lr and min_lr
    assert lrs[4] == pytest.approx(min_lr + 0.5 * (lr - min_lr))
    assert lrs[6] == pytest.approx(min_lr) and lrs[7] == pytest.approx(min_lr)


def test_constant_schedule():
    cfg = POLICY_CFG["megatron_cfg"]
    w = make_worker(
        {
            "megatron_cfg": {
                **cfg,
                "scheduler": {"lr_decay_style": "constant", "lr_warmup_iters": 0, "lr_decay_iters": None},
            }
        }
    )
    for _ in range(5):
        w.scheduler.step(1)
    assert w.current_lr() == pytest.approx(1e-2)


def test_save_load_roundtrip_continues_identically(tmp_path):
    batch = random_batch(seed=5)
    a = make_worker()
    a.train(dict(batch, prev_logprobs=a.get_logprobs(batch)))
    a.save(str(tmp_path / "policy"))
    b = make_worker(seed=99)  # different initial weights: load must overwrite them
    b.load(str(tmp_path / "policy"))
    assert b.current_lr() == pytest.approx(a.current_lr())
    batch2 = random_batch(seed=6)
    ra = a.train(dict(batch2, prev_logprobs=a.get_logprobs(batch2)))
    rb = b.train(dict(batch2, prev_logprobs=b.get_logprobs(batch2)))
    assert ra[0]["grad_norm"] == rb[0]["grad_norm"]
    assert a.param_checksum() == b.param_checksum()


def test_reference_logprobs_stay_at_initial_policy():
    batch = random_batch(seed=7)
    w = make_worker(loss_overrides={"reference_policy_kl_penalty": 0.1})
    initial = w.get_logprobs(batch)
    b = dict(batch, prev_logprobs=initial, reference_logprobs=initial)
    w.train(b)
    assert not torch.allclose(w.get_logprobs(batch), initial)
    assert torch.allclose(w.get_logprobs(batch, use_reference=True), initial)
    assert not torch.allclose(w.get_logprobs(batch), initial)  # swapped back


def test_export_blob_roundtrips_weights(worker):
    from safetensors.torch import load

    tensors = load(worker.export_weights_blob("float32"))
    for name, value in worker.model.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(tensors[name], value)


def test_sequence_level_weights_give_the_gradient_of_the_mean_of_rollout_means():
    """token_level_loss=false: the token-level loss with reweighted advantages has the sequence-level gradient."""
    from trainer.grpo.advantage import sequence_level_weights

    batch = random_batch(seed=9)
    weights = sequence_level_weights(batch["loss_mask"], rows_per_step=8)
    trained = make_worker({"max_grad_norm": None})  # compare unclipped gradients
    trained.train(dict(batch, advantages=batch["advantages"] * weights))

    manual = make_worker()
    mask = batch["loss_mask"]
    logprobs = manual._token_logprobs(batch["input_ids"], mask)
    rollout_means = (logprobs * mask).sum(1) / mask.sum(1)  # on-policy: d ratio = d log-prob
    (-(batch["advantages"] * rollout_means).mean()).backward()
    for (name, a), (_, b) in zip(trained.model.named_parameters(), manual.model.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name
    plain = make_worker({"max_grad_norm": None})
    plain.train(dict(batch))
    assert not all(
        torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-6)  # the token-level gradient differs
        for a, b in zip(plain.model.parameters(), manual.model.parameters())
    )
