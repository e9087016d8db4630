"""The placement planner: every rank its own GPU, TP groups within a node, impossible requests refused at once."""

from __future__ import annotations

import pytest

from trainer.placement import Gpu, ModelShape, PlacementError, PlacementRequest, known_shape, plan_placement

QWEN3_4B = known_shape("Qwen/Qwen3-4B-Instruct-2507")


def request(**kw) -> PlacementRequest:
    base = dict(
        num_nodes=1,
        gpus_per_node=8,
        gpu_memory_gib=80.0,
        policy_tp=2,
        engine_tp=2,
        activation_checkpointing=True,
        micro_batch_tokens=32768,
        gpu_memory_utilization=0.6,
    )
    return PlacementRequest(**{**base, **kw})


def test_qwen3_4b_parameter_count_from_its_config():
    assert QWEN3_4B is not None
    assert 4.0e9 < QWEN3_4B.num_params < 4.05e9  # published: 4.02B with tied embeddings
    small = known_shape("Qwen/Qwen3-1.7B")
    assert small is not None and 1.7e9 < small.num_params < 2.1e9


@pytest.mark.parametrize("nodes", [1, 2, 8])
def test_colocated_gives_every_rank_its_own_gpu_and_keeps_tp_groups_in_a_node(nodes):
    plan = plan_placement(request(num_nodes=nodes), QWEN3_4B)
    assert len(plan.policy_gpus) == len(set(plan.policy_gpus)) == nodes * 8
    assert plan.policy_dp == nodes * 8 // 2
    for rank in range(0, len(plan.policy_gpus), 2):  # Megatron order: TP rank fastest
        group = plan.policy_gpus[rank : rank + 2]
        assert len({gpu.node for gpu in group}) == 1
    assert len(plan.engine_gpus) == nodes * 4
    engine_gpus = [gpu for group in plan.engine_gpus for gpu in group]
    assert len(engine_gpus) == len(set(engine_gpus)) == nodes * 8  # engines cover every GPU once
    assert all(len({gpu.node for gpu in group}) == 1 for group in plan.engine_gpus)


def test_split_on_one_node_gives_generation_the_last_gpus():
    plan = plan_placement(request(colocated=False, generation_gpus_per_node=2, engine_tp=1, policy_tp=2))
    assert plan.policy_gpus == [Gpu(0, i) for i in range(6)]
    assert plan.engine_gpus == [[Gpu(0, 6)], [Gpu(0, 7)]]


def test_split_on_several_nodes_gives_generation_whole_nodes():
    plan = plan_placement(request(num_nodes=4, colocated=False, generation_num_nodes=1), QWEN3_4B)
    assert {gpu.node for gpu in plan.policy_gpus} == {0, 1, 2}
    assert {gpu.node for group in plan.engine_gpus for gpu in group} == {3}
    engine_only = plan.memory[Gpu(3, 0)]
    assert engine_only.training == engine_only.generation  # a split engine keeps its budget


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(policy_tp=3), "policy TP 3 x PP 1 = 3 does not divide"),
        (dict(engine_tp=16, num_nodes=2), "engine TP 16 does not divide the 8 GPU(s) it has on node 0"),
        (dict(policy_tp=16, num_nodes=2), "policy TP 16 does not divide"),
        (dict(num_engines=5), "5 engine(s) of TP 2 need 10 GPU(s); generation has 8"),
        (dict(colocated=False), "colocated.resources.gpus_per_node between 1 and 7"),
        (dict(colocated=False, num_nodes=2, generation_num_nodes=2), "colocated.resources.num_nodes between 1 and 1"),
    ],
)
def test_impossible_requests_fail_naming_what_to_change(kw, message):
    with pytest.raises(PlacementError) as err:
        plan_placement(request(**kw), QWEN3_4B)
    assert message in str(err.value)


def test_memory_over_the_card_is_refused_with_the_parts():
    with pytest.raises(PlacementError) as err:
        plan_placement(request(activation_checkpointing=False), QWEN3_4B)
    text = str(err.value)
    assert "over the card's 80 GiB" in text and "activations" in text and "activation_checkpointing" in text


def test_colocated_memory_takes_turns():
    """Sleeping engine + offloaded optimizer: each phase holds one side's bulk, so the 4B recipe fits 80 GB."""
    plan = plan_placement(request(), QWEN3_4B)
    mem = plan.memory[Gpu(0, 0)]
    assert mem.peak <= 80
    awake = plan_placement(request(sleep_mode=False, offload_optimizer=False, gpu_memory_gib=200.0), QWEN3_4B)
    both = awake.memory[Gpu(0, 0)]
    assert both.training > mem.training + 0.6 * 80 - 2  # the awake engine's budget stays during training
    assert both.generation > mem.generation + 12 * QWEN3_4B.num_params / 2 / 2**30 - 1


def test_describe_lists_every_gpu_with_its_roles():
    plan = plan_placement(request(num_nodes=2), QWEN3_4B)
    text = plan.describe()
    assert text.count("\n  node ") == 16
    assert "node 1 gpu 7: policy rank 15 (tp 1, dp 7, pp 0) + engine 7 (tp 1 of 2)" in text
    assert "memory estimate" in text


def test_no_gpus_means_no_placement():
    plan = plan_placement(request(gpus_per_node=0))
    assert plan.policy_gpus == [] and plan.engine_gpus == []


def test_shape_from_a_llama_style_config():
    shape = ModelShape.from_hf_config(
        {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "vocab_size": 100,
            "num_attention_heads": 4,
            "intermediate_size": 128,
        }
    )
    per_layer = 4 * 64 * 64 + 3 * 64 * 128 + 2 * 64
    assert shape.num_params == 2 * per_layer + 2 * 100 * 64 + 64


def test_engine_count_fills_the_gpus_unless_given():
    from infra.config import load_config
    from trainer.generation.vllm_worker import engines_for

    assert engines_for(load_config("tiny_cpu")) == 1  # CPU: one engine
    qwen = "grpo_workplace_assistant_qwen3_4binstruct"
    assert engines_for(load_config(qwen)) == 64  # 8 nodes x 8 GPUs / TP 1
    assert engines_for(load_config(qwen, ["cluster.num_nodes=2"])) == 16
    assert engines_for(load_config(qwen, ["policy.generation.vllm_cfg.num_engines=3"])) == 3
    assert engines_for(load_config("grpo_workplace_assistant_nemotron_nano_v2_9b")) == 1  # 8 GPUs / TP 8
