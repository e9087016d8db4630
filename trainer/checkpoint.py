"""Training checkpoints `step_N/` written atomically, with top-k retention by a validation metric.

A checkpoint is first written to `tmp_step_N/` and renamed to `step_N/` only when complete, so a job killed
mid-write leaves a `tmp_` directory that is never loaded (and is removed by the next save). Only directories
named `step_<int>` that hold `training_info.json` count as checkpoints. Layout of one checkpoint:

    step_N/training_info.json     current_step, consumed_samples, epoch, ... and metric values ("val:accuracy")
    step_N/config.yaml            the resolved run config
    step_N/policy/                weights + optimizer + scheduler (written by the policy workers)
    step_N/train_dataloader.json  data order and position
    step_N/rng_state.pt           python / numpy / torch RNG states of the driver
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

STEP_DIR = re.compile(r"^step_(\d+)$")
INFO_FILE = "training_info.json"


class CheckpointManager:
    def __init__(self, checkpoint_dir: str | Path, metric_name: str | None = "val:accuracy",
                 higher_is_better: bool = True, keep_top_k: int | None = 3):
        if metric_name is not None and not str(metric_name).startswith(("val:", "train:")):
            raise ValueError(f"checkpointing.metric_name must start with 'val:' or 'train:', got {metric_name!r}")
        if keep_top_k is not None and keep_top_k < 1:
            raise ValueError(f"checkpointing.keep_top_k must be >= 1 or null, got {keep_top_k}")
        self.dir = Path(checkpoint_dir)
        self.metric_name, self.higher_is_better, self.keep_top_k = metric_name, higher_is_better, keep_top_k
        self.dir.mkdir(parents=True, exist_ok=True)
        self._recover_interrupted_swap()

    # ---- writing -------------------------------------------------------------------------------------------
    def save(self, step: int, training_info: Mapping[str, Any], config_yaml: str,
             write_contents: Callable[[Path], None]) -> Path:
        """Write checkpoint `step`: `write_contents(tmp_dir)` fills it; then it is renamed into place and old
        checkpoints beyond the top-k are deleted. Returns the final `step_N` path."""
        for stale in self.dir.glob("tmp_step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.dir / f"tmp_step_{step}"
        tmp.mkdir(parents=True)
        write_contents(tmp)
        info = {"current_step": step, **dict(training_info)}
        (tmp / "config.yaml").write_text(config_yaml)
        _write_json(tmp / INFO_FILE, info)  # last: its presence marks a complete directory
        final = self.dir / f"step_{step}"
        if final.exists():  # re-saving a step: swap, never leave a moment without a complete step_N
            old = self.dir / f"old_step_{step}"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(self.dir)
        self.enforce_retention()
        return final

    def _recover_interrupted_swap(self) -> None:
        for old in self.dir.glob("old_step_*"):
            final = self.dir / old.name[len("old_"):]
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(old, final)

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
        found = []
        for path in self.dir.iterdir() if self.dir.exists() else []:
            m = STEP_DIR.match(path.name)
            if m and path.is_dir():
                if (path / INFO_FILE).exists():
                    found.append((int(m.group(1)), path))
                else:
                    warnings.warn(f"ignoring incomplete checkpoint {path} (no {INFO_FILE})")
        return sorted(found)

    def _ranked(self, ckpts: list[tuple[int, Path]]) -> list[tuple[int, Path]]:
        """Best first: checkpoints with the metric by (metric, step); those without it after, newest first."""
        with_metric, without = [], []
        for step, path in ckpts:
            value = self.training_info(path).get(self.metric_name) if self.metric_name else None
            if value is None:
                without.append((step, path))
            else:
                sign = 1 if self.higher_is_better else -1
                with_metric.append(((sign * float(value), step), step, path))
        with_metric.sort(reverse=True)
        return [(s, p) for _, s, p in with_metric] + sorted(without, reverse=True)

    def latest(self) -> Path | None:
        ckpts = self.checkpoints()
        return ckpts[-1][1] if ckpts else None

    def best(self) -> Path | None:
        """The best checkpoint by the metric; None when no checkpoint has it."""
        ckpts = [(s, p) for s, p in self.checkpoints()
                 if self.metric_name and self.training_info(p).get(self.metric_name) is not None]
        if not ckpts:
            return None
        return self._ranked(ckpts)[0][1]

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
        return json.loads((Path(path) / INFO_FILE).read_text())


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
