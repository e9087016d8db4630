"""Stage `data`: get the task rows and split them 90/10, stratified by category.

Sources (`data.source`):
  hub   -- `datasets.load_dataset(data.hf_name)` (network or the local HF cache); failing is an error.
  auto  -- the hub when it or its cache answers quickly, else the local source.
  local -- `data.local.jsonl` if set (a file of rows), else rows from the env_sim task generator
           (`data.local.generator_rows`, `data.local.seed`) plus converted WorkBench tasks if `data.local.workbench`.

Outputs in `<run.root>/data/`: train.jsonl, validation.jsonl, manifest.json.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import threading
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig

from infra import manifest
from infra.io import atomic_write_jsonl, read_jsonl

HUB_PROBE_TIMEOUT_S = 3.0


# --- split -----------------------------------------------------------------------------------------------------


def _largest_remainder(counts: dict[str, int], total: int, rng: random.Random) -> dict[str, int]:
    """Share `total` among classes in proportion to `counts`: floors first, then one more to the classes with
    the largest remainders (ties in random order), the way sklearn's stratified splitter allocates."""
    n = sum(counts.values())
    exact = {label: count * total / n for label, count in counts.items()}
    shares = {label: math.floor(value) for label, value in exact.items()}
    left = total - sum(shares.values())
    labels = sorted(counts)
    rng.shuffle(labels)
    labels.sort(key=lambda label: exact[label] - shares[label], reverse=True)  # stable: ties keep shuffled order
    for label in labels:
        if left == 0:
            break
        if shares[label] < counts[label]:
            shares[label] += 1
            left -= 1
    return shares


def stratified_split(
    rows: Sequence[dict], key: str = "category", test_fraction: float = 0.1, seed: int = 42
) -> tuple[list[dict], list[dict]]:
    """(train, test) with `ceil(test_fraction * n)` test rows and each class split in proportion.

    Sizes match sklearn's `train_test_split(test_size=test_fraction, stratify=...)`: 1255 rows -> 1129 / 126.
    Rows keep their original order inside each split."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(rows)
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    if n_train < 1 or n_test < 1:
        raise ValueError(f"cannot split {n} rows with test_fraction={test_fraction}: one side would be empty")
    by_class: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        if key not in row:
            raise ValueError(f"row {row.get('id', index)} has no {key!r} to stratify by")
        by_class[str(row[key])].append(index)
    rng = random.Random(seed)
    counts = {label: len(indices) for label, indices in by_class.items()}
    train_counts = _largest_remainder(counts, n_train, rng)
    test_index: set[int] = set()
    for label in sorted(by_class):
        indices = list(by_class[label])
        rng.shuffle(indices)
        test_index.update(indices[train_counts[label] :])
    train = [row for index, row in enumerate(rows) if index not in test_index]
    test = [row for index, row in enumerate(rows) if index in test_index]
    return train, test


# --- sources ---------------------------------------------------------------------------------------------------


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """A TCP connect to the hub endpoint within `timeout` (DNS included: a stuck resolver must not hang a job)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _strip_nulls(value: Any) -> Any:
    """Arrow struct columns (older `datasets` versions) unify fields across rows, so every tool schema gains
    every other tool's parameters as nulls; the dataset's own JSON holds no nulls there, so dropping them
    restores the original rows (a no-op where `datasets` keeps the JSON as is)."""
    if isinstance(value, dict):
        return {key: _strip_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_strip_nulls(item) for item in value]
    return value


def normalize_hub_row(row: dict[str, Any]) -> dict[str, Any]:
    row = json.loads(json.dumps(row))
    params = row.get("responses_create_params")
    if isinstance(params, dict) and isinstance(params.get("tools"), list):
        params["tools"] = _strip_nulls(params["tools"])
    if isinstance(row.get("ground_truth"), list):
        row["ground_truth"] = _strip_nulls(row["ground_truth"])
    return row


