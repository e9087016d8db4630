"""The warm-start stage: expert trajectories through the rollout bookkeeping, NLL falls, an HF model comes out."""

import json

import pytest

from infra.config import load_config
from pipeline import data, prepare


@pytest.fixture(scope="module")
def prepared_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    cfg = load_config(
        "tiny_cpu",
        [
            f"run.root={root}/run",
            "data.local.generator_rows=60",
            "sft.enabled=true",
            "sft.max_num_steps=3",
            "sft.train_global_batch_size=8",
            "sft.train_micro_batch_size=4",
        ],
    )
    data.run(cfg)
    prepare.run(cfg)
    return cfg


@pytest.fixture(scope="module")
def rows_and_tokenizer(prepared_cfg):
    """The first 12 prepared training rows and the run's tiny tokenizer."""
    from transformers import AutoTokenizer

    from infra.io import read_jsonl
    from trainer.models.hub import resolve_model

    root = prepared_cfg.run.root
    rows = read_jsonl(f"{root}/prepare/train_prepare.jsonl")[:12]
    model_dir = resolve_model(prepared_cfg.policy.model_name, f"{root}/models", tiny_cfg=None, seed=42)
    return rows, AutoTokenizer.from_pretrained(str(model_dir))


def test_expert_trajectories_score_one_and_mask_only_assistant_tokens(prepared_cfg, rows_and_tokenizer):
    from trainer.expert import expert_rollouts

    rows, tokenizer = rows_and_tokenizer
    rollouts = expert_rollouts(rows, tokenizer, prepared_cfg)
    assert [r.reward for r in rollouts] == [1.0] * len(rows)
    for rollout, row in zip(rollouts, rows):
        trained = tokenizer.decode([t for t, m in zip(rollout.token_ids, rollout.loss_mask) if m])
        for call in row["ground_truth"]:
            assert call["name"] in trained  # the calls are trained on ...
        prompt = tokenizer.decode(rollout.token_ids[: rollout.prompt_length])
        assert row["responses_create_params"]["input"][1]["content"] in prompt  # ... the query is not
        assert not any(rollout.loss_mask[: rollout.prompt_length])


def test_short_context_trajectories_leave_out_the_system_prompt_and_still_score_one(prepared_cfg, rows_and_tokenizer):
    from env_sim.workplace_assistant.tasks.rows import SYSTEM_PROMPT
    from trainer.expert import expert_rollouts

    rows, tokenizer = rows_and_tokenizer
    rows = rows[:6]
    full = expert_rollouts(rows, tokenizer, prepared_cfg)
    short = expert_rollouts(rows, tokenizer, prepared_cfg, short_context=True)
    for f, s, row in zip(full, short, rows):
        prompt = tokenizer.decode(s.token_ids[: s.prompt_length])
        assert s.reward == 1.0 and SYSTEM_PROMPT not in prompt and "<tools>" not in prompt
        assert row["responses_create_params"]["input"][1]["content"] in prompt
        assert len(s.token_ids) * 2 < len(f.token_ids)
        # the trained (assistant) tokens are the same in both
        assert [t for t, m in zip(s.token_ids, s.loss_mask) if m] == [t for t, m in zip(f.token_ids, f.loss_mask) if m]


def test_short_context_epochs_come_first_and_add_to_the_step_count():
    from omegaconf import OmegaConf

    from pipeline.sft import SftPlan

    cfg = OmegaConf.create(
        {"sft": {"train_global_batch_size": 10, "num_epochs": 1, "short_context_epochs": 2, "max_num_steps": None}}
    )
    plan = SftPlan.from_config(cfg, 95)
    assert (plan.steps_per_epoch, plan.short_steps, plan.total_steps) == (10, 20, 30)
    assert [plan.is_short(step) for step in (1, 20, 21, 30)] == [True, True, False, False]
    plan.short_epochs += 1  # what the copy check does: the full epoch moves back
    assert (plan.total_steps, plan.is_short(30), plan.is_short(31)) == (40, True, False)
    cfg.sft.max_num_steps = 25
    assert SftPlan.from_config(cfg, 95).total_steps == 25


