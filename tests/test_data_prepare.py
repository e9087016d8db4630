"""Stages `data` and `prepare` as plain functions (no Slurm): split sizes, files, manifests, bad-row errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from infra import manifest
from infra.config import load_config
from infra.io import JsonlError, atomic_write_jsonl, read_jsonl
from pipeline import data, prepare

EXAMPLE_ROWS = Path(__file__).resolve().parent / "data" / "example_rows.jsonl"


def config(tmp_path: Path, *extra: str):
    return load_config("tiny_cpu", [f"run.root={tmp_path / 'run'}", "data.source=local", *extra])


def synthetic_rows(counts: dict[str, int]) -> list[dict]:
    rows, next_id = [], 0
    for category, n in counts.items():
        for _ in range(n):
            rows.append({"id": next_id, "category": category})
            next_id += 1
    return rows


# --- split ---------------------------------------------------------------------------------------------------


def test_split_sizes_match_sklearn_for_the_real_dataset_size():
    # 1255 rows over 5 categories -> 1129 / 126, as train_test_split(test_size=0.1, stratify=...) gives
    rows = synthetic_rows({"email": 301, "calendar": 290, "analytics": 222, "pm": 230, "crm": 212})
    train, test = data.stratified_split(rows, test_fraction=0.1, seed=42)
    assert (len(train), len(test)) == (1129, 126)
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in test})
    assert len({r["id"] for r in train} | {r["id"] for r in test}) == 1255
    per_class = Counter(r["category"] for r in test)
    for category, total in Counter(r["category"] for r in rows).items():
        assert abs(per_class[category] - total * 126 / 1255) < 1.0, (category, per_class)


def test_split_is_deterministic_per_seed_and_changes_with_it():
    rows = synthetic_rows({"a": 37, "b": 41, "c": 22})
    first = data.stratified_split(rows, seed=42)
    assert first == data.stratified_split(rows, seed=42)
    assert [r["id"] for r in first[1]] != [r["id"] for r in data.stratified_split(rows, seed=7)[1]]


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_split_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        data.stratified_split(synthetic_rows({"a": 10}), test_fraction=fraction)


def test_split_names_a_row_without_the_stratify_key():
    with pytest.raises(ValueError, match="row 5 has no 'category'"):
        data.stratified_split(synthetic_rows({"a": 5}) + [{"id": 5}], test_fraction=0.2)


# --- io --------------------------------------------------------------------------------------------------------


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(JsonlError, match=r"rows\.jsonl:3: invalid JSON"):
        read_jsonl(path)


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_jsonl(tmp_path / "out.jsonl", [{"x": 1}, {"x": 2}])
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
    assert read_jsonl(tmp_path / "out.jsonl") == [{"x": 1}, {"x": 2}]


# --- data stage ---------------------------------------------------------------------------------------------------


def test_data_stage_from_a_local_file_writes_splits_and_manifest(tmp_path, capsys):
    cfg = config(tmp_path, f"+data.local.jsonl={EXAMPLE_ROWS}")
    out = data.run(cfg)
    train, validation = read_jsonl(out / "train.jsonl"), read_jsonl(out / "validation.jsonl")
    assert (len(train), len(validation)) == (4, 1)
    assert sorted(r["id"] for r in train + validation) == [0, 1, 2, 3, 4]
    printed = capsys.readouterr().out
    assert "workplace_assistant_customer_relationship_manager" in printed and "4 train / 1 validation" in printed
    record = json.loads((out / "manifest.json").read_text())
    assert record["extra"]["train_rows"] == 4 and str(EXAMPLE_ROWS) in record["inputs"]
    assert manifest.is_up_to_date(cfg, "data")


def test_data_stage_uses_the_env_sim_generator_by_default(tmp_path):
    pytest.importorskip("env_sim.workplace_assistant.tasks.generator")
    cfg = config(tmp_path, "data.local.generator_rows=50")
    out = data.run(cfg)
    assert len(read_jsonl(out / "train.jsonl")) == 45 and len(read_jsonl(out / "validation.jsonl")) == 5


def test_hub_rows_survive_arrow_normalisation(tmp_path):
    """Rows loaded through `datasets` (Arrow; older versions pad every tool schema with the other tools'
    parameters as nulls) come back from `normalize_hub_row` exactly as in the JSONL file."""
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(
        "json", data_files=str(EXAMPLE_ROWS), split="train", cache_dir=str(tmp_path / "cache")
    )
    original = read_jsonl(EXAMPLE_ROWS)
    assert [data.normalize_hub_row(dict(r)) for r in loaded] == original


def test_auto_source_falls_back_to_local_when_the_hub_is_unreachable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    cfg = load_config(
        "tiny_cpu", [f"run.root={tmp_path / 'run'}", "data.source=auto", f"+data.local.jsonl={EXAMPLE_ROWS}"]
    )
    rows, source, _ = data.load_rows(cfg)
    assert len(rows) == 5 and source.startswith("local file")
    assert "using the local source" in capsys.readouterr().out


# --- manifest --------------------------------------------------------------------------------------------------


def test_manifest_goes_stale_on_config_change_and_on_changed_outputs(tmp_path):
    cfg = config(tmp_path, f"+data.local.jsonl={EXAMPLE_ROWS}")
    out = data.run(cfg)
    assert manifest.check_up_to_date(cfg, "data") == (True, "up to date")
    changed = config(tmp_path, f"+data.local.jsonl={EXAMPLE_ROWS}", "data.split_seed=7")
    assert manifest.check_up_to_date(changed, "data")[1].startswith("config changed")
    # config keys of other stages do not matter to `data`
    assert manifest.is_up_to_date(config(tmp_path, f"+data.local.jsonl={EXAMPLE_ROWS}", "grpo.max_num_steps=3"), "data")
    (out / "validation.jsonl").write_text("")
    assert manifest.check_up_to_date(cfg, "data")[1].startswith("output changed")


def stage_hashes(cfg) -> dict[str, str]:
    return {stage: manifest.stage_config_hash(cfg, stage) for stage in manifest.STAGE_READS}


def changed_stages(tmp_path: Path, *overrides: str) -> list[str]:
    """The stages whose config hash an override changes (tiny_cpu with the warm start on)."""
    before = stage_hashes(config(tmp_path, "sft.enabled=true"))
    after = stage_hashes(config(tmp_path, "sft.enabled=true", *overrides))
    return [stage for stage in manifest.STAGE_READS if before[stage] != after[stage]]


def test_a_stage_hash_covers_what_the_stage_reads_and_its_inputs_only(tmp_path):
    # the GRPO run's length, budget and checkpoints are train's (and eval's, through train's model) alone
    for key in ("grpo.max_num_steps=7", "grpo.max_train_minutes=5", "checkpointing.keep_top_k=1",
                "checkpointing.save_period=3", "grpo.val_period=2", "grpo.max_num_epochs=1"):  # fmt: skip
        assert changed_stages(tmp_path, key) == ["train", "eval"], key
    assert changed_stages(tmp_path, "grpo.deadline=1800000000") == []  # one submission's end, no input
    assert changed_stages(tmp_path, "slurm.time_min=5", "logger.wandb_enabled=false") == []
    # a GRPO knob the sanity step exercises
    assert changed_stages(tmp_path, "grpo.normalize_rewards=false") == ["sanity", "train", "eval"]
    # the data and the model reach every stage that reads them
    assert changed_stages(tmp_path, "data.split_seed=7") == list(manifest.STAGE_READS)
    assert changed_stages(tmp_path, "prepare.drop_bad_rows=true") == ["prepare", "sanity", "sft", "train", "eval"]
    model = ["sanity", "sft", "train", "eval"]
    assert changed_stages(tmp_path, "+policy.tiny.num_layers=2") == model
    assert changed_stages(tmp_path, "run.seed=3") == model  # seeds the tiny model's initial weights
    # the warm start's own settings: sft, and train and eval that start from its model
    assert changed_stages(tmp_path, "sft.lr=0.01") == ["sft", "train", "eval"]
    # the GRPO optimizer's learning rate is not the warm start's (sft.lr is)
    assert changed_stages(tmp_path, "policy.megatron_cfg.optimizer.lr=0.002") == ["sanity", "train", "eval"]
    assert changed_stages(tmp_path, "sanity.num_rollouts=3") == ["sanity"]
    assert changed_stages(tmp_path, "eval.num_generations_per_prompt=2") == ["eval"]
    # without the warm start, train starts from policy.model_name: sft's settings are no input of it
    plain = config(tmp_path)
    assert manifest.stage_config_hash(plain, "train") == manifest.stage_config_hash(
        config(tmp_path, "sft.lr=0.01"), "train"
    )


def test_resume_choice_does_not_change_the_train_hash(tmp_path):
    cfg = config(tmp_path)
    resumed = config(tmp_path, "+checkpointing.resume_from=best")
    assert manifest.stage_config_hash(cfg, "train") == manifest.stage_config_hash(resumed, "train")
    assert manifest.stage_config_hash(cfg, "train") != manifest.stage_config_hash(
        config(tmp_path, "grpo.max_num_steps=3"), "train"
    )


# --- prepare stage -------------------------------------------------------------------------------------------------


def _prepared(tmp_path: Path, rows: list[dict], *extra: str):
    source = tmp_path / "rows.jsonl"
    atomic_write_jsonl(source, rows)
    cfg = config(tmp_path, f"+data.local.jsonl={source}", *extra)
    data.run(cfg)
    return cfg


def test_prepare_adds_agent_ref_and_writes_metrics(tmp_path):
    pytest.importorskip("env_sim.execute")
    cfg = _prepared(tmp_path, read_jsonl(EXAMPLE_ROWS))
    out = prepare.run(cfg)
    rows = read_jsonl(out / "train_prepare.jsonl") + read_jsonl(out / "validation_prepare.jsonl")
    assert len(rows) == 5
    assert all(
        r["agent_ref"] == {"type": "responses_api_agents", "name": "workplace_assistant_simple_agent"} for r in rows
    )
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["rows"] == 4 and metrics["dropped_rows"] == 0
    assert metrics["tools_per_row"] == {"min": 27, "mean": 27.0, "max": 27}
    assert metrics["ground_truth_calls_per_row"]["max"] >= 1
    assert manifest.is_up_to_date(cfg, "prepare")


def test_prepare_names_file_line_and_problem_of_a_bad_row(tmp_path):
    pytest.importorskip("env_sim.execute")
    rows = read_jsonl(EXAMPLE_ROWS)
    rows[3]["ground_truth"][0]["arguments"] = "{not json"
    cfg = _prepared(tmp_path, rows)
    train = read_jsonl(manifest.stage_dir(cfg, "data") / "train.jsonl")
    split, line = (
        ("train", 1 + [r["id"] for r in train].index(3)) if any(r["id"] == 3 for r in train) else ("validation", 1)
    )
    with pytest.raises(
        prepare.BadRowError,
        match=rf"{split}\.jsonl:{line}: row 3 ground_truth\[0\]: arguments "
        r"are not valid JSON",
    ):
        prepare.run(cfg)
    assert not manifest.manifest_path(cfg, "prepare").exists()


def test_prepare_can_drop_bad_rows_and_says_how_many(tmp_path, capsys):
    pytest.importorskip("env_sim.execute")
    rows = read_jsonl(EXAMPLE_ROWS) * 4
    for index, row in enumerate(rows):
        row = rows[index] = json.loads(json.dumps(row))
        row["id"] = index
    rows[0]["ground_truth"][0]["name"] = "no_such_tool"
    rows[7]["responses_create_params"]["tools"] = rows[7]["responses_create_params"]["tools"][:5]
    cfg = _prepared(tmp_path, rows, "prepare.drop_bad_rows=true")
    out = prepare.run(cfg)
    metrics = [json.loads((out / f"{s}_metrics.json").read_text()) for s in ("train", "validation")]
    assert sum(m["dropped_rows"] for m in metrics) == 2
    assert sum(m["rows"] for m in metrics) == 18
    assert {d["id"] for m in metrics for d in m["dropped"]} == {0, 7}
    assert "dropped" in capsys.readouterr().out
