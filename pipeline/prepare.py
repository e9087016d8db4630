"""Stage `prepare`: validate every row, add `agent_ref`, write the files the trainer reads, with metrics.

Validation is the workplace assistant's `validate_row`: schema, tool names, argument JSON against the tool schemas, and
a replay of the ground truth on a fresh database that must not produce a tool error. A bad row stops the stage
with `file:line: problem`; with `prepare.drop_bad_rows=true` bad rows are dropped and counted instead.

Outputs in `<run.root>/prepare/`: train_prepare.jsonl, validation_prepare.jsonl, train_metrics.json,
validation_metrics.json, manifest.json.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from infra import manifest
from infra.io import atomic_write_json, atomic_write_jsonl, iter_jsonl

SPLITS = ("train", "validation")
MAX_REPORTED_DROPS = 50


class BadRowError(ValueError):
    """A row that failed validation; the message starts with file:line."""


def _row_validator() -> Callable[[dict], list[str]]:
    try:
        from env_sim.workplace_assistant.tasks.rows import validate_row
        from env_sim.workplace_assistant.tools import TOOL_NAMES  # noqa: F401 -- validate_row needs it
    except ImportError as err:
        raise RuntimeError(f"prepare needs env_sim's row validator (workplace_assistant.tasks.rows): {err}") from err
    return lambda row: list(validate_row(row, replay=True))


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(values), "mean": round(sum(values) / len(values), 3), "max": max(values)}


def split_metrics(split: str, rows: list[dict], dropped: list[dict[str, Any]]) -> dict[str, Any]:
    gt_tools = Counter(call["name"] for row in rows for call in row["ground_truth"])
    return {
        "split": split,
        "rows": len(rows),
        "dropped_rows": len(dropped),
        "dropped": dropped[:MAX_REPORTED_DROPS],
        "categories": dict(sorted(Counter(row["category"] for row in rows).items())),
        "tools_per_row": _spread([len(row["responses_create_params"]["tools"]) for row in rows]),
        "ground_truth_calls_per_row": _spread([len(row["ground_truth"]) for row in rows]),
        "ground_truth_tools": dict(gt_tools.most_common()),
    }


def prepare_file(
    source: Path, agent_ref: dict[str, Any], drop_bad_rows: bool, validate: Callable[[dict], list[str]]
) -> tuple[list[dict], list[dict[str, Any]]]:
    """(prepared rows, dropped-row reports) for one JSONL file."""
    kept: list[dict] = []
    dropped: list[dict[str, Any]] = []
    for line, row in iter_jsonl(source):
        problems = validate(row)
        if problems:
            if not drop_bad_rows:
                more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
                raise BadRowError(
                    f"{source}:{line}: {problems[0]}{more}; set prepare.drop_bad_rows=true to drop bad rows instead"
                )
            dropped.append({"line": line, "id": row.get("id"), "problems": problems})
            continue
        kept.append({**row, "agent_ref": dict(agent_ref)})
    return kept, dropped


def run(cfg: DictConfig) -> Path:
    timer = manifest.StageTimer()
    data_dir = manifest.stage_dir(cfg, "data")
    out_dir = manifest.stage_dir(cfg, "prepare")
    agent_ref = OmegaConf.to_container(cfg.prepare.agent_ref, resolve=True)
    if not isinstance(agent_ref, dict):
        raise TypeError(f"prepare.agent_ref must be a mapping, got {type(agent_ref).__name__}")
    drop = bool(cfg.prepare.drop_bad_rows)
    validate = _row_validator()
    inputs, outputs, summary = [], [], {}
    for split in SPLITS:
        source = data_dir / f"{split}.jsonl"
        rows, dropped = prepare_file(source, {str(k): v for k, v in agent_ref.items()}, drop, validate)
        if not rows:
            raise BadRowError(f"{source}: no valid rows left ({len(dropped)} dropped)")
        metrics = split_metrics(split, rows, dropped)
        outputs.append(atomic_write_jsonl(out_dir / f"{split}_prepare.jsonl", rows))
        outputs.append(atomic_write_json(out_dir / f"{split}_metrics.json", metrics))
        inputs.append(source)
        summary[split] = {"rows": len(rows), "dropped_rows": len(dropped)}
        note = f", dropped {len(dropped)} bad rows (see {split}_metrics.json)" if dropped else ""
        print(f"[prepare] {split}: {len(rows)} rows valid{note}", flush=True)
        timer.phase(split)
    manifest.write_manifest(cfg, "prepare", inputs=inputs, outputs=outputs, timer=timer, extra=summary)
    return out_dir
