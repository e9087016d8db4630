"""The config loader: recipes with defaults, dotlist overrides, typo protection, stable hashes."""

import pytest

from infra.config import config_hash, load_config


def test_tiny_recipe_inherits_base_and_overrides_it():
    cfg = load_config("tiny_cpu")
    assert cfg.run.name == "tiny_cpu"
    assert cfg.env.max_steps == 6  # from base
    assert cfg.env.compact_tools == "signatures"  # tiny overrides base
    assert cfg.checkpointing.metric_name == "val:accuracy"


def test_dotlist_override_changes_value_and_interpolations_follow():
    cfg = load_config("tiny_cpu", ["grpo.num_prompts_per_step=32", "run.name=exp1"])
    assert cfg.grpo.num_prompts_per_step == 32
    assert cfg.run.root.endswith("/exp1")
    assert cfg.checkpointing.checkpoint_dir.startswith(cfg.run.root)


def test_unknown_key_is_an_error_that_names_it():
    with pytest.raises(ValueError, match="grpo.num_promts_per_step"):
        load_config("tiny_cpu", ["grpo.num_promts_per_step=32"])


def test_plus_prefix_adds_a_new_key_to_a_free_form_map_only():
    cfg = load_config("tiny_cpu", ["+slurm.additional_parameters.exclusive=true"])
    assert cfg.slurm.additional_parameters.exclusive is True
    with pytest.raises(ValueError, match="grpo.extra_flag is not in the config schema"):
        load_config("tiny_cpu", ["+grpo.extra_flag=true"])


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(FileNotFoundError, match="tiny_cpu"):
        load_config("no_such_recipe")


def test_config_hash_depends_only_on_selected_sections():
    a = load_config("tiny_cpu")
    b = load_config("tiny_cpu", ["grpo.num_prompts_per_step=32"])
    assert config_hash(a, ["data"]) == config_hash(b, ["data"])
    assert config_hash(a, ["grpo"]) != config_hash(b, ["grpo"])


def test_engine_precision_defaults_to_the_policy_and_can_differ():
    from trainer.components import export_dtype, refit_dtype
    from trainer.generation.vllm_worker import EngineSettings

    base = load_config("tiny_cpu", ["policy.generation.vllm_cfg.precision=${policy.precision}"])
    assert EngineSettings.from_cfg(base).dtype == "float32" and refit_dtype(base) == "float32"
    tiny = load_config("tiny_cpu", ["policy.generation.vllm_cfg.precision=bfloat16"])
    assert EngineSettings.from_cfg(tiny).dtype == "bfloat16"  # refit in the engines' dtype, export in the policy's
    assert refit_dtype(tiny) == "bfloat16" and export_dtype(tiny) == "float32"


def test_auto_engine_precision_follows_the_cpu_and_the_policy_on_gpus(tmp_path, monkeypatch):
    from trainer.generation import vllm_worker
    from trainer.generation.vllm_worker import EngineSettings, cpu_has_native_bf16

    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n")
    sapphire = tmp_path / "amx"
    sapphire.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n")
    assert not cpu_has_native_bf16(str(avx2)) and cpu_has_native_bf16(str(sapphire))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))

    cpu = load_config("tiny_cpu", ["policy.generation.vllm_cfg.precision=auto"])
    for flags_file, dtype in ((avx2, "float32"), (sapphire, "bfloat16")):
        monkeypatch.setattr(vllm_worker, "cpu_has_native_bf16", lambda path=str(flags_file): cpu_has_native_bf16(path))
        assert EngineSettings.from_cfg(cpu).dtype == dtype
    gpu = load_config(
        "tiny_cpu",
        ["policy.generation.vllm_cfg.precision=auto", "cluster.gpus_per_node=8", "policy.precision=bfloat16"],
    )
    assert EngineSettings.from_cfg(gpu).dtype == "bfloat16"


def test_cpu_engine_environment_sets_reserved_cores_only_when_configured():
    from trainer.generation.vllm_worker import EngineSettings, cpu_engine_environment

    tiny = EngineSettings.from_cfg(load_config("tiny_cpu"))
    assert tiny.cpu_reserved_cores == 0
    assert cpu_engine_environment(tiny) == {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    default = EngineSettings.from_cfg(
        load_config(
            "tiny_cpu",
            ["policy.generation.vllm_cfg.cpu_reserved_cores=null", "policy.generation.vllm_cfg.kv_cache_space_gb=3"],
        )
    )
    assert cpu_engine_environment(default) == {"VLLM_CPU_KVCACHE_SPACE": "3"}
