"""The GRPO loop on the toy Megatron GPT with an in-process policy and toy sampler (no Ray, no vLLM):
metrics, refit, validation, checkpoints, preemption, and exact resume."""

import json
import time

import pytest
import torch
from grpo_testlib import toy_cfg

from infra import signals
from tests.grpo.toy import ToySampler, build_toy_gpt, export_toy_state_dict, make_toy_rollout_fn, toy_rows
from trainer.batch import rollouts_to_batch
from trainer.checkpoint import CheckpointManager
from trainer.grpo.loop import GRPOTrainer, PromptLoader, step_seed, total_training_steps
from trainer.interfaces import Components
from trainer.policy.worker import InProcessPolicy

NON_DETERMINISTIC = ("timing/", "performance:", "refit:")


def make_trainer(cfg, train_rows=None, val_rows=None):
    train_rows = train_rows or toy_rows(12, seed=0)
    val_rows = val_rows or toy_rows(6, seed=1)
    policy = InProcessPolicy(cfg, build_toy_gpt, export_toy_state_dict, total_training_steps(cfg, len(train_rows)))
    sampler = ToySampler()
    components = Components(policy=policy, generation=sampler, rollout_fn=make_toy_rollout_fn(max_new_tokens=4))
    trainer = GRPOTrainer(cfg, train_rows, val_rows, components, refit_dtype="float32", echo=False)
    return trainer, sampler


def deterministic(rows):
    return [{k: v for k, v in r.items() if not k.startswith(NON_DETERMINISTIC)} for r in rows]


@pytest.fixture(autouse=True)
def _clear_flag():
    signals.clear()
    yield
    signals.clear()


def test_loader_epochs_and_state():
    rows = [{"id": i} for i in range(5)]
    a = PromptLoader(rows, 2, seed=3)
    seen = [[r["id"] for r in a.next_batch()] for _ in range(3)]
    assert sorted(sum(seen, [])) == list(range(5)) and len(seen[-1]) == 1  # one epoch, last batch partial
    state = a.state_dict()
    b = PromptLoader(rows, 2, seed=3)
    b.load_state_dict(state)
    assert [r["id"] for r in a.next_batch()] == [r["id"] for r in b.next_batch()]
    assert a.epoch == 1
    with pytest.raises(ValueError, match="training rows"):
        PromptLoader(rows[:4], 2, 3).load_state_dict(state)
    assert step_seed(42, 3) == step_seed(42, 3) != step_seed(42, 4)


def test_batch_assembly_validates_lengths():
    class R:
        row_id, token_ids, loss_mask, generation_logprobs = 7, [1, 2, 3], [0, 1], [0.0, 0.0, 0.0]

    with pytest.raises(ValueError, match="row 7"):
        rollouts_to_batch([R()], torch.zeros(1))


def test_training_run_logs_refits_validates_and_checkpoints(tmp_path):
    cfg = toy_cfg(tmp_path)
    trainer, sampler = make_trainer(cfg)
    result = trainer.fit()
    assert result.status == "completed" and result.step == 6
    rows = trainer.metrics.read()
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    for r in rows[1:]:
        for key in (
            "train:reward_mean",
            "train:accuracy",
            "train:advantage_mean",
            "train:loss",
            "grad_norm",
            "performance:samples_per_sec",
            "performance:generation_tokens_per_sec",
            "refit:seconds",
            "timing/train/generation",
            "timing/train/policy_training",
            "train:token_mult_prob_error",
        ):
            assert key in r and r[key] == r[key], key  # present and not NaN
        assert r["grad_norm"] > 0
        # the sampler and the policy agree: generation log-probs equal the policy's (fp32 refit)
        assert r["train:token_mult_prob_error"] == pytest.approx(1.0, abs=1e-4)
    assert [r["step"] for r in rows if "val:accuracy" in r] == [0, 2, 4, 6]
    assert sampler.refits == 6
    # refit really carried the trained weights into generation
    sampler_sd = sampler.model.state_dict()
    for name, value in trainer.policy.worker.model.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(sampler_sd[name], value), name
    assert (tmp_path / "train" / "reward_accuracy.png").exists()
    mgr = trainer.checkpoints
    kept = [s for s, _ in mgr.checkpoints()]
    assert 6 in kept and len(kept) <= 3
    info = CheckpointManager.training_info(mgr.latest())
    assert info["current_step"] == 6 and info["consumed_samples"] == 24 and "val:accuracy" in info
    for name in ("config.yaml", "train_dataloader.json", "rng_state.pt", "policy/model_tp00_pp00.pt"):
        assert (mgr.latest() / name).exists(), name


