"""One submitit job definition per stage, and the executor that submits them.

A job carries only the stage name, the resolved config as YAML text, and (rarely) another target function; the
stage module is imported inside the job, on the compute node. That keeps this module light: login nodes import
only submitit and omegaconf.

    StageJob("prepare", cfg_yaml)                   -> pipeline.prepare.run(cfg) in the job
    CheckpointableStageJob("train", cfg_yaml, ...)  -> same, and on SIGUSR2 (time limit / preemption) the stage
                                                       is asked to save (infra.signals), then the job requeues
"""

from __future__ import annotations

import _thread
import importlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGE_ORDER = ("data", "prepare", "sanity", "sft", "train", "eval")


@dataclass(frozen=True)
class StageSpec:
    name: str
    checkpointable: bool = False  # long trainers: save on SIGUSR2 and requeue
    uses_ray: bool = False  # a Ray cluster over the job's nodes is started for it
    multi_node: bool = False  # `--nodes N` applies to it


STAGES: dict[str, StageSpec] = {
    "data": StageSpec("data"),
    "prepare": StageSpec("prepare"),
    "sanity": StageSpec("sanity"),
    "sft": StageSpec("sft", checkpointable=True),
    "train": StageSpec("train", checkpointable=True, uses_ray=True, multi_node=True),
    "eval": StageSpec("eval"),
}


