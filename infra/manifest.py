"""Stage manifests: what a stage produced, from which inputs, under which config, and how long it took.

A stage writes `<run.root>/<stage>/manifest.json` last, after all its outputs are in place. The chain skips a
stage whose manifest matches: same stage config hash, every recorded output still there with the same size,
every recorded input file unchanged. Only the standard library and omegaconf are imported (login nodes use this).

Typical use inside a stage::

    timer = manifest.StageTimer()
    ... write outputs ...
    manifest.write_manifest(cfg, "prepare", inputs=[train_in, val_in], outputs=[out1, out2], timer=timer,
                            extra={"dropped_rows": 0})
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from infra.io import atomic_write_json

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class StageReads:
    """What a stage's output is a function of, for its config hash.

    `keys`: config sections or dotted keys the stage reads. `ignores`: keys inside those that it does not read (a
    value the stage sets itself, a bound on another stage's loop). `upstream`: the stages whose outputs it reads;
    their hashes enter its hash, so a change upstream reaches exactly the stages that read that stage's output."""

    keys: tuple[str, ...]
    ignores: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()


# The one table of what each stage reads. Where a run executes (slurm.*), what it logs (logger.*) and which checkpoint
# a resumed job starts from are no stage's input. grpo.deadline is the unix time one submission's loop must end by.
# The GRPO run's length and pace (grpo.max_num_steps, max_num_epochs, max_train_minutes, validation, checkpointing)
# are inputs of train alone: sanity runs one step of its own size (pipeline.sanity: trainer_cfg), sft trains with
# the optimizer settings it takes from sft.* (pipeline.sft: sft_config).
STAGE_READS: dict[str, StageReads] = {
    "data": StageReads(("data",)),
    "prepare": StageReads(("prepare",), upstream=("data",)),
    "sanity": StageReads(
        ("run.seed", "env", "sanity", "policy", "grpo", "loss_fn"),
        ignores=(
            "grpo.num_prompts_per_step",  # sanity.num_rollouts instead
            "grpo.num_generations_per_prompt",
            "grpo.max_num_steps",
            "grpo.max_num_epochs",
            "grpo.max_train_minutes",
            "grpo.deadline",
            "grpo.val_period",
            "grpo.val_at_start",
            "grpo.val_at_end",
            "grpo.max_val_samples",
            "grpo.val_batch_size",
        ),
        upstream=("prepare",),
    ),
    "sft": StageReads(
        ("run.seed", "grpo.seed", "env", "policy", "loss_fn", "sft"),  # grpo.seed seeds the policy workers
        ignores=(
            "policy.train_global_batch_size",  # sft.train_global_batch_size instead, and so on
            "policy.train_micro_batch_size",
            "policy.megatron_cfg.optimizer.lr",
            "policy.megatron_cfg.optimizer.min_lr",
            "policy.megatron_cfg.scheduler.lr_warmup_iters",
        ),
        upstream=("prepare",),
    ),
    "train": StageReads(
        ("run.seed", "env", "policy", "grpo", "loss_fn", "checkpointing", "cluster"),
        ignores=("grpo.deadline", "checkpointing.resume_from"),
        upstream=("prepare", "sft"),  # sft only where it runs (sft.enabled)
    ),
    "eval": StageReads(
        (
            "run.seed",
            "grpo.seed",  # seeds the engines
            "env",
            "policy",
            "eval",
            "checkpointing.checkpoint_dir",  # where the best checkpoint is, when train left no hf_model
            "checkpointing.metric_name",
            "checkpointing.higher_is_better",
        ),
        upstream=("prepare", "train"),
    ),
}

# Files larger than this are recorded by size only (hashing checkpoints would cost more than the check is worth).
_HASH_LIMIT_BYTES = 64 * 1024 * 1024


def stage_dir(cfg: DictConfig, stage: str) -> Path:
    return Path(cfg.run.root).resolve() / stage


def manifest_path(cfg: DictConfig, stage: str) -> Path:
    return stage_dir(cfg, stage) / MANIFEST_NAME


def upstream_stages(cfg: DictConfig, stage: str) -> tuple[str, ...]:
    """The stages whose outputs `stage` reads (sft only when `sft.enabled`: without it train starts from
    policy.model_name)."""
    if stage not in STAGE_READS:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGE_READS)}")
    return tuple(s for s in STAGE_READS[stage].upstream if s != "sft" or bool(cfg.sft.enabled))


def stage_inputs(cfg: DictConfig, stage: str) -> set[str]:
    """Every stage whose output reaches `stage`, directly or through another stage."""
    found: set[str] = set()
    for name in upstream_stages(cfg, stage):
        found |= {name} | stage_inputs(cfg, name)
    return found


