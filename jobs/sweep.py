"""Scheduled sanity sweeps without scrontab (Debian's Slurm 22.05 does not ship it).

`install` submits a *tick* job. Each tick first submits the next tick with `--begin=now+<every>minutes` (so a
failing sweep never breaks the schedule), then submits, for every config variant of the matrix, the chain up to
`prepare` (skipped when up to date), and one job array that runs the `sanity` stage for all variants after them.
`remove` cancels the pending tick (and marks the sweep removed, so a running tick does not resubmit).

State: `<results>/<run.name>-sweep/sweep.json`; logs under `<results>/<run.name>-sweep/logs/`.
A matrix file is YAML: a list of override lists, e.g. ``[[grpo.seed=1], [grpo.seed=2, env.max_steps=4]]``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import submitit
from omegaconf import OmegaConf

from infra.config import load_config
from infra.io import atomic_write_json
from jobs import slurm_state
from jobs.chain import now_iso, resolve_config, submit_chain
from jobs.stages import make_job, slurm_parameters


def sweep_root(config_name: str, overrides: list[str]) -> Path:
    cfg = resolve_config(load_config(config_name, overrides))
    return Path(cfg.run.root).parent / f"{cfg.run.name}-sweep"


def tick_job_name(config_name: str, overrides: list[str]) -> str:
    return f"{load_config(config_name, overrides).run.name}-sweep-tick"


def read_matrix(path: str | None) -> list[list[str]]:
    if not path:
        return [[]]
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(data, list) or not all(isinstance(v, list) for v in data):
        raise ValueError(
            f"{path}: a sweep matrix is a YAML list of override lists, e.g. [[grpo.seed=1], [grpo.seed=2]]"
        )
    return [[str(item) for item in variant] for variant in data] or [[]]


def _state(root: Path) -> dict[str, Any]:
    path = root / "sweep.json"
    return json.loads(path.read_text()) if path.exists() else {"ticks": []}


def _save_state(root: Path, state: dict[str, Any]) -> None:
    atomic_write_json(root / "sweep.json", state)


def _tick_executor(config_name: str, overrides: list[str], begin: str | None) -> submitit.Executor:
    cfg = resolve_config(load_config(config_name, overrides))
    root = sweep_root(config_name, overrides)
    executor = submitit.AutoExecutor(folder=root / "logs" / "tick" / "%j", cluster="slurm")
    params = slurm_parameters(cfg, "sweep-tick")
    params.update(name=tick_job_name(config_name, overrides), timeout_min=10, cpus_per_task=1, mem_gb=1)
    if begin:
        params["slurm_additional_parameters"]["begin"] = begin
    executor.update_parameters(**params)
    return executor


class SweepTick:
    """One scheduled sweep run (a submitit job)."""

    def __init__(
        self,
        config_name: str,
        overrides: list[str],
        every_min: int,
        matrix: list[list[str]],
        sanity_target: str | None = None,
    ) -> None:
        self.config_name, self.overrides, self.every_min, self.matrix = config_name, list(overrides), every_min, matrix
        self.sanity_target = sanity_target  # another 'module:function' for the sanity stage (tests)

    def schedule_next(self) -> str:
        with submitit.helpers.clean_env():
            executor = _tick_executor(self.config_name, self.overrides, begin=f"now+{self.every_min}minutes")
            return str(executor.submit(self).job_id)

    def __call__(self) -> dict[str, Any]:
        root = sweep_root(self.config_name, self.overrides)
        state = _state(root)
        if state.get("removed"):
            print("[sweep] removed: not running, not rescheduling", flush=True)
            return {"removed": True}
        next_id = self.schedule_next()
        print(f"[sweep] next tick: job {next_id} in {self.every_min} min", flush=True)
        prep_ids, sanity_jobs, names = [], [], []
        with submitit.helpers.clean_env():
            for index, variant in enumerate(self.matrix):
                cfg = resolve_config(load_config(self.config_name, self.overrides + variant))
                OmegaConf.set_struct(cfg, False)
                cfg.run.name = f"{cfg.run.name}-sweep-{index}"
                cfg.run.root = str(root / f"variant_{index}")
                plans = submit_chain(cfg, until="prepare")
                prep_ids += [p.job_id for p in plans if p.job_id]
                sanity_jobs.append(make_job("sanity", cfg, self.sanity_target))
                names.append(" ".join(variant) or "(base)")
            base = resolve_config(load_config(self.config_name, self.overrides))
            executor = submitit.AutoExecutor(folder=root / "logs" / "sanity" / "%j", cluster="slurm")
            params = slurm_parameters(
                base, "sanity", dependency=("afterok:" + ":".join(prep_ids)) if prep_ids else None
            )
            params["name"] = f"{base.run.name}-sweep-sanity"
            executor.update_parameters(**params)
            array = executor.submit_array(sanity_jobs)
        array_id = array[0].job_id.split("_")[0] if array else ""
        state = _state(root)
        state.setdefault("ticks", []).append(
            {
                "at": now_iso(),
                "tick_job": os.environ.get("SLURM_JOB_ID", ""),
                "next_tick": next_id,
                "sanity_array": array_id,
                "variants": names,
            }
        )
        state["next_tick"] = next_id
        _save_state(root, state)
        print(f"[sweep] {len(sanity_jobs)} sanity run(s) as job array {array_id}", flush=True)
        return {"next_tick": next_id, "sanity_array": array_id, "variants": names}


def install(
    config_name: str,
    overrides: list[str],
    every_min: int = 1440,
    matrix_file: str | None = None,
    sanity_target: str | None = None,
) -> str:
    """Start the sweep now (first tick runs at once); returns the tick job id."""
    if every_min < 1:
        raise ValueError(f"--every-min must be at least 1, got {every_min}")
    remove(config_name, overrides, quiet=True)
    root = sweep_root(config_name, overrides)
    tick = SweepTick(config_name, overrides, every_min, read_matrix(matrix_file), sanity_target)
    _save_state(root, {"installed_at": now_iso(), "every_min": every_min, "matrix": tick.matrix, "ticks": []})
    job_id = str(_tick_executor(config_name, overrides, begin=None).submit(tick).job_id)
    state = _state(root)  # the tick may already have written to it
    state.update({"first_tick": job_id, "next_tick": state.get("next_tick", job_id)})
    _save_state(root, state)
    return job_id


def remove(config_name: str, overrides: list[str], quiet: bool = False) -> list[str]:
    """Cancel the pending/running tick jobs of this sweep; returns their ids."""
    root = sweep_root(config_name, overrides)
    name = tick_job_name(config_name, overrides)
    ids = [job_id for job_id, state in slurm_state.squeue_states(name=name).items() if slurm_state.is_active(state)]
    if ids:
        subprocess.run(["scancel", *ids], check=True)
    if root.exists() or not quiet:
        state = _state(root)
        state.update({"removed": True, "removed_at": now_iso()})
        _save_state(root, state)
    return ids
