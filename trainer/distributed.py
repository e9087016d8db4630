"""torch.distributed + Megatron-core model-parallel set-up, the same code on a laptop CPU and on GPU nodes.

Rank information comes from (first match): explicit arguments (Ray actors pass them), torchrun-style env vars
(RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT), or Slurm via submitit's job environment. Without CUDA the backend is
gloo and two shims make Megatron-core run on CPU (see `apply_cpu_shims`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def discover_rank_info(
    rank: int | None = None,
    world_size: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    local_rank: int | None = None,
) -> RankInfo:
    """Where this process sits: explicit arguments, then torchrun env vars, then Slurm/submitit, else a single rank."""
    env = os.environ
    if rank is None and "RANK" in env and "WORLD_SIZE" in env:
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    elif rank is None and "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        import submitit

        job_env = submitit.JobEnvironment()
        rank, world_size, local_rank = job_env.global_rank, job_env.num_tasks, job_env.local_rank
        master_addr = master_addr or job_env.hostnames[0]
    if rank is None:
        rank, world_size = 0, 1
    if world_size is None:
        raise ValueError(f"rank={rank} given without world_size")
    master_addr = master_addr or env.get("MASTER_ADDR", "127.0.0.1")
    if master_port is None and "MASTER_PORT" not in env and world_size == 1:
        master_port = free_port()  # a lone process must not collide with other jobs on the same host
    if not master_port:
        master_port = int(env.get("MASTER_PORT", 29500))
    return RankInfo(rank, world_size, local_rank if local_rank is not None else rank, master_addr, master_port)


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def apply_cpu_shims() -> None:
    """Make Megatron-core's GPT forward/backward run without CUDA.

    1. `GlobalMemoryBuffer.get_tensor` allocates attention scratch space on `torch.cuda.current_device()`;
       on CPU we hand out a fresh CPU tensor instead.
    2. RoPE's `get_emb` moves its frequencies to `torch.cuda.current_device()` on first use; on CPU we
       compute the same embedding where the frequencies are.
    3. Dropout inside attention forks the model-parallel CUDA RNG tracker; the "inference" tracker's fork is a
       no-op, so dropout draws from the ordinary CPU generator (seeded by `torch.manual_seed`).
    """
    import megatron.core.utils as mcu
    import torch
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.tensor_parallel.random import initialize_rng_tracker

    def _cpu_get_tensor(self, tensor_shape, dtype, name, mem_alloc_context=None):
        return torch.empty(tuple(tensor_shape), dtype=dtype)

    def _cpu_rope_emb(self, max_seq_len, offset=0):
        freqs = self.get_freqs_non_repeated(max_seq_len, offset)  # [S, dim/2]
        if self.rotary_interleaved:
            emb = torch.stack((freqs, freqs), dim=-1).reshape(freqs.shape[0], -1)
        else:
            emb = torch.cat((freqs, freqs), dim=-1)
        return emb[:, None, None, :]

    mcu.GlobalMemoryBuffer.get_tensor = _cpu_get_tensor
    RotaryEmbedding.get_emb = _cpu_rope_emb
    initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)


def init_distributed(
    tp: int = 1,
    pp: int = 1,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    backend: str | None = None,
    seed: int = 0,
    timeout_s: int = 600,
) -> RankInfo:
    """Initialise the process group (if not yet) and Megatron's TP/PP/DP groups; seed the model-parallel RNGs.

    Idempotent for the same (tp, pp): a second call returns the same info (tests build several models).
    """
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    info = discover_rank_info(rank, world_size, master_addr, master_port)
    use_cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        backend = backend or ("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{info.master_addr}:{info.master_port}",
            rank=info.rank,
            world_size=info.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    if info.world_size % (tp * pp):
        raise ValueError(
            f"world size {info.world_size} is not divisible by tensor_model_parallel_size={tp} x "
            f"pipeline_model_parallel_size={pp}"
        )
    if parallel_state.model_parallel_is_initialized():
        if (
            parallel_state.get_tensor_model_parallel_world_size() != tp
            or parallel_state.get_pipeline_model_parallel_world_size() != pp
        ):
            parallel_state.destroy_model_parallel()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    seed_model_parallel(seed)
    return info


def seed_model_parallel(seed: int) -> None:
    """Seed torch and Megatron's RNG tracker (CUDA) or install the CPU shims (no CUDA)."""
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)
    else:
        apply_cpu_shims()


def destroy_distributed() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def init_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Connect to (or, with no cluster around, start) Ray so that actors can import this repository.

    `address`: an existing cluster ("auto" inside a Ray-on-Slurm job, or `RAY_ADDRESS`); None starts a local
    instance sized to `num_cpus`. Actors get the repo root on PYTHONPATH (they import `pipeline`/`env_sim` by name).
    """
    import ray

    from infra.signals import keep_sigterm_handler

    if ray.is_initialized():
        return
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    python_path = os.pathsep.join(p for p in (repo_root, os.environ.get("PYTHONPATH", "")) if p)
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {
        "runtime_env": {"env_vars": {"PYTHONPATH": python_path}},
        "include_dashboard": False,
        "log_to_driver": True,
    }
    if address is None:
        # "local", never None: ray.init(None) joins whatever cluster another process on this host announced
        # last (/tmp/ray/ray_current_cluster), e.g. another job's Ray, whose scheduler then cancels our actors
        address = "local"
        kwargs["num_cpus"] = num_cpus or os.cpu_count()
        # a private single-user instance needs no token; set only while it starts, so that jobs this process
        # submits afterwards (sbatch exports the environment) do not inherit "disabled" and skip their own token
        user_mode = os.environ.get("RAY_AUTH_MODE")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        try:
            with keep_sigterm_handler():
                _start_local_ray(ray, address, kwargs)
        finally:
            if user_mode is None:
                os.environ.pop("RAY_AUTH_MODE", None)
        return
    with keep_sigterm_handler():  # a checkpointable job's handler (save, then stop), not Ray's (exit at once)
        ray.init(address=address, **kwargs)


def _start_local_ray(ray, address: str, kwargs: dict) -> None:
    """ray.init of a new local instance, again when Ray's startup timeout hits (infra.ray_start says why); any
    other error is raised at once. A failed attempt's daemons (children of this process) are killed first."""
    import psutil

    from infra.ray_start import is_startup_timeout, start_with_retries
    from infra.signals import preemption_signal_ignored

    me = psutil.Process()
    before: set[int] = set()

    def attempt() -> None:
        before.clear()
        before.update(child.pid for child in me.children(recursive=True))
        with preemption_signal_ignored():  # Ray's daemons and actors inherit it (see infra.signals)
            ray.init(address=address, **kwargs)

    def clean_up() -> None:
        ray.shutdown()
        for child in me.children(recursive=True):
            if child.pid not in before:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass

    start_with_retries(
        attempt,
        "local Ray",
        retryable=is_startup_timeout,
        clean_up=clean_up,
        log=lambda text: print(f"[init_ray] {text}", flush=True),
    )


def ray_address(cfg: DictConfig) -> str | None:
    """The Ray cluster this job started for us (`jobs.ray_cluster` exports RAY_ADDRESS), 'auto' inside a
    multi-node Slurm job that did not, else None: a private local instance.

    Not `cluster.num_nodes`: that sizes the train job, and sanity/sft/eval run on one node under the same config;
    'auto' there would join any Ray cluster that happens to run on the host (another job's)."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    if int(os.environ.get("SLURM_JOB_NUM_NODES", "1") or 1) > 1:
        return "auto"
    return None
