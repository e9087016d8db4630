"""`make demo`'s pieces that need no cluster: the summary table, the progress echo of metrics, the Slurm probe,
and `resume` keeping the finished upstream stages. The demo itself runs on the real cluster in
tests/test_full_chain_slurm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.config import load_config
from jobs import chain, demo

EXAMPLE_ROWS = Path(__file__).resolve().parent / "data" / "example_rows.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_run(root: Path) -> None:
    write_jsonl(
        root / "train" / "metrics.jsonl",
        [
            {"step": 0, "val:accuracy": 0.125, "val:num_samples": 8},
            {
                "step": 1,
                "train:reward_mean": 0.5,
                "performance:samples_per_sec": 2.0,
                "val:accuracy": 0.375,
                "val:num_samples": 8,
            },
            {
                "step": 2,
                "train:reward_mean": 0.25,
                "performance:samples_per_sec": 4.0,
                "val:accuracy": 0.25,
                "val:num_samples": 8,
            },
        ],
    )
    for step, acc in ((1, 0.375), (2, 0.25)):
        ckpt = root / "train" / "checkpoints" / f"step_{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "training_info.json").write_text(json.dumps({"current_step": step, "val:accuracy": acc}))
    (root / "train" / "hf_model").mkdir()
    (root / "train" / "reward_accuracy.png").write_bytes(b"png")
    (root / "eval").mkdir()
    (root / "eval" / "summary.json").write_text(
        json.dumps(
            {
                "accuracy": 0.5,
                "num_episodes": 4,
                "model": "m",
                "model_kind": "hf",
                "per_category": {
                    "email": {"accuracy": 1.0, "episodes": 2},
                    "calendar": {"accuracy": 0.0, "episodes": 2},
                },
            }
        )
    )


def test_summary_reports_warm_start_best_final_speed_eval_and_paths(tmp_path):
    fake_run(tmp_path)
    text = "\n".join(demo.summary_lines(tmp_path, ["data", "train", "eval"]))
    assert "warm start 0.125 (step 0)" in text and "best 0.375 (step 1)" in text and "final 0.250 (step 2)" in text
    assert "on 8 held-out tasks" in text and "best - warm start = +0.250" in text
    assert "samples/s      3.000 mean over 2 GRPO steps" in text
    assert "eval accuracy  0.500 over 4 episodes" in text
    email = next(line for line in text.splitlines() if line.strip().startswith("email"))
    assert "1.000" in email and "(2)" in email
    best = next(line for line in text.splitlines() if line.startswith("best checkpoint"))
    assert str(tmp_path / "train" / "checkpoints" / "step_1") in best and "0.375" in best
    assert f"plot            {tmp_path / 'train' / 'reward_accuracy.png'}" in text


def test_summary_says_what_is_missing(tmp_path):
    text = "\n".join(demo.summary_lines(tmp_path, ["data"]))
    assert "no validation rows" in text and "summary.json missing" in text
    assert "(missing: " in next(line for line in text.splitlines() if line.startswith("HF model"))


def test_progress_echoes_each_new_metrics_line_once(tmp_path):
    said: list[str] = []
    progress = demo.Progress(tmp_path, {}, out=said.append)
    epoch_end = {"step": 2, "sft:nll": 2.5, "sft:epoch": 1, "sft:epoch_nll_mean": 3.0, "sft:epoch_seconds": 41.2}
    write_jsonl(tmp_path / "sft" / "metrics.jsonl", [{"step": 1, "sft:nll": 3.5}, epoch_end])
    write_jsonl(tmp_path / "train" / "metrics.jsonl", [{"step": 0, "val:accuracy": 0.25}])
    progress.poll_metrics()
    progress.poll_metrics()
    assert len(said) == 2, said  # the warm start's line per epoch, not one per step
    assert "sft" in said[0] and "epoch 1 to step 2 | mean nll=3 | 41s" in said[0], said[0]
    assert "train" in said[1] and "val_acc=0.25" in said[1]
    with open(tmp_path / "train" / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 1, "train:reward_mean": 0.5}) + "\n" + '{"step": 2, "trai')  # torn line
    progress.poll_metrics()
    assert len(said) == 3 and "step 1" in said[2] and "reward=0.5" in said[2]


def test_slurm_probe_says_why_without_slurm(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    ok, why = demo.slurm_responding()
    assert not ok and "sbatch" in why and "not installed" in why


def test_resume_keeps_finished_upstream_stages_after_a_config_change(tmp_path):
    from bench.chain_bench import noop_sanity
    from pipeline import data, prepare

    overrides = [f"run.root={tmp_path / 'run'}", f"+data.local.jsonl={EXAMPLE_ROWS}", "slurm.use_cluster=false"]
    cfg = chain.resolve_config(load_config("tiny_cpu", overrides))
    data.run(cfg), prepare.run(cfg), noop_sanity(cfg)
    actions = lambda plans: [(p.stage, p.action) for p in plans]  # noqa: E731
    # a longer run is no input of sanity: even a plain submit keeps it
    longer = chain.resolve_config(load_config("tiny_cpu", overrides + ["grpo.max_num_steps=99"]))
    assert actions(chain.plan_chain(longer, "train", use_cluster=False))[2] == ("sanity", "skip")
    # a GRPO setting that sanity's step exercises: a plain submit redoes sanity; resume keeps it and only trains
    more_steps = chain.resolve_config(load_config("tiny_cpu", overrides + ["grpo.normalize_rewards=false"]))
    assert actions(chain.plan_chain(more_steps, "train", use_cluster=False))[2] == ("sanity", "submit")
    plans = chain.plan_chain(more_steps, "train", always=["train"], use_cluster=False, keep_before="train")
    assert actions(plans) == [("data", "skip"), ("prepare", "skip"), ("sanity", "skip"), ("train", "submit")]
    assert plans[2].reason.startswith("kept as on disk (config changed")
    (tmp_path / "run" / "sanity" / "report.json").unlink()  # an incomplete stage is redone even on resume
    plans = chain.plan_chain(more_steps, "train", always=["train"], use_cluster=False, keep_before="train")
    assert actions(plans)[2] == ("sanity", "submit")


def test_demo_turns_the_warm_start_on_unless_told_otherwise():
    assert demo.demo_overrides(["grpo.max_num_steps=2"]) == ["grpo.max_num_steps=2", "sft.enabled=true"]
    assert demo.demo_overrides(["sft.enabled=false"]) == ["sft.enabled=false"]
    cfg = load_config("tiny_cpu", demo.demo_overrides([]))
    assert chain.chain_stages(cfg, "eval") == ["data", "prepare", "sanity", "sft", "train", "eval"]


def test_best_checkpoint_prefers_the_recorded_one_while_it_is_complete(tmp_path):
    fake_run(tmp_path)
    recorded = tmp_path / "train" / "checkpoints" / "step_2"
    (tmp_path / "train" / "manifest.json").write_text(json.dumps({"extra": {"best_checkpoint": str(recorded)}}))
    assert demo.best_checkpoint(tmp_path) == (recorded, 0.25)
    (recorded / "training_info.json").unlink()  # retention or a crash took it: fall back to what is on disk
    (tmp_path / "train" / "checkpoints" / "tmp_step_3").mkdir()
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert demo.best_checkpoint(tmp_path) == (tmp_path / "train" / "checkpoints" / "step_1", 0.375)
    assert demo.best_checkpoint(tmp_path / "nothing") == (None, None)
