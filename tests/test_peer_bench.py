"""The peer benchmark's shared pieces (bench/peer_bench.py, bench/trl_env.py): the reward function and the
multi-turn environment TRL is given score with env_sim's verifier, both sides see the same prompt tokens, the two
configs describe the same work, and the result and its doc rows are assembled from the steps. TRL itself runs only
in the slow tests, and only where .venv-peer has it."""

import json
import subprocess
from dataclasses import asdict

import pytest

from bench import peer_bench, trl_env
from bench.env_bench import DOC_HEADER
from bench.peer_bench import Work
from bench.trl_env import EnvSimReward
from infra.config import load_config
from pipeline import data, prepare


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("peer") / "run"
    cfg = load_config("tiny_cpu", peer_bench.ours_overrides(Work(), root) + ["data.local.generator_rows=60"])
    data.run(cfg)
    prepare.run(cfg)
    return cfg


@pytest.fixture(scope="module")
def rows_and_tokenizer(cfg):
    from transformers import AutoTokenizer

    from infra.io import read_jsonl
    from trainer.models.hub import resolve_model

    root = cfg.run.root
    rows = read_jsonl(f"{root}/prepare/train_prepare.jsonl")[:8]
    model_dir = resolve_model(cfg.policy.model_name, f"{root}/models", tiny_cfg=None, seed=42)
    return rows, AutoTokenizer.from_pretrained(str(model_dir)), model_dir


def reward_fn(cfg, tokenizer, model_dir):
    from trainer.generation import stop_token_ids
    from trainer.rollout import episode_options

    return EnvSimReward(str(cfg.env.tool_format), episode_options(cfg.env), stop_token_ids(tokenizer, str(model_dir)))


def test_our_config_is_the_shared_work_single_turn(cfg):
    work = Work()
    assert cfg.env.max_steps == 1  # one model call per episode
    assert cfg.grpo.num_prompts_per_step == work.prompts and cfg.grpo.num_generations_per_prompt == work.generations
    assert cfg.grpo.prompt_selection.pool_factor == 1 and not cfg.grpo.skip_zero_advantage_rollouts
    assert cfg.loss_fn.reference_policy_kl_penalty == 0
    assert cfg.policy.train_global_batch_size == work.completions  # one optimizer step per batch
    opt = cfg.policy.megatron_cfg.optimizer
    assert opt.lr == opt.min_lr == work.lr and cfg.policy.megatron_cfg.scheduler.lr_decay_style == "constant"
    gen = cfg.policy.generation
    assert gen.max_new_tokens == work.max_new_tokens and gen.temperature == work.temperature

    trl = peer_bench.trl_config_kwargs(work, "/tmp/x")
    assert trl["per_device_train_batch_size"] * trl["gradient_accumulation_steps"] == work.completions
    assert trl["num_generations"] == work.generations and trl["num_iterations"] == 1 and trl["beta"] == 0.0
    assert trl["learning_rate"] == opt.lr and trl["lr_scheduler_type"] == "constant"
    assert trl["weight_decay"] == opt.weight_decay and trl["max_grad_norm"] == cfg.policy.max_grad_norm
    assert (trl["adam_beta1"], trl["adam_beta2"], trl["adam_epsilon"]) == (
        opt.adam_beta1,
        opt.adam_beta2,
        opt.adam_eps,
    )
    assert trl["max_completion_length"] == gen.max_new_tokens and trl["temperature"] == gen.temperature
    assert trl["use_vllm"] is False and trl["shuffle_dataset"] is False


def test_reward_adapter_gives_env_sims_reward(cfg, rows_and_tokenizer):
    from env_sim.agent import Episode, expert_turns

    rows, tokenizer, model_dir = rows_and_tokenizer
    reward = reward_fn(cfg, tokenizer, model_dir)
    stop = reward.stop_ids and min(reward.stop_ids)
    right = [expert_turns(row, cfg.env.tool_format)[0] for row in rows]  # every ground-truth call, one turn
    row_json = [json.dumps(row) for row in rows]
    ids_ending_in_stop = [tokenizer.encode(text, add_special_tokens=False) + [stop] for text in right]
    assert reward([""] * len(rows), right, ids_ending_in_stop, row_json=row_json) == [1.0] * len(rows)

    # no calls: the verifier's reward for the untouched state (1 only for tasks that change nothing)
    untouched = [Episode(dict(row), cfg.env.tool_format, max_steps=1).finish().reward for row in rows]
    assert 0.0 in untouched
    wrong = ["I cannot do that."] * len(rows)
    assert reward([""] * len(rows), wrong, [[stop]] * len(rows), row_json=row_json) == untouched
    # cut by the token limit (no stop token at the end): the episode ends truncated, as in our rollouts; the
    # verifier replays the recorded calls either way
    cut = [ids[:-1] for ids in ids_ending_in_stop]
    assert all(reward.truncated(ids) for ids in cut) and not any(reward.truncated(i) for i in ids_ending_in_stop)
    assert reward([""] * len(rows), right, cut, row_json=row_json) == [1.0] * len(rows)