def test_preempt_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    straight_cfg = toy_cfg(tmp_path / "a")
    straight, _ = make_trainer(straight_cfg)
    straight.fit()
    expected = deterministic(straight.metrics.read())

    cfg = toy_cfg(tmp_path / "b", "checkpointing.save_period=100")
    first, _ = make_trainer(cfg)
    original_train = first.policy.train

    def train_then_flag(batch):
        out = original_train(batch)
        if first.step == 3:
            signals.request_preemption("test")
        return out

    first.policy.train = train_then_flag
    result = first.fit()
    assert result.status == "preempted" and result.step == 3
    assert CheckpointManager.training_info(result.checkpoint)["current_step"] == 3
    # simulate the killed run having logged a step past its checkpoint: resume must drop it
    with open(tmp_path / "b" / "train" / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 4, "train:loss": 123.0}) + "\n")
    signals.clear()

    second, sampler = make_trainer(cfg)  # fresh process state: initial weights, new loader
    assert second.step == 3 and second.resumed_from.name == "step_3"
    assert sampler.refits == 1  # engines refit with the checkpoint's weights before generating
    second.fit()
    assert deterministic(second.metrics.read()) == expected


def test_time_budget_ends_the_job_with_a_validated_checkpoint_and_resume_goes_on(tmp_path):
    cfg = toy_cfg(tmp_path, "grpo.max_train_minutes=1", "checkpointing.save_period=100")
    trainer, _ = make_trainer(cfg)
    ticks = iter(range(0, 10_000, 10))
    trainer.clock = lambda: float(next(ticks))  # readings 10 s apart: start 0, loop 10, after step k 10 + 10k
    result = trainer.fit()
    # after step 4: 50 s + 10 s a step = 60 s, within the 60 s budget; after step 5: 60 + 10 > 60, so 5 is the last
    rows = trainer.metrics.read()
    last = result.step
    assert last == 5 and result.status == "completed"
    assert "val:accuracy" in rows[-1] and rows[-1]["step"] == last  # validated at its last step
    assert CheckpointManager.training_info(trainer.checkpoints.latest())["current_step"] == last
    resumed, _ = make_trainer(toy_cfg(tmp_path, "checkpointing.save_period=100"))
    assert resumed.step == last and resumed.fit().step == 6


def test_deadline_ends_the_job_when_it_comes_before_the_per_job_budget(tmp_path):
    deadline = time.time() + 48  # 43-48 s left when fit starts (setup takes well under 5 s)
    cfg = toy_cfg(tmp_path, "grpo.max_train_minutes=1", f"grpo.deadline={deadline}", "checkpointing.save_period=100")
    trainer, _ = make_trainer(cfg)
    ticks = iter(range(0, 10_000, 10))
    trainer.clock = lambda: float(next(ticks))  # as above: after step k, 10 + 10k s from the start
    # after step 2: 30 + 10 <= 43; after step 3: 40 + 10 > 48, so 3 is the last (the 60 s budget would allow 5)
    result = trainer.fit()
    assert result.step == 3 and trainer.metrics.read()[-1]["step"] == 3


def test_a_job_killed_between_checkpoint_and_metrics_row_resumes_without_a_gap(tmp_path):
    """The loop saves step N's checkpoint, then writes its metrics row; a kill between the two must not leave step
    N missing from metrics.jsonl once the next job resumes from that checkpoint."""
    import json

    cfg = toy_cfg(tmp_path, "grpo.max_num_steps=2", "checkpointing.save_period=1")
    make_trainer(cfg)[0].fit()
    metrics = tmp_path / "train" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    lost = [row for row in rows if row["step"] == 2]
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows if row["step"] != 2))  # as the kill left it
    trainer, _ = make_trainer(toy_cfg(tmp_path, "grpo.max_num_steps=3", "checkpointing.save_period=1"))
    assert trainer.step == 2
    trainer.fit()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert sorted(set(steps)) == [0, 1, 2, 3] and len(steps) == len(set(steps)), steps
    restored = next(json.loads(line) for line in metrics.read_text().splitlines() if json.loads(line)["step"] == 2)
    assert restored["train:loss"] == lost[-1]["train:loss"]


