"""A small resumable "trainer" for the fault-injection suite (tests/test_faults_slurm.py), run inside real Slurm
jobs as the train stage's `--target`.

It exercises what the real GRPO train job relies on, at a fraction of its cost: the job's Ray cluster over its
nodes (one actor per node holds a part of the "model"; every step calls both, so a lost node fails the step),
`trainer.checkpoint.CheckpointManager` (a checkpoint is written from the actors' state: Ray must be alive to save),
`trainer.metrics.MetricsLogger` (truncated to the resumed step), and the preemption flag (`infra.signals`) at step
boundaries, saved like trainer.grpo.loop does: save, then log the step's metrics.

Events (start, save, each with the job and restart) are appended to `<train>/events.jsonl` for the tests.
Config keys under `testing`: count (steps), step_s, save_period, state_bytes (padding per checkpoint),
with_ray (false: no Ray, single task).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from infra import manifest, signals


def _testing(cfg: DictConfig, key: str, default: Any) -> Any:
    section = cfg.get("testing") or {}
    return section.get(key, default)


def _event(out: Path, **fields: Any) -> None:
    fields.update(
        job=os.environ.get("SLURM_JOB_ID"), restart=os.environ.get("SLURM_RESTART_COUNT", "0"), at=time.time()
    )
    with open(out / "events.jsonl", "a") as handle:
        handle.write(json.dumps(fields) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class _Part:
    """What one node holds: a counter per step (the "weights")."""

    def __init__(self, value: int) -> None:
        self.value = value

    def step(self) -> int:
        self.value += 1
        return self.value

    def state(self) -> int:
        return self.value

    def node(self) -> str:
        return os.environ.get("SLURMD_NODENAME", "") or os.uname().nodename


def counting_ray_train(cfg: DictConfig) -> Path:
    from trainer.checkpoint import CheckpointManager
    from trainer.metrics import MetricsLogger

    out = manifest.stage_dir(cfg, "train")
    out.mkdir(parents=True, exist_ok=True)
    count, step_s = int(_testing(cfg, "count", 20)), float(_testing(cfg, "step_s", 0.5))
    save_period, padding = int(_testing(cfg, "save_period", 0)), int(_testing(cfg, "state_bytes", 0))
    checkpoints = CheckpointManager(out / "checkpoints", metric_name=None, keep_top_k=2)
    latest = checkpoints.latest()
    step = CheckpointManager.training_info(latest)["current_step"] if latest else 0
    values = json.loads((latest / "state.json").read_text())["values"] if latest else None
    metrics = MetricsLogger(out, resume_step=step, echo=False)
    _event(out, kind="start", step=step, pid=os.getpid(), node=os.environ.get("SLURMD_NODENAME"))

    parts: list[Any]
    if bool(_testing(cfg, "with_ray", True)):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from trainer.distributed import init_ray

        init_ray(address=os.environ["RAY_ADDRESS"])
        nodes = sorted((n for n in ray.nodes() if n.get("Alive")), key=lambda n: n["NodeManagerPort"])
        remote = ray.remote(num_cpus=0)(_Part)
        values = values or [0] * len(nodes)
        parts = [
            remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(v)
            for n, v in zip(nodes, values)
        ]

        def call(method: str) -> list[int]:
            return ray.get([getattr(part, method).remote() for part in parts], timeout=60)

    else:
        parts = [_Part(v) for v in (values or [0])]

        def call(method: str) -> list[int]:
            return [getattr(part, method)() for part in parts]

    def save(reason: str) -> None:
        state = call("state")  # from the actors: only a live Ray can give it

        def write(directory: Path) -> None:
            (directory / "state.json").write_text(json.dumps({"values": state}))
            if padding:
                (directory / "padding.bin").write_bytes(b"\0" * padding)

        checkpoints.save(step, {"consumed_samples": step}, "{}\n", write)
        _event(out, kind="save", step=step, reason=reason)

    while step < count:
        if signals.preemption_requested():
            break
        time.sleep(step_s)
        values = call("step")
        step += 1
        preempted = signals.preemption_requested()
        if preempted or step == count or (save_period and step % save_period == 0):
            save(str(signals.preemption_reason()) if preempted else "period")
        metrics.log(step, {"train:values": sum(values)})
    if signals.preemption_requested():
        latest = checkpoints.latest()
        if step and (latest is None or CheckpointManager.training_info(latest)["current_step"] != step):
            save(str(signals.preemption_reason()))
        print(f"[fault_stages] preemption ({signals.preemption_reason()}): saved step {step}, stopping", flush=True)
        return out
    manifest.write_manifest(cfg, "train", outputs=[out / "metrics.jsonl"])
    return out
