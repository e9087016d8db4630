"""The warm-start stage: expert trajectories through the rollout bookkeeping, NLL falls, an HF model comes out."""
import json

import pytest

from pipeline import data, prepare
from pipeline.config import load_config


@pytest.fixture(scope="module")
def prepared_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    cfg = load_config("tiny_cpu", [f"run.root={root}/run", "data.local.generator_rows=60",
                                   "sft.enabled=true", "sft.max_num_steps=3", "sft.train_global_batch_size=8",
                                   "sft.train_micro_batch_size=4"])
    data.run(cfg)
    prepare.run(cfg)
    return cfg


def test_expert_trajectories_score_one_and_mask_only_assistant_tokens(prepared_cfg):
    from transformers import AutoTokenizer

    from pipeline.io import read_jsonl
    from pipeline.models.hub import resolve_model
    from pipeline.sft import expert_rollouts

    root = prepared_cfg.run.root
    rows = read_jsonl(f"{root}/prepare/train_prepare.jsonl")[:12]
    model_dir = resolve_model(prepared_cfg.policy.model_name, f"{root}/models", tiny_cfg=None, seed=42)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rollouts = expert_rollouts(rows, tokenizer, prepared_cfg)
    assert [r.reward for r in rollouts] == [1.0] * len(rows)
    for rollout, row in zip(rollouts, rows):
        trained = tokenizer.decode([t for t, m in zip(rollout.token_ids, rollout.loss_mask) if m])
        for call in row["ground_truth"]:
            assert call["name"] in trained          # the calls are trained on ...
        prompt = tokenizer.decode(rollout.token_ids[: rollout.prompt_length])
        assert row["responses_create_params"]["input"][1]["content"] in prompt   # ... the query is not
        assert not any(rollout.loss_mask[: rollout.prompt_length])


@pytest.mark.slow
def test_sft_lowers_nll_and_exports_a_loadable_model(prepared_cfg):
    from transformers import AutoModelForCausalLM

    from pipeline import sft

    out = sft.run(prepared_cfg)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3]
    assert history[-1]["sft:nll"] < history[0]["sft:nll"]
    model = AutoModelForCausalLM.from_pretrained(str(out / "hf_model"))
    assert model.config.model_type == "qwen3"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["steps"] == 3