def test_more_than_one_rollout_turn_is_refused_with_the_key_to_use(tmp_path):
    with pytest.raises(ValueError, match="env.max_steps"):
        make_trainer(toy_cfg(tmp_path, "grpo.max_rollout_turns=3"))


def test_resume_from_best_and_named_step(tmp_path):
    cfg = toy_cfg(tmp_path, "grpo.max_num_steps=4", "checkpointing.keep_top_k=null")
    make_trainer(cfg)[0].fit()
    t, _ = make_trainer(
        toy_cfg(tmp_path, "grpo.max_num_steps=4", "checkpointing.keep_top_k=null", "checkpointing.resume_from=step_2")
    )
    assert t.step == 2 and t.consumed_samples == 8
    best = CheckpointManager(tmp_path / "train" / "checkpoints").best()
    t2, _ = make_trainer(toy_cfg(tmp_path, "grpo.max_num_steps=4", "checkpointing.resume_from=best"))
    assert t2.resumed_from == best


def test_sequence_level_loss_trains_on_length_weighted_advantages(tmp_path):
    """loss_fn.token_level_loss=false: the policy gets each rollout's advantage times (step tokens) / (its tokens x
    rows), which makes its token-level loss the mean of rollout means (tests/grpo/test_policy.py checks that)."""
    from trainer.grpo.advantage import compute_advantages, sequence_level_weights

    cfg = toy_cfg(
        tmp_path,
        "loss_fn.token_level_loss=false",
        "grpo.max_num_steps=1",
        "grpo.val_at_start=false",
        "policy.train_global_batch_size=8",
    )  # two optimizer steps: no row is left out
    trainer, _ = make_trainer(cfg)
    toy_rollouts, rollouts, batches = trainer.rollout_fn, [], []

    def uneven_rollouts(rows, generation, tokenizer, cfg_, seed):  # every other response 2 tokens shorter
        out = toy_rollouts(rows, generation, tokenizer, cfg_, seed)
        for r in out[1::2]:
            r.token_ids, r.loss_mask, r.generation_logprobs = (
                r.token_ids[:-2],
                r.loss_mask[:-2],
                r.generation_logprobs[:-2],
            )
        rollouts.extend(out)
        return out

    trainer.rollout_fn = uneven_rollouts
    train = trainer.policy.train
    trainer.policy.train = lambda batch: batches.append(dict(batch)) or train(batch)
    trainer.fit()
    batch = batches[0]
    rewards = torch.tensor([r.reward for r in rollouts[:16]])
    weights = sequence_level_weights(batch["loss_mask"], int(cfg.policy.train_global_batch_size))
    assert weights.unique().numel() == 2  # two lengths, two weights
    expected = compute_advantages(rewards, torch.arange(4).repeat_interleave(4)) * weights
    assert torch.allclose(batch["advantages"], expected)


def test_engines_sleep_while_the_policy_trains_and_wake_for_the_refit(tmp_path):
    """The order a colocated GPU step needs: generate, engines asleep, policy update, engines awake, refit."""
    cfg = toy_cfg(tmp_path, "grpo.max_num_steps=2", "grpo.val_period=0", "grpo.val_at_start=false")
    trainer, sampler = make_trainer(cfg)
    events: list[str] = []
    for name in ("generate", "sleep", "wake_up", "update_weights"):
        original = getattr(sampler, name)

        def recorded(*args, _name=name, _original=original, **kwargs):
            events.append(_name)
            return _original(*args, **kwargs)

        setattr(sampler, name, recorded)
    train = trainer.policy.train

    def recorded_train(*args, **kwargs):
        events.append("train")
        return train(*args, **kwargs)

    trainer.policy.train = recorded_train
    trainer.fit()
    # split at each refit: a training step's events end with the engines asleep through the update
    steps = [chunk.split() for chunk in " ".join(events).split("update_weights") if "train" in chunk]
    assert len(steps) == 2
    for step in steps:
        assert step[-3:] == ["sleep", "train", "wake_up"] and step[0] == "generate", step