def test_both_sides_get_the_same_prompt_tokens(cfg, rows_and_tokenizer):
    """Ours: the token ids collect_rollouts sends the engine. TRL (a plain-text prompt): tokenizer(text=...)."""
    from trainer.rollout import collect_rollouts

    rows, tokenizer, _ = rows_and_tokenizer
    sent: list[list[int]] = []

    class Recording:
        def generate(self, prompt_token_ids, sampling):
            sent.extend(list(p) for p in prompt_token_ids)
            eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
            return [{"token_ids": [eos], "logprobs": [0.0], "finish_reason": "stop"} for _ in prompt_token_ids]

    collect_rollouts(rows, Recording(), tokenizer, cfg, seed=1)
    texts = [peer_bench.render_prompt(row, tokenizer, cfg.env) for row in rows]
    assert [tokenizer.encode(t, add_special_tokens=False) for t in texts] == sent
    assert tokenizer(text=texts)["input_ids"] == sent  # what TRL's _tokenize_prompts does with string prompts
    assert all("<tool_call>" in t or "tools" in t.lower() for t in texts)  # the tool section is in the prompt


def test_multi_turn_prompts_are_the_same_when_trl_passes_the_environments_methods_as_tools(cfg, rows_and_tokenizer):
    """TRL renders a conversation with the environment's methods as `tools`; its template leaves them out, since
    the system message carries env_sim's tool section, so TRL's first prompt is our rollouts' prompt."""
    import copy
    import inspect

    from transformers.utils import get_json_schema

    rows, tokenizer, _ = rows_and_tokenizer
    trl_tokenizer = copy.deepcopy(tokenizer)
    trl_tokenizer.chat_template = trl_env.TOOLS_IN_SYSTEM_MESSAGE + tokenizer.chat_template
    options = {"max_steps": 6, "compact_tools": False, "tool_scope": str(cfg.env.tool_scope)}
    for row in rows:
        tools = peer_bench.episode_tools(row, cfg.env)
        env = trl_env.environment_class("x", tools, str(cfg.env.tool_format), options)()
        methods = [getattr(env, t["name"]) for t in tools]
        # TRL takes every public function of the class but reset and get_reward for a tool: just the row's tools
        public = {n for n, f in inspect.getmembers(type(env), inspect.isfunction) if not n.startswith("_")}
        assert public - {"reset", "get_reward"} == {t["name"] for t in tools}
        for method, tool in zip(methods, tools):  # what transformers makes of each method: the tool's schema
            schema = get_json_schema(method)["function"]
            assert schema["name"] == tool["name"] and schema["description"] == tool["description"]
            assert schema["parameters"]["properties"] == tool["parameters"]["properties"]
            assert sorted(schema["parameters"].get("required", [])) == sorted(tool["parameters"]["required"])
        trl_side = trl_tokenizer.apply_chat_template(
            peer_bench.opening_messages(row, cfg.env), tools=methods, tokenize=False, add_generation_prompt=True
        )
        assert trl_side == peer_bench.render_prompt(row, tokenizer, cfg.env)
        assert trl_side.count("<|im_start|>system") == 1
        # the unchanged template would add a second tool section
        assert (
            tokenizer.apply_chat_template(
                peer_bench.opening_messages(row, cfg.env), tools=methods, tokenize=False, add_generation_prompt=True
            )
            != trl_side
        )


def test_multi_turn_environment_plays_an_episode_and_scores_it_with_env_sim(cfg, rows_and_tokenizer):
    rows, _, _ = rows_and_tokenizer
    options = {"max_steps": 6, "compact_tools": False, "tool_scope": "all"}
    solved = 0
    for row in rows:
        tools = row["responses_create_params"]["tools"]
        env = trl_env.environment_class("x", tools, str(cfg.env.tool_format), options)()
        env.reset(row_json=json.dumps(row), row_id=row["id"])
        for call in row["ground_truth"]:
            output = getattr(env, call["name"])(**json.loads(call["arguments"]))
            assert isinstance(output, str) and output
        assert env.get_reward() == 1.0  # the ground truth's calls, one tool-method call each
        env.reset(row_json=json.dumps(row))  # a fresh episode: no calls yet
        solved += env.get_reward() == 1.0
    assert solved < len(rows)  # doing nothing does not solve most tasks


def test_tool_methods_refuse_argument_types_they_cannot_declare():
    tool = {"name": "t", "description": "d", "parameters": {"properties": {"x": {"type": "array"}}, "required": []}}
    with pytest.raises(ValueError, match="tool t: argument x has type 'array'"):
        trl_env.tool_method(tool)


