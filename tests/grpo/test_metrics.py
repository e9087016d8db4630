"""MetricsLogger: jsonl lines, truncation on resume, the PNG plot, wandb offline."""

import json

from trainer.metrics import MetricsLogger, format_console_line


def test_jsonl_plot_and_resume_truncation(tmp_path, capsys):
    log = MetricsLogger(tmp_path)
    for step in range(1, 5):
        m = {"train:reward_mean": 0.1 * step, "train:loss": 0.5, "grad_norm": 1.0}
        if step % 2 == 0:
            m["val:accuracy"] = 0.2 * step
        log.log(step, m)
    assert "step 4 | reward=0.4" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[1]["val:accuracy"] == 0.4
    png = log.plot()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    resumed = MetricsLogger(tmp_path, resume_step=2)
    assert [r["step"] for r in resumed.read()] == [1, 2]


def test_wandb_offline_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    log = MetricsLogger(tmp_path, {"project": "p", "name": "n"}, wandb_enabled=True, echo=False)
    log.log(1, {"train:reward_mean": 0.5})
    log.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_console_line_skips_missing_and_non_numeric():
    assert format_console_line(3, {"train:loss": 0.25, "grad_norm": "nan"}) == "step 3 | loss=0.25"


def test_resume_truncation_drops_a_torn_line(tmp_path):
    log = MetricsLogger(tmp_path, echo=False)
    log.log(1, {"train:loss": 0.5})
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "train:lo')  # the job was killed mid-append
    assert [r["step"] for r in MetricsLogger(tmp_path, resume_step=1, echo=False).read()] == [1]


def test_accuracy_counts_full_reward_up_to_rounding_overall_and_per_category():
    """One definition for train:accuracy, val:accuracy and the eval stage's summary."""
    from types import SimpleNamespace

    from trainer.metrics import SUCCESS_TOLERANCE, accuracy_summary, is_success

    assert is_success(1.0) and is_success(sum([0.1] * 10)) and is_success(1.0 - SUCCESS_TOLERANCE / 2)
    assert not is_success(0.999) and not is_success(0.0)
    episodes = [
        SimpleNamespace(reward=r, category=c)
        for r, c in ((1.0, "email"), (0.0, "email"), (0.9999999999999999, "calendar"), (0.5, "calendar"), (1, "crm"))
    ]
    assert accuracy_summary(episodes) == {
        "accuracy": 0.6,
        "num_episodes": 5,
        "per_category": {
            "calendar": {"accuracy": 0.5, "episodes": 2},
            "crm": {"accuracy": 1.0, "episodes": 1},
            "email": {"accuracy": 0.5, "episodes": 2},
        },
    }
    assert accuracy_summary([SimpleNamespace(reward=1.0)])["per_category"] == {"all": {"accuracy": 1.0, "episodes": 1}}
    assert accuracy_summary([]) == {"accuracy": 0.0, "num_episodes": 0, "per_category": {}}
