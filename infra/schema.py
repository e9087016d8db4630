"""The config's schema: one typed dataclass per section of `configs/base.yaml` (an OmegaConf structured config).

`infra.config.load_config` merges the recipes and overrides onto `OmegaConf.structured(Config)`, so a key that is
not declared here, or a value of the wrong type, fails at load with the key's name. Fields carry types only
(`MISSING`): every default lives once, in `configs/base.yaml`, next to its comment; a key that base.yaml leaves
unset is an error at load. The exceptions are `sft.copy_check`, null in base.yaml, whose optional fields default
here, and `policy.tiny`, whose unset sizes are the tiny model's own (trainer.models.tiny). `Dict[str, Any]` marks
the free-form maps (anything may be added under them with a `+key=value` override).

Only the standard library and omegaconf are imported: this runs on login nodes at submit time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


def _section(cls):
    """A nested section (a dataclass default must be a factory); its values come from base.yaml."""
    return field(default_factory=cls)


@dataclass
class RunConfig:
    name: str = MISSING
    root: str = MISSING
    seed: int = MISSING
    demo_budget_minutes: float | None = MISSING


@dataclass
class LocalDataConfig:
    generator_rows: int = MISSING
    workbench: bool = MISSING
    difficulties: list[str] | None = MISSING
    seed: int = MISSING
    jsonl: str | None = MISSING


@dataclass
class DataConfig:
    source: str = MISSING
    hf_name: str = MISSING
    hf_split: str = MISSING
    local: LocalDataConfig = _section(LocalDataConfig)
    validation_fraction: float = MISSING
    split_seed: int = MISSING
    stratify_by: str = MISSING


@dataclass
class PrepareConfig:
    drop_bad_rows: bool = MISSING
    agent_ref: dict[str, Any] = MISSING  # copied as is into every prepared row


@dataclass
class EnvConfig:
    name: str = MISSING
    max_steps: int = MISSING
    tool_format: str = MISSING
    compact_tools: bool | str = MISSING  # false | true | signatures
    tool_scope: str = MISSING


@dataclass
class SanityConfig:
    checks: list[str] = MISSING
    num_rollouts: int = MISSING


@dataclass
class CopyCheckConfig:
    rows: int = 128
    min_exact_prob: float = MISSING
    max_extra_epochs: int = 0


@dataclass
class SftConfig:
    enabled: bool = MISSING
    num_epochs: int = MISSING
    short_context_epochs: int = MISSING
    copy_check: CopyCheckConfig | None = MISSING
    train_global_batch_size: int = MISSING
    train_micro_batch_size: int = MISSING
    lr: float = MISSING
    min_lr: float = MISSING
    lr_warmup_iters: int = MISSING
    max_num_steps: int | None = MISSING
    save_period: int | None = MISSING


@dataclass
class PromptSelectionConfig:
    pool_factor: float = MISSING


@dataclass
class GrpoConfig:
    num_prompts_per_step: int = MISSING
    num_generations_per_prompt: int = MISSING
    max_rollout_turns: int = MISSING
    max_num_epochs: int | None = MISSING
    max_num_steps: int | None = MISSING
    max_train_minutes: float | None = MISSING
    deadline: float | None = MISSING
    normalize_rewards: bool = MISSING
    use_leave_one_out_baseline: bool = MISSING
    skip_zero_advantage_rollouts: bool = MISSING
    prompt_selection: PromptSelectionConfig = _section(PromptSelectionConfig)
    val_period: int | None = MISSING
    val_at_start: bool = MISSING
    val_at_end: bool = MISSING
    max_val_samples: int | None = MISSING
    val_batch_size: int | None = MISSING
    seed: int = MISSING


@dataclass
class LossConfig:
    reference_policy_kl_penalty: float = MISSING
    reference_policy_kl_type: str = MISSING
    kl_input_clamp_value: float | None = MISSING
    kl_output_clamp_value: float | None = MISSING
    ratio_clip_min: float = MISSING
    ratio_clip_max: float = MISSING
    ratio_clip_c: float | None = MISSING
    token_level_loss: bool = MISSING


@dataclass
class TokenizerConfig:
    name: str = MISSING


@dataclass
class OptimizerConfig:
    optimizer: str = MISSING
    lr: float = MISSING
    min_lr: float = MISSING
    weight_decay: float = MISSING
    adam_beta1: float = MISSING
    adam_beta2: float = MISSING
    adam_eps: float = MISSING
    clip_grad: float | None = MISSING


@dataclass
class SchedulerConfig:
    lr_decay_style: str = MISSING
    lr_warmup_iters: int = MISSING
    lr_warmup_init: float = MISSING
    lr_decay_iters: int | None = MISSING


@dataclass
class MegatronConfig:
    enabled: bool = MISSING
    tensor_model_parallel_size: int = MISSING
    pipeline_model_parallel_size: int = MISSING
    sequence_parallel: bool = MISSING
    activation_checkpointing: bool = MISSING
    attention_backend: str = MISSING
    fused_ops: bool | None = MISSING
    overlap_grad_reduce: bool | None = MISSING
    grad_reduce_bucket_mb: float = MISSING
    optimizer: OptimizerConfig = _section(OptimizerConfig)
    scheduler: SchedulerConfig = _section(SchedulerConfig)


@dataclass
class VllmConfig:
    tensor_parallel_size: int = MISSING
    gpu_memory_utilization: float = MISSING
    max_model_len: int = MISSING
    enforce_eager: bool = MISSING
    num_engines: int | None = MISSING
    enable_sleep_mode: bool = MISSING
    max_num_seqs: int = MISSING
    kv_cache_space_gb: float = MISSING
    cpu_reserved_cores: int | None = MISSING
    block_size: int | None = MISSING
    mamba_ssm_cache_dtype: str = MISSING
    precision: str | None = MISSING


@dataclass
class ColocatedResourcesConfig:
    gpus_per_node: int | None = MISSING
    num_nodes: int | None = MISSING


@dataclass
class ColocatedConfig:
    enabled: bool = MISSING
    resources: ColocatedResourcesConfig = _section(ColocatedResourcesConfig)


@dataclass
class GenerationConfig:
    backend: str = MISSING
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    top_k: int | None = MISSING
    per_request_seeds: bool = MISSING
    refit_transport: str = MISSING
    vllm_cfg: VllmConfig = _section(VllmConfig)
    colocated: ColocatedConfig = _section(ColocatedConfig)


@dataclass
class TinyConfig:
    """Sizes of the project-built models; unset (None) is the model's default. Both models' keys are typed here
    (a typo fails at load); each builder refuses a key set for the other model (tiny_settings,
    tiny_nemotron_h_settings), and a recipe on top of another unsets the other model's keys with null."""

    # both models
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    vocab_size: int | None = None
    max_position_embeddings: int | None = None
    rms_norm_eps: float | None = None
    init_std: float | None = None
    # tiny-qwen3 only
    num_layers: int | None = None
    rope_theta: float | None = None
    # tiny-nemotron-h only
    pattern: str | None = None
    mamba_num_heads: int | None = None
    mamba_head_dim: int | None = None
    n_groups: int | None = None
    ssm_state_size: int | None = None
    conv_kernel: int | None = None
    chunk_size: int | None = None


