"""Training checkpoints `step_N/` written atomically, with top-k retention by a validation metric.

A checkpoint is first written to `tmp_step_N/` and renamed to `step_N/` only when complete, so a job killed
mid-write leaves a `tmp_` directory that is never loaded (and is removed by the next save). Only directories
named `step_<int>` that hold `training_info.json` count as checkpoints. Finding them (`list_checkpoints`,
`latest_checkpoint`, `best_checkpoint`, `read_training_info`) is done here only, for the trainer, the eval stage
and the login-node commands (`resume`, the demo summary): this module imports only the standard library and
infra.io, never torch or Ray. Layout of one checkpoint:

    step_N/training_info.json     current_step, consumed_samples, epoch, ... and metric values ("val:accuracy")
    step_N/config.yaml            the resolved run config
    step_N/policy/                weights + optimizer + scheduler (written by the policy workers)
    step_N/train_dataloader.json  data order and position
    step_N/rng_state.pt           python / numpy / torch RNG states of the driver
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from infra.io import atomic_write_json, replace_directory

STEP_DIR = re.compile(r"^step_(\d+)$")
INFO_FILE = "training_info.json"


# ---- finding checkpoints (read only: no directory is created or changed) -----------------------------------
def read_training_info(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / INFO_FILE).read_text())


def list_checkpoints(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints, oldest first. `tmp_step_N` (a write in progress or killed) and
    `old_step_N` (a swap in progress) never count; a `step_N` without its info file is warned about and skipped."""
    directory = Path(checkpoint_dir)
    found = []
    for path in directory.iterdir() if directory.is_dir() else []:
        m = STEP_DIR.match(path.name)
        if m and path.is_dir():
            if (path / INFO_FILE).exists():
                found.append((int(m.group(1)), path))
            else:
                warnings.warn(f"ignoring incomplete checkpoint {path} (no {INFO_FILE})", stacklevel=2)
    return sorted(found)


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(checkpoint_dir)
    return ckpts[-1][1] if ckpts else None


def rank_checkpoints(
    ckpts: list[tuple[int, Path]], metric_name: str | None, higher_is_better: bool = True
) -> list[tuple[int, Path]]:
    """Best first: checkpoints with the metric by (metric, step), ties to the newer; those without it after,
    newest first."""
    with_metric, without = [], []
    for step, path in ckpts:
        value = read_training_info(path).get(metric_name) if metric_name else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            sign = 1 if higher_is_better else -1
            with_metric.append(((sign * float(value), step), step, path))
        else:
            without.append((step, path))
    with_metric.sort(reverse=True)
    return [(s, p) for _, s, p in with_metric] + sorted(without, reverse=True)


def best_checkpoint(
    checkpoint_dir: str | Path, metric_name: str | None = "val:accuracy", higher_is_better: bool = True
) -> Path | None:
    """The complete checkpoint with the best `metric_name`; None when none has it."""
    ranked = rank_checkpoints(list_checkpoints(checkpoint_dir), metric_name, higher_is_better)
    if not ranked or not metric_name:
        return None
    step, path = ranked[0]
    value = read_training_info(path).get(metric_name)
    return path if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class CheckpointManager:
    def __init__(
        self,
        checkpoint_dir: str | Path,
        metric_name: str | None = "val:accuracy",
        higher_is_better: bool = True,
        keep_top_k: int | None = 3,
    ):
        if metric_name is not None and not str(metric_name).startswith(("val:", "train:")):
            raise ValueError(f"checkpointing.metric_name must start with 'val:' or 'train:', got {metric_name!r}")
        if keep_top_k is not None and keep_top_k < 1:
            raise ValueError(f"checkpointing.keep_top_k must be >= 1 or null, got {keep_top_k}")
        self.dir = Path(checkpoint_dir)
        self.metric_name, self.higher_is_better, self.keep_top_k = metric_name, higher_is_better, keep_top_k
        self.dir.mkdir(parents=True, exist_ok=True)
        self._recover_interrupted_swap()

    # ---- writing -------------------------------------------------------------------------------------------
    def save(
        self, step: int, training_info: Mapping[str, Any], config_yaml: str, write_contents: Callable[[Path], None]
    ) -> Path:
        """Write checkpoint `step`: `write_contents(tmp_dir)` fills it; then it is renamed into place and old
        checkpoints beyond the top-k are deleted. Returns the final `step_N` path."""
        for stale in self.dir.glob("tmp_step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.dir / f"tmp_step_{step}"
        tmp.mkdir(parents=True)
        write_contents(tmp)
        info = {"current_step": step, **dict(training_info)}
        (tmp / "config.yaml").write_text(config_yaml)
        atomic_write_json(tmp / INFO_FILE, info, sort_keys=True)  # last: its presence marks a complete directory
        # re-saving a step swaps through old_step_N: never a moment without a complete step_N (see __init__)
        final = replace_directory(tmp, self.dir / f"step_{step}", old=self.dir / f"old_step_{step}")
        self.enforce_retention()
        return final

    def _recover_interrupted_swap(self) -> None:
        for old in self.dir.glob("old_step_*"):
            final = self.dir / old.name[len("old_") :]
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.rename(final)

    def enforce_retention(self) -> list[Path]:
        """Delete checkpoints outside the top-k by metric; the latest is always kept. Returns the deleted."""
        if self.keep_top_k is None:
            return []
        ckpts = self.checkpoints()
        if not ckpts:
            return []
        keep = {ckpts[-1][0]} | {step for step, _ in self._ranked(ckpts)[: self.keep_top_k]}
        deleted = []
        for step, path in ckpts:
            if step not in keep:
                shutil.rmtree(path, ignore_errors=True)
                deleted.append(path)
        return deleted

    # ---- reading -------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first."""
        return list_checkpoints(self.dir)

    def _ranked(self, ckpts: list[tuple[int, Path]]) -> list[tuple[int, Path]]:
        return rank_checkpoints(ckpts, self.metric_name, self.higher_is_better)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.dir)

    def best(self) -> Path | None:
        """The best checkpoint by the metric; None when no checkpoint has it."""
        return best_checkpoint(self.dir, self.metric_name, self.higher_is_better)

    def get(self, step: int) -> Path:
        path = self.dir / f"step_{int(step)}"
        if not (path / INFO_FILE).exists():
            have = [s for s, _ in self.checkpoints()]
            raise FileNotFoundError(f"no complete checkpoint step_{step} in {self.dir} (have steps {have})")
        return path

    def resolve(self, spec: str | int | None) -> Path | None:
        """`None`/'latest' -> latest (or None when there is none); 'best'; 'step_N' or N -> that step."""
        if spec is None or spec == "latest":
            return self.latest()
        if spec == "best":
            best = self.best()
            if best is None:
                raise FileNotFoundError(f"resume_from=best but no checkpoint in {self.dir} has {self.metric_name}")
            return best
        text = str(spec)
        m = re.fullmatch(r"(?:step_)?(\d+)", text)
        if not m:
            raise ValueError(f"checkpointing.resume_from={spec!r}: use latest | best | step_N")
        return self.get(int(m.group(1)))

    @staticmethod
    def training_info(path: str | Path) -> dict[str, Any]:
        return read_training_info(path)