def test_trl_multi_turn_config_bounds_the_tool_loop():
    kwargs = peer_bench.trl_config_kwargs(Work(turns=6, episode_tokens=512), "/tmp/x")
    assert kwargs["max_tool_calling_iterations"] == 5 and kwargs["max_completion_length"] == 512
    single = peer_bench.trl_config_kwargs(Work(), "/tmp/x")
    assert "max_tool_calling_iterations" not in single and single["max_completion_length"] == Work().max_new_tokens


def steps(seconds, tokens, phases):
    return [
        {"seconds": s, "completions": 32, "generated_tokens": t, "phases": dict(phases, generation=s / 2)}
        for s, t in zip(seconds, tokens)
    ]


def test_result_and_doc_rows(tmp_path):
    work = Work()
    ours = steps([20.0, 2.0, 3.0, 4.0], [900, 1000, 1200, 800], {"training": 1.0, "refit": 0.1})
    trl = steps([30.0, 8.0, 6.0, 10.0], [900, 1000, 1200, 800], {"training": 3.0})
    memory = {"ours": {"rss_gib": 6.0, "pss_gib": 3.0}, "trl": {"rss_gib": 1.5, "pss_gib": 1.2}}
    versions = {"ours": "slurm-grpo abc1234", "trl": "1.16.0", "transformers": "5.19.0", "torch": "2.13.0+cpu"}
    result = peer_bench.assemble(work, ours, trl, memory, {"versions": versions})
    assert result["work"] == asdict(work)
    o, t = result["ours"], result["trl"]
    assert o["steps_measured"] == 3 and o["warmup_step_seconds"] == 20.0  # the warm-up is left out
    assert o["step_seconds"] == 3.0 and t["step_seconds"] == 8.0
    assert o["completions_per_sec"] == round(32 / 3.0, 3) and t["completions_per_sec"] == 4.0
    assert o["generated_tokens_per_sec"] == 400.0  # median of 500, 400, 200
    assert result["ratio_ours_over_trl"]["completions_per_sec"] == round(32 / 3.0 / 4.0, 2)
    assert result["ratio_ours_over_trl"]["training_seconds_trl_over_ours"] == 3.0
    assert o["phase_seconds"] == {"generation": 1.5, "refit": 0.1, "training": 1.0}
    assert o["peak_memory_gib"] == memory["ours"]

    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n" + DOC_HEADER + "| d | m | c | x | y |\n\nProse after the table.\n")
    peer_bench.append_doc_rows(result, doc)
    text = doc.read_text()
    table, prose = text.split("\n\n")[1], text.split("\n\n")[2]
    added = table.splitlines()[3:]
    assert len(added) == 6 and prose.startswith("Prose")
    assert all(
        "ours slurm-grpo abc1234 vs TRL 1.16.0" in line and "8 prompts x 4 generations" in line for line in added
    )
    assert "| ours / TRL completions/s | 2.67x |" in text
    assert "6.00 GiB RSS (3.00 GiB PSS) / 1.50 GiB RSS (1.20 GiB PSS)" in text


def part(sides, work, seconds):
    return {
        "work": asdict(work),
        "sides": sides,
        "steps": {name: steps(seconds, [900, 1000, 1200], {"training": 1.0}) for name in sides},
        "startup": {
            name: {"wall_seconds": 60.0, **({"versions": {"trl": "1.16.0", "torch": "2.11"}} if name == "trl" else {})}
            for name in sides
        },
        "memory": {name: {"rss_gib": 2.0, "gpu_gib": 50.0 if name == "ours" else 70.0} for name in sides},
        "ours_version": "slurm-grpo abc1234",
        "machine": "H200; 16 cores",
        "model_dir": "/m",
        "load_average": {"start": 1.0, "end": 2.0},
        "model_build_seconds": 5.0,
        "logs": f"/logs/{sides[0]}",
    }


def test_sides_run_apart_combine_into_one_comparison():
    work = Work(**peer_bench.GPU_WORK)
    result = peer_bench.combine([part(["trl"], work, [30.0, 8.0, 8.0]), part(["ours"], work, [20.0, 4.0, 4.0])])
    assert result["ours"]["step_seconds"] == 4.0 and result["trl"]["step_seconds"] == 8.0
    assert result["ours"]["peak_memory_gib"]["gpu_gib"] == 50.0 and result["trl"]["peak_memory_gib"]["gpu_gib"] == 70.0
    assert result["versions"] == {"ours": "slurm-grpo abc1234", "trl": "1.16.0", "torch": "2.11"}
    assert result["machine"] == "H200; 16 cores"
    assert result["separate_runs"] and result["ratio_ours_over_trl"]["step_seconds_trl_over_ours"] == 2.0
    with pytest.raises(ValueError, match="different work"):
        peer_bench.combine([part(["trl"], work, [8.0] * 3), part(["ours"], Work(), [4.0] * 3)])
    with pytest.raises(ValueError, match=r"side\(s\) \['trl'\]"):
        peer_bench.combine([part(["ours"], work, [4.0] * 3)])


