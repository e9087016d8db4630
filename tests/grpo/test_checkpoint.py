"""CheckpointManager: atomic writes (a crashed write is never loaded), top-k retention, resume selection."""

import pytest

from trainer.checkpoint import CheckpointManager


def _save(mgr, step, metric=None, payload="w"):
    info = {"consumed_samples": step * 4}
    if metric is not None:
        info["val:accuracy"] = metric
    return mgr.save(
        step, info, "a: 1\n", lambda d: (d / "policy").mkdir() or (d / "policy" / "w.txt").write_text(payload)
    )


def test_crash_mid_write_is_never_loaded(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_top_k=None)
    _save(mgr, 1, 0.1)

    def crash(d):
        (d / "policy").mkdir()
        raise KeyboardInterrupt("killed while writing")

    with pytest.raises(KeyboardInterrupt):
        mgr.save(2, {}, "", crash)
    assert (tmp_path / "tmp_step_2").exists()
    # a hand-made step dir without training_info.json (e.g. copied half-way) does not count either
    (tmp_path / "step_3" / "policy").mkdir(parents=True)
    fresh = CheckpointManager(tmp_path, keep_top_k=None)
    with pytest.warns(UserWarning, match="incomplete"):
        assert fresh.latest().name == "step_1"
    _save(fresh, 4, 0.2)
    assert not (tmp_path / "tmp_step_2").exists()  # stale temp removed by the next save


def test_top_k_keeps_best_and_latest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_top_k=2)
    for step, acc in [(1, 0.5), (2, 0.9), (3, 0.1), (4, 0.7), (5, 0.2)]:
        _save(mgr, step, acc)
    kept = [s for s, _ in mgr.checkpoints()]
    assert kept == [2, 4, 5]  # top-2 by accuracy (0.9, 0.7) + the latest
    assert mgr.best().name == "step_2" and mgr.latest().name == "step_5"


def test_lower_is_better_and_unranked_checkpoints(tmp_path):
    mgr = CheckpointManager(tmp_path, metric_name="val:loss", higher_is_better=False, keep_top_k=1)
    mgr.save(1, {"val:loss": 0.3}, "", lambda d: None)
    mgr.save(2, {}, "", lambda d: None)  # no metric: not ranked, kept only while latest
    mgr.save(3, {"val:loss": 0.1}, "", lambda d: None)
    assert [s for s, _ in mgr.checkpoints()] == [3]
    mgr.save(4, {}, "", lambda d: None)
    assert [s for s, _ in mgr.checkpoints()] == [3, 4]
    assert mgr.best().name == "step_3"


def test_resave_same_step_swaps_atomically(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_top_k=None)
    _save(mgr, 7, 0.1, payload="first")
    _save(mgr, 7, 0.2, payload="second")
    assert (mgr.get(7) / "policy" / "w.txt").read_text() == "second"
    assert CheckpointManager.training_info(mgr.get(7))["val:accuracy"] == 0.2
    # interrupted swap: step_7 renamed away, new one not yet in place -> the old one is restored
    import os

    os.rename(tmp_path / "step_7", tmp_path / "old_step_7")
    assert CheckpointManager(tmp_path).latest().name == "step_7"


def test_resolve(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_top_k=None)
    assert mgr.resolve(None) is None
    _save(mgr, 2, 0.8)
    _save(mgr, 4, 0.3)
    assert mgr.resolve("latest").name == "step_4"
    assert mgr.resolve("best").name == "step_2"
    assert mgr.resolve("step_2").name == "step_2"
    with pytest.raises(FileNotFoundError, match="step_3"):
        mgr.resolve("step_3")
    with pytest.raises(ValueError, match="resume_from"):
        mgr.resolve("yesterday")
    with pytest.raises(ValueError, match="metric_name"):
        CheckpointManager(tmp_path, metric_name="accuracy")


def test_discovery_reads_without_changing_anything_and_skips_tmp_old_and_incomplete(tmp_path):
    """The functions the eval stage and the login-node commands (resume, demo summary) use."""
    import json

    from trainer.checkpoint import best_checkpoint, latest_checkpoint, list_checkpoints, read_training_info

    missing = tmp_path / "none"
    assert list_checkpoints(missing) == [] and latest_checkpoint(missing) is None
    assert best_checkpoint(missing) is None and not missing.exists()  # nothing created
    for step, acc in ((2, 0.5), (10, 0.5), (3, 0.25)):
        (tmp_path / f"step_{step}").mkdir()
        (tmp_path / f"step_{step}" / "training_info.json").write_text(json.dumps({"val:accuracy": acc}))
    (tmp_path / "step_11").mkdir()  # no training_info.json: incomplete
    for name in ("tmp_step_12", "old_step_13"):  # a write / a swap in progress
        (tmp_path / name).mkdir()
        (tmp_path / name / "training_info.json").write_text(json.dumps({"val:accuracy": 0.9}))
    (tmp_path / "step_x").mkdir()
    with pytest.warns(UserWarning, match="incomplete checkpoint .*step_11"):
        assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3, 10]  # numeric order, not step_10 < step_2
    with pytest.warns(UserWarning):
        assert latest_checkpoint(tmp_path).name == "step_10"
    with pytest.warns(UserWarning):
        assert best_checkpoint(tmp_path).name == "step_10"  # tie at 0.5: the newer
    with pytest.warns(UserWarning):
        assert best_checkpoint(tmp_path, "val:accuracy", higher_is_better=False).name == "step_3"
    with pytest.warns(UserWarning):
        assert best_checkpoint(tmp_path, "val:loss") is None  # no checkpoint has it
    assert read_training_info(tmp_path / "step_3") == {"val:accuracy": 0.25}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "old_step_13",
        "step_10",
        "step_11",
        "step_2",
        "step_3",
        "step_x",
        "tmp_step_12",
    ]


def test_login_commands_import_checkpoint_without_heavy_packages():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, trainer.checkpoint; "
        "print(','.join(m for m in ('torch', 'ray', 'vllm', 'numpy', 'megatron') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == ""