def load_hub_rows(hf_name: str, split: str, offline: bool) -> list[dict]:
    """Rows of the hub dataset; `offline` reads only the local HF cache (no network)."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets  # heavy: only inside the stage

    if offline:  # the flags are read at import time; set them on the modules too in case they were imported
        datasets.config.HF_HUB_OFFLINE = True
        try:
            import huggingface_hub.constants as hub_constants

            hub_constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass
    dataset = datasets.load_dataset(hf_name, split=split)
    return [normalize_hub_row(row) for row in dataset]


def load_local_rows(cfg: DictConfig) -> tuple[list[dict], str, list[Path]]:
    local = cfg.data.local
    if local.jsonl:
        path = Path(local.jsonl).resolve()
        return read_jsonl(path), f"local file {path}", [path]
    rows: list[dict] = []
    parts = []
    if int(local.generator_rows) > 0:
        try:
            from env_sim.workplace_assistant.tasks.generator import generate_rows
        except ImportError as err:
            raise RuntimeError(
                f"data.source=local needs env_sim.workplace_assistant.tasks.generator ({err}); "
                "or set data.local.jsonl=<rows.jsonl>"
            ) from err
        difficulties = list(local.difficulties) if local.difficulties else None
        rows.extend(generate_rows(int(local.generator_rows), int(local.seed), difficulties=difficulties))
        parts.append(
            f"env_sim generator ({local.generator_rows} rows, seed {local.seed}"
            + (f", difficulties {difficulties})" if difficulties else ")")
        )
    if bool(local.workbench):
        from env_sim.workplace_assistant.tasks.workbench import convert_workbench

        converted = convert_workbench(start_id=len(rows))
        rows.extend(converted)
        parts.append(f"WorkBench ({len(converted)} rows)")
    if not rows:
        raise ValueError(
            "data.local produced no rows: set data.local.generator_rows > 0, "
            "data.local.workbench=true or data.local.jsonl=<file>"
        )
    return rows, " + ".join(parts), []


def load_rows(cfg: DictConfig) -> tuple[list[dict], str, list[Path]]:
    """(rows, description of the source, input files to record in the manifest)."""
    source = str(cfg.data.source)
    if source not in ("auto", "hub", "local"):
        raise ValueError(f"data.source must be auto, hub or local, got {source!r}")
    if source == "local":
        return load_local_rows(cfg)
    reachable = _hub_reachable()
    try:
        rows = load_hub_rows(cfg.data.hf_name, cfg.data.hf_split, offline=not reachable)
        return rows, f"hub {cfg.data.hf_name} ({'online' if reachable else 'cache'})", []
    except Exception as err:  # noqa: BLE001 -- any hub/cache failure means: use the local source
        if source == "hub":
            raise RuntimeError(f"data.source=hub: could not load {cfg.data.hf_name}: {err}") from err
        print(
            f"[data] hub dataset {cfg.data.hf_name} not reachable or cached ({type(err).__name__}); "
            "using the local source",
            flush=True,
        )
        return load_local_rows(cfg)


# --- stage -----------------------------------------------------------------------------------------------------


def category_table(train: list[dict], validation: list[dict], key: str) -> str:
    tc, vc = Counter(str(r[key]) for r in train), Counter(str(r[key]) for r in validation)
    width = max([len(key)] + [len(c) for c in tc | vc])
    lines = [f"{key:<{width}}  {'train':>6}  {'validation':>10}"]
    for label in sorted(tc | vc):
        lines.append(f"{label:<{width}}  {tc[label]:>6}  {vc[label]:>10}")
    lines.append(f"{'total':<{width}}  {len(train):>6}  {len(validation):>10}")
    return "\n".join(lines)


def run(cfg: DictConfig) -> Path:
    timer = manifest.StageTimer()
    out_dir = manifest.stage_dir(cfg, "data")
    rows, source, inputs = load_rows(cfg)
    timer.phase("load")
    key = str(cfg.data.stratify_by)
    train, validation = stratified_split(
        rows, key=key, test_fraction=float(cfg.data.validation_fraction), seed=int(cfg.data.split_seed)
    )
    train_path = atomic_write_jsonl(out_dir / "train.jsonl", train)
    validation_path = atomic_write_jsonl(out_dir / "validation.jsonl", validation)
    timer.phase("split_and_write")
    print(f"[data] {len(rows)} rows from {source} -> {len(train)} train / {len(validation)} validation", flush=True)
    print(category_table(train, validation, key), flush=True)
    counts = {
        "train": dict(Counter(str(r[key]) for r in train)),
        "validation": dict(Counter(str(r[key]) for r in validation)),
    }
    manifest.write_manifest(
        cfg,
        "data",
        inputs=inputs,
        outputs=[train_path, validation_path],
        timer=timer,
        extra={
            "source": source,
            "rows": len(rows),
            "train_rows": len(train),
            "validation_rows": len(validation),
            "per_category": counts,
        },
    )
    return out_dir
