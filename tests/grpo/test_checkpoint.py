"""CheckpointManager: atomic writes (a crashed write is never loaded), top-k retention, resume selection."""
import pytest

from trainer.checkpoint import CheckpointManager


def _save(mgr, step, metric=None, payload="w"):
    info = {"consumed_samples": step * 4}
    if metric is not None:
        info["val:accuracy"] = metric
    return mgr.save(step, info, "a: 1\n", lambda d: (d / "policy").mkdir() or (d / "policy" / "w.txt").write_text(payload))


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
    mgr.save(2, {}, "", lambda d: None)   # no metric: not ranked, kept only while latest
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