def resolve_target(target: str) -> Callable[[DictConfig], Any]:
    """'package.module:function' -> the function (imported now, i.e. inside the job)."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr or "run")
    except AttributeError:
        raise AttributeError(f"{module_name} has no function {attr or 'run'!r} (stage target {target!r})") from None


class StageJob:
    """Runs `<target>(cfg)` (default `pipeline.<stage>:run`) and returns the output path as a string."""

    def __init__(self, stage: str, cfg_yaml: str, target: str | None = None, use_ray: bool = False) -> None:
        self.stage = stage
        self.cfg_yaml = cfg_yaml
        self.target = target or f"pipeline.{stage}:run"
        self.use_ray = use_ray

    def config(self) -> DictConfig:
        cfg = OmegaConf.create(self.cfg_yaml)
        if not isinstance(cfg, DictConfig):
            raise TypeError(f"{self!r}: the job's config YAML is a {type(cfg).__name__}, not a mapping")
        return cfg

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.stage!r}, target={self.target!r}, use_ray={self.use_ray})"

    def _run_stage(self) -> str | None:
        os.environ["SLURM_GRPO_STAGE_START"] = repr(time.time())  # for bench/chain_bench.py's breakdown
        cfg = self.config()
        function = resolve_target(self.target)
        print(
            f"[{self.stage}] start {self.target} on {os.environ.get('SLURMD_NODENAME', os.uname().nodename)} "
            f"job {os.environ.get('SLURM_JOB_ID', '-')} restart {os.environ.get('SLURM_RESTART_COUNT', '0')}",
            flush=True,
        )
        if self.use_ray:
            from jobs.ray_cluster import run_with_ray

            result = run_with_ray(lambda: function(cfg))
        else:
            result = function(cfg)
        return None if result is None else str(result)

    def __call__(self) -> str | None:
        return self._run_stage()


class CheckpointableStageJob(StageJob, submitit.helpers.Checkpointable):
    """A stage that may be stopped and resumed: on SIGUSR2 it raises `infra.signals`' flag, lets the stage
    save and return (it polls the flag), then hands over to submitit, which requeues the job; the restarted job
    runs the same stage, which resumes from its own checkpoints on disk.

    A stage that does not poll the flag is requeued anyway after `grace_s`. On SIGTERM (`scancel`,
    `scontrol requeue`: SIGKILL follows after KillWait) the flag is raised too, so a trainer can save quickly."""

    def __init__(
        self, stage: str, cfg_yaml: str, target: str | None = None, use_ray: bool = False, grace_s: float = 60.0
    ) -> None:
        super().__init__(stage, cfg_yaml, target, use_ray)
        self.grace_s = grace_s

    def __call__(self) -> str | None:
        from infra import signals

        signals.clear()
        submitit_usr2 = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint-and-requeue handler
        received: set[str] = set()
        grace_over = threading.Event()

        def requeue_now(frame: Any = None) -> None:
            if callable(submitit_usr2):
                submitit_usr2(signal.SIGUSR2, frame)  # pickles checkpoint(), `scontrol requeue`, exits

        def expire_grace() -> None:
            time.sleep(self.grace_s)
            grace_over.set()
            _thread.interrupt_main(signal.SIGUSR2)  # runs on_signal in the main thread again

        def on_signal(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            first_usr2 = name == "SIGUSR2" and name not in received
            received.add(name)
            if not signals.preemption_requested():
                print(f"[{self.stage}] {name}: asking the stage to save and stop", flush=True)
                signals.request_preemption(name)
            if first_usr2:
                threading.Thread(target=expire_grace, daemon=True).start()
            elif grace_over.is_set() and name == "SIGUSR2":
                print(f"[{self.stage}] stage did not stop within {self.grace_s:.0f}s: requeueing now", flush=True)
                requeue_now(frame)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGUSR2, signal.SIGTERM)}
        try:
            result = self._run_stage()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not received or int(os.environ.get("SLURM_PROCID", "0") or 0) != 0:
            return result
        from infra import manifest

        if manifest.is_up_to_date(self.config(), self.stage):
            return result  # it finished anyway
        if "SIGUSR2" in received:
            print(f"[{self.stage}] stopped after {', '.join(sorted(received))}; requeueing", flush=True)
            requeue_now()
        print(
            f"[{self.stage}] stopped on {', '.join(sorted(received))} before finishing; Slurm ends or requeues "
            "this job",
            flush=True,
        )
        sys.exit(1)  # SystemExit: submitit writes no result pickle, so a requeued run's result is the real one


def make_job(stage: str, cfg: DictConfig, target: str | None = None) -> StageJob:
    spec = STAGES[stage]
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if spec.checkpointable:
        grace = max(10.0, float(cfg.slurm.signal_delay_s) - 30.0)
        return CheckpointableStageJob(stage, cfg_yaml, target, use_ray=spec.uses_ray, grace_s=grace)
    return StageJob(stage, cfg_yaml, target, use_ray=spec.uses_ray)


# --- executor ----------------------------------------------------------------------------------------------------


def slurm_available() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("sacct") is not None


def log_folder(cfg: DictConfig, stage: str) -> Path:
    return Path(cfg.run.root).resolve() / "logs" / stage


def slurm_parameters(
    cfg: DictConfig, stage: str, nodes: int = 1, dependency: str | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """submitit `update_parameters` keywords for one stage, all from `cfg.slurm` (never hard-coded)."""
    s = cfg.slurm
    params: dict[str, Any] = {
        "name": f"{cfg.run.name}-{stage}",
        "timeout_min": int(s.time_min),
        "nodes": int(nodes),
        "tasks_per_node": 1,
        "cpus_per_task": int(s.cpus_per_task),
        "mem_gb": float(s.mem_gb),
        "slurm_signal_delay_s": int(s.signal_delay_s),
    }
    if s.gpus_per_node:
        params["gpus_per_node"] = int(s.gpus_per_node)
    for key in ("partition", "account", "qos"):
        if s[key]:
            params[f"slurm_{key}"] = str(s[key])
    setup = list(s.setup)
    if setup:
        params["slurm_setup"] = [str(line) for line in setup]
    additional: dict[str, Any] = {"chdir": str(REPO_ROOT), "kill-on-invalid-dep": "yes"}
    configured = OmegaConf.to_container(s.additional_parameters, resolve=True) or {}
    if not isinstance(configured, dict):
        raise TypeError(f"slurm.additional_parameters must be a mapping, got {type(configured).__name__}")
    additional.update({str(k): v for k, v in configured.items()})
    if dependency:
        additional["dependency"] = dependency
    params["slurm_additional_parameters"] = additional
    srun_args = []
    if s.container_image:
        srun_args.append(f"--container-image={s.container_image}")
    if s.container_mounts:
        mounts = s.container_mounts
        mounts = ",".join(mounts) if not isinstance(mounts, str) else mounts
        srun_args.append(f"--container-mounts={mounts}")
    if srun_args:
        params["slurm_srun_args"] = srun_args
    if extra:
        params.update(extra)
    return params


def make_executor(
    cfg: DictConfig, stage: str, nodes: int = 1, dependency: str | None = None, extra: dict[str, Any] | None = None
) -> submitit.Executor:
    """A Slurm executor for `stage` (folder `<run.root>/logs/<stage>/%j`), or submitit's LocalExecutor when
    `slurm.use_cluster` is false."""
    folder = log_folder(cfg, stage)
    if not bool(cfg.slurm.use_cluster):
        local = submitit.LocalExecutor(folder=folder / "%j")
        local.update_parameters(timeout_min=int(cfg.slurm.time_min), tasks_per_node=1, nodes=1)
        return local
    if not slurm_available():
        raise RuntimeError(
            "sbatch/sacct not found: bring up the local cluster (`make cluster-up`) or set "
            "slurm.use_cluster=false to run the stages with submitit's LocalExecutor"
        )
    executor = submitit.AutoExecutor(
        folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=int(cfg.slurm.max_num_timeout)
    )
    executor.update_parameters(**slurm_parameters(cfg, stage, nodes, dependency, extra))
    return executor