def stage_config_values(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The (resolved) config values `stage` reads, per STAGE_READS, without the keys it ignores."""
    reads = STAGE_READS[stage]
    parts: dict[str, Any] = {}
    for key in reads.keys:
        node = OmegaConf.select(cfg, key)
        parts[key] = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    for dotted in reads.ignores:
        section_key = next((k for k in reads.keys if dotted.startswith(k + ".")), None)
        if section_key is None:
            raise KeyError(f"STAGE_READS[{stage!r}]: ignored key {dotted} is under none of its keys {reads.keys}")
        section: Any = parts[section_key]
        *path, leaf = dotted[len(section_key) + 1 :].split(".")
        for name in path:
            section = section.get(name) if isinstance(section, dict) else None
        if isinstance(section, dict):
            section.pop(leaf, None)
    return parts


def stage_config_hash(cfg: DictConfig, stage: str) -> str:
    """Short stable hash of what `stage` reads: its config values (STAGE_READS) and its upstream stages' hashes."""
    parts = {
        "config": stage_config_values(cfg, stage),
        "upstream": {name: stage_config_hash(cfg, name) for name in upstream_stages(cfg, stage)},
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_path(path: str | Path) -> dict[str, Any]:
    """What we record about an input or output: kind, size, and a content hash for files small enough."""
    path = Path(path)
    if path.is_dir():
        return {"kind": "dir"}
    if not path.exists():
        raise FileNotFoundError(f"{path}: recorded in a manifest but does not exist")
    size = path.stat().st_size
    record: dict[str, Any] = {"kind": "file", "bytes": size}
    if size <= _HASH_LIMIT_BYTES:
        record["sha256"] = file_sha256(path)
    return record


class StageTimer:
    """Wall-clock start/end of a stage, plus optional named phases."""

    def __init__(self) -> None:
        self.started = time.time()
        self.phases: dict[str, float] = {}
        self._phase_start = self.started

    def phase(self, name: str) -> None:
        """Close the phase that ran since the previous call (or the start) under `name`."""
        now = time.time()
        self.phases[name] = round(now - self._phase_start, 3)
        self._phase_start = now

    def as_dict(self) -> dict[str, Any]:
        finished = time.time()
        iso = lambda t: _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")  # noqa: E731
        return {
            "started": iso(self.started),
            "finished": iso(finished),
            "seconds": round(finished - self.started, 3),
            "phases": dict(self.phases),
        }


def write_manifest(
    cfg: DictConfig,
    stage: str,
    inputs: Iterable[str | Path] = (),
    outputs: Iterable[str | Path] = (),
    timer: StageTimer | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Record a finished stage. Call it last: its presence means the outputs are complete."""
    out_dir = stage_dir(cfg, stage)
    record = {
        "stage": stage,
        "config_hash": stage_config_hash(cfg, stage),
        "config_keys": list(STAGE_READS[stage].keys),
        "config_ignores": list(STAGE_READS[stage].ignores),
        "upstream": list(upstream_stages(cfg, stage)),
        "inputs": {str(Path(p).resolve()): describe_path(p) for p in inputs},
        "outputs": {_relative(p, out_dir): describe_path(p) for p in outputs},
        "timings": (timer or StageTimer()).as_dict(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
        "extra": dict(extra or {}),
    }
    return atomic_write_json(out_dir / MANIFEST_NAME, record)


def _relative(path: str | Path, base: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def read_manifest(cfg: DictConfig, stage: str) -> dict[str, Any] | None:
    path = manifest_path(cfg, stage)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt manifest ({err})") from None


def check_up_to_date(cfg: DictConfig, stage: str, expected_hash: str | None = None) -> tuple[bool, str]:
    """(up_to_date, reason). The reason says what is missing or changed, for `status` and the chain's log.

    `expected_hash`: compare with this stage config hash instead of `cfg`'s (`status` passes the one recorded at
    submission, so that it needs only the run's name, not every override the run was submitted with)."""
    try:
        record = read_manifest(cfg, stage)
    except ValueError as err:
        return False, str(err)
    if record is None:
        return False, "no manifest"
    wanted = expected_hash or stage_config_hash(cfg, stage)
    if record.get("config_hash") != wanted:
        return False, f"config changed (manifest {record.get('config_hash')}, now {wanted})"
    out_dir = stage_dir(cfg, stage)
    for name, info in (record.get("outputs") or {}).items():
        path = Path(name) if os.path.isabs(name) else out_dir / name
        if not path.exists():
            return False, f"output missing: {path}"
        if info.get("kind") == "file" and path.stat().st_size != info.get("bytes"):
            return False, f"output changed: {path}"
    for name, info in (record.get("inputs") or {}).items():
        path = Path(name)
        if not path.exists():
            return False, f"input missing: {path}"
        if info.get("kind") == "file":
            if path.stat().st_size != info.get("bytes"):
                return False, f"input changed: {path}"
            if "sha256" in info and file_sha256(path) != info["sha256"]:
                return False, f"input changed: {path}"
    return True, "up to date"


def is_up_to_date(cfg: DictConfig, stage: str) -> bool:
    return check_up_to_date(cfg, stage)[0]
