"""The stage chain: data -> prepare -> sanity -> [sft] -> train -> eval, as Slurm jobs linked by afterok.

A stage whose manifest matches the current config is skipped (its hash covers only what it reads:
`infra.manifest.STAGE_READS`); once one stage is (re)submitted, every stage that reads its output, directly or
through another, is submitted too (its inputs will change). A stage still queued or running from an earlier
submission with the same config is reused instead of submitted twice. Job ids are recorded in
`<run.root>/jobs.json` for `status`, `logs` and `resume`, and the resolved config the jobs were given in
`<run.root>/config.yaml` (`resume` starts from it).

With `slurm.use_cluster=false` the same jobs run one after another through submitit's LocalExecutor.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from infra import manifest
from infra.io import atomic_write_json, atomic_write_text
from jobs import slurm_state
from jobs.stages import STAGE_ORDER, STAGES, log_folder, make_executor, make_job

RECORD_NAME = "jobs.json"
CONFIG_NAME = "config.yaml"
# Keys that belong to one submission and are not carried into a resumed one: the unix time the loop had to end
# by (make demo's budget) and the checkpoint that submission started from.
SUBMISSION_KEYS = ("grpo.deadline", "checkpointing.resume_from")


@dataclass
class StagePlan:
    stage: str
    action: str  # submit | skip | reuse
    reason: str
    job_id: str | None = None
    nodes: int = 1
    config_hash: str = ""
    target: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def chain_stages(cfg: DictConfig, until: str) -> list[str]:
    """Stages from `data` up to and including `until`; `sft` only when `sft.enabled`."""
    if until not in STAGE_ORDER:
        raise ValueError(f"unknown stage {until!r}; stages are {', '.join(STAGE_ORDER)}")
    stages = list(STAGE_ORDER[: STAGE_ORDER.index(until) + 1])
    if "sft" in stages and not bool(cfg.sft.enabled) and until != "sft":
        stages.remove("sft")
    return stages


def resolve_config(cfg: DictConfig, nodes: int | None = None) -> DictConfig:
    """A resolved copy with an absolute run.root (jobs run from the repo root, maybe on another machine)
    and, for multi-node training, cluster.num_nodes = nodes."""
    cfg = _plain_copy(cfg, resolve=False)
    OmegaConf.set_struct(cfg, False)
    cfg.run.root = str(Path(str(OmegaConf.select(cfg, "run.root"))).resolve())
    if nodes is not None:
        cfg.cluster.num_nodes = int(nodes)
    return _plain_copy(cfg, resolve=True)


def _plain_copy(cfg: DictConfig, resolve: bool) -> DictConfig:
    """A copy of `cfg` without its schema (plain containers), interpolations resolved if `resolve`."""
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=resolve))
    if not isinstance(copy, DictConfig):  # a DictConfig's container is a dict: cannot happen
        raise TypeError(f"copy of a DictConfig came back as {type(copy).__name__}")
    return copy


# --- jobs.json ----------------------------------------------------------------------------------------------------


def record_path(cfg: DictConfig) -> Path:
    return Path(cfg.run.root).resolve() / RECORD_NAME


def load_record(cfg: DictConfig) -> dict[str, Any]:
    path = record_path(cfg)
    if not path.exists():
        return {"stages": {}, "history": []}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt job record ({err})") from None


def save_record(cfg: DictConfig, record: dict[str, Any]) -> Path:
    record["updated_at"] = now_iso()
    return atomic_write_json(record_path(cfg), record)


# --- config.yaml: what the run's jobs were given ---------------------------------------------------------------


def config_record_path(cfg: DictConfig) -> Path:
    return Path(cfg.run.root).resolve() / CONFIG_NAME


def save_config(cfg: DictConfig) -> Path:
    """Record the resolved config of a submission (the one its jobs get), for `resume`."""
    return atomic_write_text(config_record_path(cfg), OmegaConf.to_yaml(cfg, resolve=True))


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {key: value for name, child in node.items() for key, value in _flat(child, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): node}


def config_changes(old: DictConfig, new: DictConfig) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every key whose resolved value differs, in key order; a key only
    one side has counts as None on the other."""
    before = _flat(OmegaConf.to_container(old, resolve=True))
    after = _flat(OmegaConf.to_container(new, resolve=True))
    return [
        (key, before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


# --- planning -------------------------------------------------------------------------------------------------


def active_jobs(job_ids: Iterable[str]) -> dict[str, str]:
    """Job id -> state of the jobs still queued or running (squeue also lists jobs that ended minutes ago:
    a FAILED one must not be reused)."""
    return {
        job_id: state for job_id, state in slurm_state.squeue_states(job_ids).items() if slurm_state.is_active(state)
    }


def plan_chain(
    cfg: DictConfig,
    until: str,
    nodes: int = 1,
    always: Iterable[str] = (),
    targets: dict[str, str] | None = None,
    use_cluster: bool = True,
    keep_before: str | None = None,
) -> list[StagePlan]:
    """What to do with each stage. `always`: stages to submit even if up to date (e.g. train on `resume`).
    `keep_before`: stages before this one are kept as they are on disk when their outputs are complete, even if
    the config changed (`resume` with more GRPO steps must not redo sanity and the warm start)."""
    targets = targets or {}
    always = set(always)
    record = load_record(cfg)
    previous = record.get("stages", {})
    active = active_jobs(p.get("job_id") for p in previous.values()) if use_cluster else {}
    plans: list[StagePlan] = []
    submitted: list[str] = []  # stages given a fresh job: the stages reading their outputs must run again
    running: list[str] = []  # stages whose earlier job is still queued/running: their outputs will change
    for stage in chain_stages(cfg, until):
        spec = STAGES[stage]
        stage_nodes = nodes if spec.multi_node else 1
        config_hash = manifest.stage_config_hash(cfg, stage)
        plan = StagePlan(stage, "submit", "", nodes=stage_nodes, config_hash=config_hash, target=targets.get(stage))
        old = previous.get(stage, {})
        old_id = str(old.get("job_id") or "")
        inputs = manifest.stage_inputs(cfg, stage)
        rerun_inputs = [name for name in submitted if name in inputs]
        changing_inputs = [name for name in running if name in inputs]
        if stage in always:
            plan.reason = "requested"
        elif (
            not rerun_inputs
            and old_id in active
            and old.get("config_hash") == config_hash
            and old.get("target") == plan.target
            and old.get("nodes", 1) == stage_nodes
        ):
            plan.action, plan.reason, plan.job_id = "reuse", f"job {old_id} still {active[old_id].lower()}", old_id
            running.append(stage)
        elif rerun_inputs or changing_inputs:
            plan.reason = f"{(rerun_inputs or changing_inputs)[-1]} runs again"
        else:
            up_to_date, why = manifest.check_up_to_date(cfg, stage)
            kept, _ = (
                _complete_on_disk(cfg, stage)
                if (not up_to_date and keep_before and stage in STAGE_ORDER[: STAGE_ORDER.index(keep_before)])
                else (False, "")
            )
            if up_to_date:
                plan.action, plan.reason = "skip", "manifest matches the config"
            elif kept:
                plan.action, plan.reason = "skip", f"kept as on disk ({why})"
            else:
                plan.reason = why
        if plan.action == "submit":
            submitted.append(stage)
        plans.append(plan)
    return plans


def _complete_on_disk(cfg: DictConfig, stage: str) -> tuple[bool, str]:
    """The stage's manifest and outputs are intact, whatever config they were made with."""
    try:
        record = manifest.read_manifest(cfg, stage)
    except ValueError as err:
        return False, str(err)
    if record is None:
        return False, "no manifest"
    return manifest.check_up_to_date(cfg, stage, expected_hash=record.get("config_hash"))


# --- submission -----------------------------------------------------------------------------------------------


def submit_chain(
    cfg: DictConfig,
    until: str,
    nodes: int = 1,
    always: Iterable[str] = (),
    targets: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
    keep_before: str | None = None,
) -> list[StagePlan]:
    """Submit what is missing of the chain up to `until`. Returns the plan with job ids filled in.

    `cfg` should come from `resolve_config`. `targets` maps a stage to 'module:function' to run instead of
    `pipeline.<stage>:run` (tests and benchmarks)."""
    use_cluster = bool(cfg.slurm.use_cluster)
    plans = plan_chain(cfg, until, nodes, always, targets, use_cluster, keep_before)
    record = load_record(cfg)
    record.update(
        {
            "run_name": cfg.run.name,
            "run_root": str(Path(cfg.run.root).resolve()),
            "executor": "slurm" if use_cluster else "local",
        }
    )
    if not use_cluster:
        log(
            "slurm.use_cluster=false: running the stages one after another with submitit's LocalExecutor "
            "(no Slurm: no queue, no dependencies, no requeue)"
        )
    previous_id: str | None = None
    if any(plan.action == "submit" for plan in plans):
        save_config(cfg)  # what the jobs about to be submitted get: `resume` starts from it
    for plan in plans:
        if plan.action == "skip":
            log(f"  {plan.stage:<8} skipped ({plan.reason})")
            record["stages"].setdefault(plan.stage, {}).update(
                {"action": "skip", "reason": plan.reason, "config_hash": plan.config_hash}
            )
            continue
        if plan.action == "reuse":
            log(f"  {plan.stage:<8} reusing job {plan.job_id} ({plan.reason})")
            previous_id = plan.job_id
            continue
        dependency = f"afterok:{previous_id}" if (previous_id and use_cluster) else None
        executor = make_executor(cfg, plan.stage, nodes=plan.nodes, dependency=dependency)
        job = executor.submit(make_job(plan.stage, cfg, plan.target))
        plan.job_id = str(job.job_id)
        entry = {
            "job_id": plan.job_id,
            "action": "submit",
            "reason": plan.reason,
            "config_hash": plan.config_hash,
            "nodes": plan.nodes,
            "target": plan.target,
            "dependency": dependency,
            "log_folder": str(log_folder(cfg, plan.stage)),
            "submitted_at": now_iso(),
        }
        record["stages"][plan.stage] = entry
        record.setdefault("history", []).append({"stage": plan.stage, **entry})
        save_record(cfg, record)
        after = f" after {previous_id}" if dependency else ""
        log(f"  {plan.stage:<8} submitted job {plan.job_id}{after} ({plan.reason}; {plan.nodes} node(s))")
        previous_id = plan.job_id
        if not use_cluster:
            job.result()  # raises with the stage's traceback if it failed
            log(f"  {plan.stage:<8} done")
    save_record(cfg, record)
    return plans


def plans_as_dicts(plans: list[StagePlan]) -> list[dict[str, Any]]:
    return [asdict(p) for p in plans]
