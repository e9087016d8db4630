"""Where every policy rank and generation engine runs, decided before any actor starts.

Left to Ray's scheduler, GPU recipes fail in ways that look like a hang: an engine of tensor-parallel size > 1
asks for whole GPUs that fractional policy actors already hold, so it waits forever; two policy ranks can land on
one GPU, which NCCL refuses. The plan names the node and GPU of every policy rank and of every engine's TP group,
estimates each GPU's memory in the phase where it peaks, and refuses an impossible request at once, saying what to
change. It is arithmetic only (no Ray, no torch): a login node or a test prints the plan of any recipe.

Two modes, as the reference names them (`policy.generation.colocated.enabled`):
  colocated  policy and engines share every GPU, taking turns (the engine sleeps while the policy trains, the
             policy's optimizer state leaves the GPU while the engine generates);
  split      generation has GPUs of its own: the last `colocated.resources.gpus_per_node` GPUs of a single node,
             or the last `colocated.resources.num_nodes` whole nodes.

Ranks follow Megatron-core's order (tensor-parallel rank fastest), and GPUs are numbered node by node, so a TP
group is consecutive GPUs of one node whenever TP divides the GPUs per node; the plan refuses TP groups that would
cross nodes, for the policy and for the engines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3
CUDA_CONTEXT_GIB = 0.5  # per process on a GPU (policy rank, engine worker)
SLEEPING_ENGINE_GIB = 1.0  # what a sleeping vLLM engine keeps: CUDA graphs, allocator pools


class PlacementError(ValueError):
    """A request that cannot be placed; the message says what to change."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes the memory estimate needs."""

    num_params: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    # bf16 activation bytes a token that each layer keeps for its backward, as (replicated, split over TP): the
    # dense decoder's (10h, 24h) when empty
    layer_activations: tuple[tuple[float, float], ...] = ()

    def activation_bytes(self, tp: int) -> list[float]:
        """Per layer, bytes a token with tensor parallelism `tp`."""
        h = self.hidden_size
        return [a + b / tp for a, b in self.layer_activations or ((10.0 * h, 24.0 * h),) * self.num_layers]

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """Parameter count of a dense decoder (Qwen2/Qwen3/Llama layout) from its HF `config.json` fields, or of
        a hybrid NemotronH (`from_nemotron_h`)."""
        if config.get("model_type") == "nemotron_h":
            from trainer.models.hybrid_arch import nemotron_h_arch

            return cls.from_nemotron_h(nemotron_h_arch(config))
        h, layers, vocab = int(config["hidden_size"]), int(config["num_hidden_layers"]), int(config["vocab_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or h // heads)
        ffn = int(config["intermediate_size"])
        attention = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2
        qk_norm = 2 * head_dim if config.get("model_type") == "qwen3" else 0
        per_layer = attention + 3 * h * ffn + 2 * h + qk_norm
        embeddings = vocab * h * (1 if config.get("tie_word_embeddings") else 2)
        return cls(per_layer * layers + embeddings + h, layers, h, vocab)

    @classmethod
    def from_nemotron_h(cls, arch: Any) -> ModelShape:
        """Parameters and activations of a NemotronH layer by layer: each layer is one mixer after an RMSNorm.

        Activations (bf16, without sequence parallelism): every layer keeps its input and the norm's output (4h,
        replicated); a Mamba-2 layer its in_proj output [z x B C dt], the conv and SiLU outputs over [x B C], the
        scan output and the gated norm's input and output (split by TP: whole heads and groups); an attention
        layer q, k, v and its output (flash attention, no score matrix); an MLP layer the up projection and its
        squared ReLU. The scan's chunk states are left out (the GPU kernels recompute them)."""
        h, d, gn = arch.hidden_size, arch.d_inner, arch.mamba_groups * arch.ssm_state_size
        in_proj = 2 * d + 2 * gn + arch.mamba_heads
        params = {
            "M": h + h * in_proj + (d + 2 * gn) * (arch.conv_kernel + 1) + 3 * arch.mamba_heads + d + d * h,
            "*": h + 2 * h * arch.num_heads * arch.head_dim + 2 * h * arch.num_kv_heads * arch.head_dim,
            "-": h + 2 * h * arch.ffn_hidden_size,
        }
        acts = {
            "M": (4.0 * h, 2.0 * (in_proj + 2 * (d + 2 * gn) + 3 * d)),
            "*": (4.0 * h, 2.0 * (2 * arch.num_heads + 2 * arch.num_kv_heads) * arch.head_dim),
            "-": (4.0 * h, 4.0 * arch.ffn_hidden_size),
        }
        embeddings = arch.vocab_size * h * (1 if arch.tie_word_embeddings else 2)
        return cls(
            sum(params[kind] for kind in arch.pattern) + embeddings + h,
            arch.num_layers,
            h,
            arch.vocab_size,
            tuple(acts[kind] for kind in arch.pattern),
        )


# config.json fields of the recipes' models, so a plan prints where the hub cannot be reached (login nodes, CI)
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen3-4B-Instruct-2507": {
        "model_type": "qwen3",
        "hidden_size": 2560,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 9728,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen3-1.7B": {
        "model_type": "qwen3",
        "hidden_size": 2048,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 6144,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    # the hybrid Mamba-2 / attention model: 27 Mamba, 4 attention and 25 MLP layers, 8.89e9 parameters
    "nvidia/NVIDIA-Nemotron-Nano-9B-v2": {
        "model_type": "nemotron_h",
        "hidden_size": 4480,
        "hybrid_override_pattern": "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-",
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 15680,
        "mamba_num_heads": 128,
        "mamba_head_dim": 80,
        "n_groups": 8,
        "ssm_state_size": 128,
        "conv_kernel": 4,
        "vocab_size": 131072,
        "tie_word_embeddings": False,
    },
}


def known_shape(model_name: str) -> ModelShape | None:
    if model_name in KNOWN_MODELS:
        return ModelShape.from_hf_config(KNOWN_MODELS[model_name])
    return None


@dataclass(frozen=True)
class PlacementRequest:
    """What the recipe asks for (see `from_config` for the keys)."""

    num_nodes: int
    gpus_per_node: int
    gpu_memory_gib: float
    colocated: bool = True
    generation_gpus_per_node: int | None = None  # split, one node: GPUs of it that generate
    generation_num_nodes: int | None = None  # split, several nodes: whole nodes that generate
    policy_tp: int = 1
    policy_pp: int = 1
    engine_tp: int = 1
    num_engines: int | None = None  # None: as many as the generation GPUs hold
    gpu_memory_utilization: float = 0.6
    sleep_mode: bool = True  # colocated: the engine frees its memory while the policy trains
    offload_optimizer: bool = True  # colocated: gradients and Adam state on the host during generation
    activation_checkpointing: bool = False
    micro_batch_tokens: int = 4096  # train_micro_batch_size x max_total_sequence_length

    @property
    def total_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node

    @classmethod
    def from_config(cls, cfg: Any) -> PlacementRequest:
        policy, gen = cfg.policy, cfg.policy.generation
        mcfg, vcfg, colo = policy.megatron_cfg, gen.vllm_cfg, gen.colocated
        return cls(
            num_nodes=int(cfg.cluster.num_nodes),
            gpus_per_node=int(cfg.cluster.gpus_per_node),
            gpu_memory_gib=float(cfg.cluster.gpu_memory_gib),
            colocated=bool(colo.enabled),
            generation_gpus_per_node=colo.resources.gpus_per_node,
            generation_num_nodes=colo.resources.num_nodes,
            policy_tp=int(mcfg.tensor_model_parallel_size),
            policy_pp=int(mcfg.pipeline_model_parallel_size),
            engine_tp=int(vcfg.tensor_parallel_size),
            num_engines=None if vcfg.num_engines is None else int(vcfg.num_engines),
            gpu_memory_utilization=float(vcfg.gpu_memory_utilization),
            sleep_mode=bool(vcfg.enable_sleep_mode),
            offload_optimizer=bool(policy.offload_optimizer_for_generation),
            activation_checkpointing=bool(mcfg.activation_checkpointing),
            micro_batch_tokens=int(policy.train_micro_batch_size) * int(policy.max_total_sequence_length),
        )


@dataclass(frozen=True, order=True)
class Gpu:
    node: int
    index: int

    def __str__(self) -> str:
        return f"node {self.node} gpu {self.index}"


@dataclass
class GpuMemory:
    """Estimated GiB on one GPU in each phase of a step; the parts say where each figure comes from."""

    training: float
    generation: float
    parts: dict[str, float] = field(default_factory=dict)
    generation_parts: dict[str, float] = field(default_factory=dict)

    @property
    def peak(self) -> float:
        return max(self.training, self.generation)

    @property
    def peak_phase(self) -> str:
        return "training" if self.training >= self.generation else "generation"


@dataclass
class PlacementPlan:
    request: PlacementRequest
    shape: ModelShape | None
    policy_gpus: list[Gpu]  # policy rank r runs on policy_gpus[r]
    engine_gpus: list[list[Gpu]]  # engine e's TP group
    memory: dict[Gpu, GpuMemory]

    @property
    def policy_dp(self) -> int:
        return len(self.policy_gpus) // (self.request.policy_tp * self.request.policy_pp)

    def gpus_of_node(self, node: int) -> list[Gpu]:
        return [Gpu(node, i) for i in range(self.request.gpus_per_node)]

    def describe(self) -> str:
        """The plan as the trainer prints it before any actor starts: one line per GPU, then memory."""
        r = self.request
        mode = "colocated" if r.colocated else "split"
        lines = [
            f"placement: {mode}, {r.num_nodes} node(s) x {r.gpus_per_node} GPU(s) of {r.gpu_memory_gib:g} GiB; "
            f"policy TP {r.policy_tp} x PP {r.policy_pp} x DP {self.policy_dp} on {len(self.policy_gpus)} "
            f"GPU(s); {len(self.engine_gpus)} engine(s) of TP {r.engine_tp}"
        ]
        rank_of = {gpu: rank for rank, gpu in enumerate(self.policy_gpus)}
        engine_of = {gpu: (e, i) for e, group in enumerate(self.engine_gpus) for i, gpu in enumerate(group)}
        for node in range(r.num_nodes):
            for gpu in self.gpus_of_node(node):
                roles = []
                if gpu in rank_of:
                    rank = rank_of[gpu]
                    roles.append(
                        f"policy rank {rank} (tp {rank % r.policy_tp}, "
                        f"dp {rank // r.policy_tp % self.policy_dp}, pp {rank // (r.policy_tp * self.policy_dp)})"
                    )
                if gpu in engine_of:
                    e, i = engine_of[gpu]
                    roles.append(f"engine {e} (tp {i} of {r.engine_tp})")
                mem = self.memory.get(gpu)
                est = f" | ~{mem.peak:.1f} GiB at {mem.peak_phase}" if mem else ""
                lines.append(f"  {gpu}: {' + '.join(roles) or 'idle'}{est}")
        if self.memory:
            worst = max(self.memory.values(), key=lambda m: m.peak)
            training = ", ".join(f"{k} {v:.1f}" for k, v in worst.parts.items())
            generation = ", ".join(f"{k} {v:.1f}" for k, v in worst.generation_parts.items())
            lines.append(
                f"memory estimate (GiB, fullest GPU, of {r.gpu_memory_gib:g}): training {worst.training:.1f} "
                f"({training}); generation {worst.generation:.1f} ({generation})"
            )
        return "\n".join(lines)


def _split_gpus(r: PlacementRequest) -> tuple[list[Gpu], list[Gpu]]:
    """(policy GPUs, generation GPUs) in node-major order."""
    every = [Gpu(n, i) for n in range(r.num_nodes) for i in range(r.gpus_per_node)]
    if r.colocated:
        return every, every
    if r.num_nodes == 1:
        g = r.generation_gpus_per_node
        if not g or not 0 < g < r.gpus_per_node:
            raise PlacementError(
                f"split placement on one node needs policy.generation.colocated.resources.gpus_per_node between 1 "
                f"and {r.gpus_per_node - 1} (the GPUs that generate; the policy keeps the rest), got {g}"
            )
        return every[: r.gpus_per_node - g], every[r.gpus_per_node - g :]
    n = r.generation_num_nodes
    if not n or not 0 < n < r.num_nodes:
        raise PlacementError(
            f"split placement on {r.num_nodes} nodes needs policy.generation.colocated.resources.num_nodes between 1 "
            f"and {r.num_nodes - 1} (whole nodes that generate; the policy keeps the rest), got {n}"
        )
    cut = (r.num_nodes - n) * r.gpus_per_node
    return every[:cut], every[cut:]


def _check_groups(gpus: list[Gpu], size: int, what: str, key: str) -> None:
    """Consecutive groups of `size` GPUs must each sit on one node."""
    per_node: dict[int, int] = {}
    for gpu in gpus:
        per_node[gpu.node] = per_node.get(gpu.node, 0) + 1
    for node, count in per_node.items():
        if count % size:
            raise PlacementError(
                f"{what} TP {size} does not divide the {count} GPU(s) it has on node {node}: a TP group would cross "
                f"nodes (TP traffic needs NVLink); set {key} to a divisor of {count}"
            )


def plan_placement(request: PlacementRequest, shape: ModelShape | None = None) -> PlacementPlan:
    """The plan for `request`, or PlacementError naming what to change. Without GPUs (gpus_per_node 0) the plan
    is empty: CPU actors need no placement."""
    r = request
    if r.gpus_per_node <= 0:
        return PlacementPlan(r, shape, [], [], {})
    if r.num_nodes < 1:
        raise PlacementError(f"cluster.num_nodes must be at least 1, got {r.num_nodes}")
    policy_gpus, gen_gpus = _split_gpus(r)
    model_parallel = r.policy_tp * r.policy_pp
    if len(policy_gpus) % model_parallel:
        raise PlacementError(
            f"policy TP {r.policy_tp} x PP {r.policy_pp} = {model_parallel} does not divide the policy's "
            f"{len(policy_gpus)} GPU(s); change policy.megatron_cfg.tensor_model_parallel_size / "
            f"pipeline_model_parallel_size or the GPUs (cluster.num_nodes x cluster.gpus_per_node)"
        )
    _check_groups(policy_gpus, r.policy_tp, "policy", "policy.megatron_cfg.tensor_model_parallel_size")
    _check_groups(gen_gpus, r.engine_tp, "engine", "policy.generation.vllm_cfg.tensor_parallel_size")
    fit = len(gen_gpus) // r.engine_tp
    engines = fit if r.num_engines is None else int(r.num_engines)
    if engines < 1 or engines > fit:
        raise PlacementError(
            f"{engines} engine(s) of TP {r.engine_tp} need {engines * r.engine_tp} GPU(s); generation has "
            f"{len(gen_gpus)}: set policy.generation.vllm_cfg.num_engines to at most {fit}, "
            f"or give the job more GPUs"
        )
    engine_gpus = [gen_gpus[e * r.engine_tp : (e + 1) * r.engine_tp] for e in range(engines)]
    plan = PlacementPlan(r, shape, policy_gpus, engine_gpus, {})
    if shape is not None:
        plan.memory = estimate_memory(plan, shape)
        worst = max(plan.memory.items(), key=lambda item: item[1].peak)
        if worst[1].peak > r.gpu_memory_gib:
            raise PlacementError(
                f"memory estimate {worst[1].peak:.1f} GiB on {worst[0]} ({worst[1].peak_phase}) is over the card's "
                f"{r.gpu_memory_gib:g} GiB ({', '.join(f'{k} {v:.1f}' for k, v in worst[1].parts.items())}); "
                f"raise policy TP, turn on policy.megatron_cfg.activation_checkpointing, vllm_cfg.enable_sleep_mode "
                f"or policy.offload_optimizer_for_generation, or lower vllm_cfg.gpu_memory_utilization"
            )
    return plan


def plan_for(cfg: Any) -> PlacementPlan:
    """The run config's plan, with the memory estimate where the model's shape is known (`known_shape`)."""
    return plan_placement(PlacementRequest.from_config(cfg), known_shape(str(cfg.policy.model_name)))


def estimate_memory(plan: PlacementPlan, shape: ModelShape) -> dict[Gpu, GpuMemory]:
    """GiB per GPU in the training and the generation phase.

    Policy rank: fp32 master weights, fp32 gradients and Adam's two moments (16 bytes a parameter of its TP x PP
    shard; DP replicates them) plus bf16 weight copies under autocast (2 bytes); activations of one micro-batch
    without sequence parallelism, flash attention storing no score matrix: (10 + 24/TP) x hidden bytes a token and
    layer of a dense decoder (a NemotronH's by layer kind, `ModelShape.from_nemotron_h`), or 2 x hidden a token
    and layer with full recomputation plus the largest layer's worth; bf16 logits and their
    gradient over the TP shard of the vocabulary. Engine: `gpu_memory_utilization` of the card, vLLM's own budget
    for weights, KV cache and activations. Each process holds a CUDA context."""
    r = plan.request
    params = shape.num_params / (r.policy_tp * r.policy_pp)
    layers = shape.num_layers / r.policy_pp
    tokens, h = r.micro_batch_tokens, shape.hidden_size
    per_layer = [tokens * b for b in shape.activation_bytes(r.policy_tp)]
    activations = (
        (2 * h * tokens * layers + max(per_layer)) if r.activation_checkpointing else sum(per_layer) / r.policy_pp
    )
    logits = 4 * tokens * shape.vocab_size / r.policy_tp
    policy_parts = {
        "weights+grads+adam": 16 * params / GIB,
        "bf16 copies": 2 * params / GIB,
        "activations": activations / GIB,
        "logits": logits / GIB,
    }
    policy_idle = (4 if r.offload_optimizer else 16) * params / GIB + CUDA_CONTEXT_GIB
    engine_generating = r.gpu_memory_utilization * r.gpu_memory_gib + CUDA_CONTEXT_GIB
    engine_idle = (
        SLEEPING_ENGINE_GIB if r.sleep_mode else r.gpu_memory_utilization * r.gpu_memory_gib
    ) + CUDA_CONTEXT_GIB
    policy_set = set(plan.policy_gpus)
    engine_set = {gpu for group in plan.engine_gpus for gpu in group}
    memory = {}
    for gpu in sorted(policy_set | engine_set):
        on_policy, on_engine = gpu in policy_set, gpu in engine_set
        if on_policy:
            training_parts = (
                {**policy_parts, "sleeping engine" if r.sleep_mode else "awake engine": engine_idle}
                if on_engine
                else dict(policy_parts)
            )
            idle_policy = "policy weights (optimizer offloaded)" if r.offload_optimizer else "policy + optimizer"
            generation_parts = (
                {"engine": engine_generating, idle_policy: policy_idle} if on_engine else {idle_policy: policy_idle}
            )
            training = sum(training_parts.values()) + CUDA_CONTEXT_GIB
        else:  # a split engine holds its budget all the time
            training_parts = generation_parts = {"engine": engine_generating}
            training = engine_generating
        memory[gpu] = GpuMemory(training, sum(generation_parts.values()), training_parts, generation_parts)
    return memory