def test_a_step_on_other_prompts_is_refused():
    spec = {"prompts": [{"step": 1, "row_id": "a", "ids": [1, 2]}, {"step": 1, "row_id": "b", "ids": [3]}]}
    peer_bench.check_same_prompts(spec, "trl", 1, {"row_ids": ["a", "b"], "prompt_ids": [[1, 2], [3]]})
    with pytest.raises(RuntimeError, match="differ from the shared order"):
        peer_bench.check_same_prompts(spec, "trl", 1, {"row_ids": ["b", "a"], "prompt_ids": [[3], [1, 2]]})
    with pytest.raises(RuntimeError, match="token ids differ"):
        peer_bench.check_same_prompts(spec, "ours", 1, {"row_ids": ["a", "b"], "prompt_ids": [[1, 2], [4]]})


@pytest.mark.slow
def test_trl_config_gives_one_generation_batch_per_optimizer_step():
    """TRL's own GRPOConfig (in .venv-peer) turns our arguments into one generation of prompts x generations per
    optimizer step."""
    python = peer_bench.PEER_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{python} is missing: `make bench-peer` creates it with trl=={peer_bench.TRL_VERSION}")
    work = Work()
    code = (
        "import json, sys, trl; from bench.peer_bench import Work, trl_config_kwargs; "
        "c = trl.GRPOConfig(**trl_config_kwargs(Work(), sys.argv[1])); "
        "print(json.dumps([trl.__version__, c.generation_batch_size, c.steps_per_generation, c.beta]))"
    )
    out = subprocess.run(
        [str(python), "-c", code, "/tmp/peer_cfg"],
        cwd=peer_bench.ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(peer_bench.ROOT), "PATH": "/usr/bin:/bin"},
    )
    version, generation_batch, steps_per_generation, beta = json.loads(out.stdout.strip().splitlines()[-1])
    assert version == peer_bench.TRL_VERSION
    assert generation_batch == work.completions
    assert steps_per_generation == work.completions // work.micro_batch  # = gradient accumulation: on-policy
    assert beta == 0.0


def test_gpu_work_is_the_same_on_both_sides(tmp_path):
    """--gpu: our one-GPU colocated config and TRL's vLLM-colocate arguments describe the same work: group shape,
    tokens, micro-batch, engine memory share, mixed precision, and no extra log-prob pass on TRL's side."""
    work = Work(**peer_bench.GPU_WORK)
    cfg = load_config("tiny_cpu", peer_bench.ours_overrides(work, tmp_path / "run"))
    assert cfg.grpo.num_prompts_per_step * cfg.grpo.num_generations_per_prompt == work.completions == 256
    assert cfg.cluster.gpus_per_node == 1 and cfg.policy.precision == "bfloat16"
    assert cfg.policy.generation.vllm_cfg.enable_sleep_mode and cfg.policy.generation.max_new_tokens == 512
    assert cfg.policy.train_micro_batch_size == work.micro_batch and not cfg.sft.enabled
    assert cfg.policy.tiny.hidden_size == 2048 and cfg.env.tool_scope == "domain"
    trl = peer_bench.trl_config_kwargs(work, str(tmp_path / "trl"))
    assert trl["use_vllm"] and trl["vllm_mode"] == "colocate" and trl["vllm_enable_sleep_mode"]
    assert trl["vllm_gpu_memory_utilization"] == cfg.policy.generation.vllm_cfg.gpu_memory_utilization
    assert trl["bf16"] and not trl["use_cpu"] and not trl["vllm_importance_sampling_correction"]
    assert trl["per_device_train_batch_size"] == work.micro_batch and trl["max_completion_length"] == 512


@pytest.mark.slow
def test_trl_knows_every_argument_we_give_it():
    """Every GRPOConfig argument of the CPU and GPU runs is a field of TRL's GRPOConfig (a renamed one fails here,
    not on the GPU machine)."""
    python = peer_bench.PEER_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{python} is missing: `make bench-peer` creates it with trl=={peer_bench.TRL_VERSION}")
    code = (
        "import dataclasses, json, trl; from bench.peer_bench import GPU_WORK, Work, trl_config_kwargs; "
        "fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)}; "
        "given = set(trl_config_kwargs(Work(), 'x')) | set(trl_config_kwargs(Work(**GPU_WORK), 'x')) "
        "| set(trl_config_kwargs(Work(turns=6), 'x')); "
        "print(json.dumps(sorted(given - fields)))"
    )
    out = subprocess.run(
        [str(python), "-c", code],
        cwd=peer_bench.ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(peer_bench.ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