@dataclass
class PolicyConfig:
    model_name: str = MISSING
    tokenizer: TokenizerConfig = _section(TokenizerConfig)
    tiny: TinyConfig = _section(TinyConfig)
    train_global_batch_size: int = MISSING
    train_micro_batch_size: int = MISSING
    logprob_batch_size: int | None = MISSING
    logits_only_where_loss: bool = MISSING
    pack_shared_prefixes: bool = MISSING
    pack_min_shared_tokens: int = MISSING
    max_total_sequence_length: int = MISSING
    precision: str = MISSING
    max_grad_norm: float | None = MISSING
    offload_optimizer_for_generation: bool = MISSING
    megatron_cfg: MegatronConfig = _section(MegatronConfig)
    generation: GenerationConfig = _section(GenerationConfig)


@dataclass
class CheckpointingConfig:
    enabled: bool = MISSING
    checkpoint_dir: str = MISSING
    metric_name: str | None = MISSING
    higher_is_better: bool = MISSING
    keep_top_k: int | None = MISSING
    save_period: int | None = MISSING
    resume_from: str | None = MISSING


@dataclass
class WandbConfig:
    project: str | None = MISSING
    name: str | None = MISSING


@dataclass
class LoggerConfig:
    log_dir: str = MISSING
    wandb_enabled: bool = MISSING
    wandb: WandbConfig = _section(WandbConfig)


@dataclass
class ClusterConfig:
    gpus_per_node: int = MISSING
    num_nodes: int = MISSING
    gpu_memory_gib: float = MISSING


@dataclass
class EvalConfig:
    model: str | None = MISSING
    tasks: str | None = MISSING
    num_generations_per_prompt: int = MISSING


@dataclass
class SlurmConfig:
    use_cluster: bool = MISSING
    partition: str | None = MISSING
    account: str | None = MISSING
    qos: str | None = MISSING
    time_min: int = MISSING
    cpus_per_task: int = MISSING
    mem_gb: float = MISSING
    gpus_per_node: int = MISSING
    signal_delay_s: int = MISSING
    max_num_timeout: int = MISSING
    container_image: str | None = MISSING
    container_mounts: Any = MISSING  # a string or a list of mounts
    setup: list[str] = MISSING
    additional_parameters: dict[str, Any] = MISSING  # extra sbatch options (name -> value)


@dataclass
class Config:
    """The whole config tree, in base.yaml's order."""

    run: RunConfig = _section(RunConfig)
    data: DataConfig = _section(DataConfig)
    prepare: PrepareConfig = _section(PrepareConfig)
    env: EnvConfig = _section(EnvConfig)
    sanity: SanityConfig = _section(SanityConfig)
    sft: SftConfig = _section(SftConfig)
    grpo: GrpoConfig = _section(GrpoConfig)
    loss_fn: LossConfig = _section(LossConfig)
    policy: PolicyConfig = _section(PolicyConfig)
    checkpointing: CheckpointingConfig = _section(CheckpointingConfig)
    logger: LoggerConfig = _section(LoggerConfig)
    cluster: ClusterConfig = _section(ClusterConfig)
    eval: EvalConfig = _section(EvalConfig)
    slurm: SlurmConfig = _section(SlurmConfig)
