"""`python -m jobs`: how many nodes the train job gets - the recipe's cluster.num_nodes unless --nodes is given."""

from __future__ import annotations

import pytest

import jobs.__main__ as cli


@pytest.fixture
def submitted(monkeypatch):
    """The arguments submit_chain is called with (nothing is submitted)."""
    calls: list[dict] = []

    def capture(cfg, until, nodes, **kwargs):
        calls.append({"nodes": nodes, "num_nodes": int(cfg.cluster.num_nodes), "until": until})
        return []

    monkeypatch.setattr(cli.chain, "submit_chain", capture)
    monkeypatch.setattr(cli, "slurm_available", lambda: True)
    return calls


@pytest.mark.parametrize(
    "argv, nodes",
    [
        (["submit", "--until", "train"], 1),  # tiny_cpu: cluster.num_nodes 1
        (["submit", "--until", "train", "cluster.num_nodes=3"], 3),  # the recipe's value, not a default of 1
        (["submit", "--until", "train", "--nodes", "2", "cluster.num_nodes=3"], 2),  # the command line wins
        (["resume", "cluster.num_nodes=4"], 4),
    ],
)
def test_train_nodes_come_from_the_recipe_unless_given(submitted, tmp_path, argv, nodes, monkeypatch):
    if argv[0] == "resume":  # resume needs a checkpoint on disk
        step = tmp_path / "train" / "checkpoints" / "step_2"
        step.mkdir(parents=True)
        (step / "training_info.json").write_text('{"current_step": 2}')
    assert cli.main(["--config", "tiny_cpu", *argv, f"run.root={tmp_path}"]) == 0
    assert submitted == [{"nodes": nodes, "num_nodes": nodes, "until": "train"}]


def test_an_impossible_gpu_plan_stops_the_submission_on_the_login_node(submitted, tmp_path, capsys):
    qwen = "grpo_workplace_assistant_qwen3_4binstruct"
    args = ["--config", qwen, "submit", "--until", "train", f"run.root={tmp_path}"]
    with pytest.raises(SystemExit) as err:
        cli.main([*args, "policy.megatron_cfg.tensor_model_parallel_size=3"])
    assert "cannot be placed" in str(err.value) and "tensor_model_parallel_size" in str(err.value)
    with pytest.raises(SystemExit) as err:
        cli.main([*args, "policy.megatron_cfg.activation_checkpointing=false"])
    assert "over the card's 80 GiB" in str(err.value)
    assert submitted == []  # nothing reached Slurm
    assert cli.main([*args, "--nodes", "2"]) == 0  # a possible plan is printed, then submitted
    out = capsys.readouterr().out
    assert "2 node(s) x 8 GPU(s)" in out and "node 1 gpu 7: policy rank 15" in out
    assert submitted == [{"nodes": 2, "num_nodes": 2, "until": "train"}]


def test_make_passes_the_sweep_interval():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    dry = subprocess.run(["make", "-n", "sweep-install", "SWEEP_EVERY_MIN=30", "VENV=.venv"], cwd=root, text=True,
                         capture_output=True, check=True).stdout  # fmt: skip
    assert "sweep-install --every-min 30" in dry
    default = subprocess.run(["make", "-n", "sweep-install"], cwd=root, text=True, capture_output=True, check=True)
    assert "--every-min" not in default.stdout  # the command's default, 1440 (a day)


class _FakeExecutor:
    """Stands in for submitit's executor: takes the job, hands back an id, runs nothing."""

    job_ids = iter(range(1000, 2000))

    def submit(self, job):
        return type("Job", (), {"job_id": str(next(self.job_ids))})()


def test_resume_keeps_the_runs_recorded_config_and_changes_only_what_is_given(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "slurm_available", lambda: True)
    monkeypatch.setattr(cli.chain, "make_executor", lambda *args, **kwargs: _FakeExecutor())
    run = f"run.root={tmp_path}"
    recorded = ["sft.enabled=true", "grpo.max_num_steps=7", "checkpointing.save_period=3", "grpo.deadline=1800000000"]
    assert cli.main(["submit", "--until", "train", run, *recorded]) == 0
    assert (tmp_path / "config.yaml").exists()  # written at submission
    resumed: list = []
    monkeypatch.setattr(cli.chain, "submit_chain", lambda cfg, until, nodes, **kwargs: resumed.append(cfg) or [])
    capsys.readouterr()

    assert cli.main(["resume", run, "grpo.val_period=2"]) == 0
    cfg = resumed[-1]
    assert (cfg.grpo.max_num_steps, cfg.checkpointing.save_period, cfg.sft.enabled) == (7, 3, True)  # recipe: 80, 5
    assert cfg.grpo.val_period == 2 and cfg.grpo.deadline is None  # the override; the old submission's deadline
    out = capsys.readouterr().out
    assert f"resuming with its recorded config ({tmp_path / 'config.yaml'}); changed:" in out
    changed = [line.strip() for line in out.splitlines() if " -> " in line]
    assert changed == ["grpo.deadline: 1800000000.0 -> None", "grpo.val_period: 5 -> 2"]

    assert cli.main(["resume", run, "--from", "best"]) == 0
    assert resumed[-1].checkpointing.resume_from == "best" and resumed[-1].grpo.max_num_steps == 7
    assert "checkpointing.resume_from: None -> best" in capsys.readouterr().out


def test_resume_without_a_recorded_config_says_so_and_uses_the_recipe(tmp_path, monkeypatch, capsys):
    resumed: list = []
    monkeypatch.setattr(cli, "slurm_available", lambda: True)
    monkeypatch.setattr(cli.chain, "submit_chain", lambda cfg, until, nodes, **kwargs: resumed.append(cfg) or [])
    assert cli.main(["resume", f"run.root={tmp_path}", "grpo.val_period=2"]) == 0
    assert "no recorded config" in capsys.readouterr().out
    assert resumed[-1].grpo.max_num_steps == 80 and resumed[-1].grpo.val_period == 2