def test_the_warm_start_shows_one_line_per_epoch_not_one_per_step(capsys):
    from pipeline.sft import EpochProgress, SftPlan

    plan = SftPlan(steps_per_epoch=3, short_epochs=1, full_epochs=1)
    progress = EpochProgress(plan, 0, [])  # pytest's stdout is no terminal: no bar, only the epoch lines
    rows = [progress.step_done(1, 3.0), progress.step_done(2, 2.0)]
    plan.short_epochs += 1  # what the copy check at step 3 does, before the step's line
    rows.append(progress.step_done(3, 1.0, "copy check 0.100 < 0.25: short-context epoch 2 follows"))
    rows += [progress.step_done(step, 1.0) for step in range(4, 10)]
    progress.close()
    assert [bool(row) for row in rows] == [False, False, True, False, False, True, False, False, True]
    assert rows[2] == {"sft:epoch": 1, "sft:epoch_nll_mean": 2.0, "sft:epoch_seconds": rows[2]["sft:epoch_seconds"]}
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("[sft] epoch 1/3 (short context): steps 1-3, mean nll 2.0000, copy check 0.100 < 0.25")
    assert lines[1].startswith("[sft] epoch 2/3 (short context): steps 4-6, mean nll 1.0000, ")
    assert lines[2].startswith("[sft] epoch 3/3 (full prompt): steps 7-9, mean nll 1.0000, ")
    assert all(line.endswith("s") for line in lines)

    # a job resumed at step 4 of a 3-step epoch takes step 4's NLL from metrics.jsonl
    resumed = EpochProgress(plan, 4, [{"step": 3, "sft:nll": 9.0}, {"step": 4, "sft:nll": 4.0}])
    assert resumed.step_done(5, 2.0) == {} and resumed.step_done(6, 3.0)["sft:epoch_nll_mean"] == 3.0
    assert "epoch 2/3 (short context): steps 4-6, mean nll 3.0000" in capsys.readouterr().out


def test_copy_check_without_a_threshold_says_which_key_is_missing():
    from infra.config import load_config

    with pytest.raises(ValueError, match=r"no value for sft\.copy_check\.min_exact_prob"):  # at load, by the schema
        load_config("base", ["sft.copy_check.rows=8", "sft.copy_check.max_extra_epochs=2"])


@pytest.mark.slow
def test_sft_lowers_nll_extends_short_context_while_copying_lags_and_exports_a_loadable_model(prepared_cfg):
    """An unreachable copy-check threshold adds the one extra short-context epoch allowed; the LR decay is
    stretched by it, so the rate keeps falling to the last step instead of sitting at min_lr for the last epoch."""
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from infra.io import read_jsonl
    from pipeline import sft

    train_rows = len(read_jsonl(f"{prepared_cfg.run.root}/prepare/train_prepare.jsonl"))
    gbs = -(-train_rows // 2)  # two optimizer steps an epoch
    cfg = OmegaConf.merge(
        prepared_cfg,
        OmegaConf.create(
            {
                "sft": {
                    "max_num_steps": None,
                    "train_global_batch_size": gbs,
                    "short_context_epochs": 1,
                    "num_epochs": 1,
                    "lr_warmup_iters": 0,
                    "copy_check": {"rows": 8, "min_exact_prob": 1.0, "max_extra_epochs": 1},
                }
            }
        ),
    )
    out = sft.run(cfg)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    checked = {h["step"]: h["sft:copy_exact_prob"] for h in history if "sft:copy_exact_prob" in h}
    assert list(checked) == [2, 4] and all(0.0 <= p < 1.0 for p in checked.values())
    assert [(h["step"], h["sft:epoch"]) for h in history if "sft:epoch" in h] == [(2, 1), (4, 2), (6, 3)]
    lrs = [h["sft:lr"] for h in history]
    assert all(a > b for a, b in zip(lrs, lrs[1:])), lrs
    assert history[-1]["sft:nll"] < history[0]["sft:nll"]
    model = AutoModelForCausalLM.from_pretrained(str(out / "hf_model"))
    assert model.config.model_type == "qwen3"
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["extra"]["steps"], manifest["extra"]["short_context_epochs"]) == (6, 2)
