"""NemotronH (hybrid Mamba-2 / attention / MLP) <-> Megatron-core MambaModel: logits and log-prob parity with
transformers on CPU fp32, lossless round trips, the per-rank layout of the fused Mamba tensors, TP=2 over gloo."""

from __future__ import annotations

import json
import os

import pytest
import torch

from trainer.distributed import free_port, init_distributed
from trainer.models.megatron_bridge import (
    build_megatron_model,
    causal_attention_mask,
    export_hf_state_dict,
    forward_logits,
    read_hf_state_dict,
    save_hf_model,
    selected_token_logprobs,
    token_logprobs,
)
from trainer.models.nemotron_h_bridge import nemotron_h_arch, shard, unshard

VOCAB = 500  # not a multiple of 2: the TP run pads the vocabulary
PATTERN = "M-M*-M-"
LOGPROB_MAX_ABS = 2e-3  # the GPT parity tolerance (trainer/parity/megatron_vs_hf.py)


def _config(**over):
    from transformers import NemotronHConfig

    sizes = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        hybrid_override_pattern=PATTERN,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=96,
        mamba_num_heads=8,
        mamba_head_dim=16,
        n_groups=2,
        ssm_state_size=16,
        conv_kernel=4,
        chunk_size=8,  # several chunks per sequence: the inter-chunk state is exercised
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    sizes.update(over)
    return NemotronHConfig(**sizes)


def _write_random_nemotron_h(path, seed: int = 0, **over):
    """A small random NemotronH whose every weight (norms, A_log, D, dt_bias, conv included) is perturbed away from
    its init, with a scaled-up final norm so that the logits are peaked (a swapped tensor changes them)."""
    from transformers import NemotronHForCausalLM

    torch.manual_seed(seed)
    model = NemotronHForCausalLM(_config(**over)).float().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_((0.3 if "norm" in name else 0.05) * torch.randn(param.shape, generator=gen))
        model.model.norm_f.weight.mul_(4.0)
    model.save_pretrained(path, safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def dist_tp1():
    init_distributed(tp=1, pp=1)
    yield


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("nemotron_h")
    model = _write_random_nemotron_h(path)
    return path, model


def _ref_logprobs(logits, ids):
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def test_arch_reads_the_pattern_and_mamba_sizes(hf_dir):
    path, _ = hf_dir
    arch = nemotron_h_arch(json.loads((path / "config.json").read_text()))  # saved as layers_block_type
    assert arch.pattern == PATTERN and arch.num_layers == 7
    assert (arch.mamba_heads, arch.mamba_head_dim, arch.mamba_groups, arch.ssm_state_size) == (8, 16, 2, 16)
    assert arch.hybrid
    legacy = {**json.loads((path / "config.json").read_text()), "hybrid_override_pattern": "M*-"}
    assert nemotron_h_arch(legacy).pattern == "M*-"
    with pytest.raises(NotImplementedError, match="MoE"):
        nemotron_h_arch({**legacy, "hybrid_override_pattern": None, "layers_block_type": ["moe"]})


def test_megatron_logits_match_transformers(hf_dir, dist_tp1):
    path, hf_model = hf_dir
    model = build_megatron_model(path, tp=1, pp=1, dtype=torch.float32)
    assert type(model).__name__ == "MambaModel"
    ids = torch.randint(0, VOCAB, (3, 45), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = forward_logits(model, ids)
    assert got.shape == expected.shape
    assert expected.std() > 1.0, "logits too flat for a meaningful comparison"
    assert (got - expected).abs().max().item() < 1e-4
    ref = _ref_logprobs(expected, ids)
    assert (token_logprobs(got[:, :-1], ids[:, 1:], VOCAB) - ref).abs().max().item() < LOGPROB_MAX_ABS
    # the policy's path: output layer only where the loss is
    wanted = torch.zeros_like(ids)
    wanted[:, 20:] = 1
    with torch.no_grad():
        selected = selected_token_logprobs(
            model, ids, torch.arange(45).expand(3, 45), causal_attention_mask(45), wanted, VOCAB
        )
    assert (selected[:, 20:] - ref[:, 19:]).abs().max().item() < LOGPROB_MAX_ABS
    assert torch.count_nonzero(selected[:, :20]) == 0


def test_export_of_import_is_identity(hf_dir, dist_tp1):
    path, _ = hf_dir
    original = read_hf_state_dict(path)
    assert any(name.startswith("backbone.") for name in original)  # how transformers saves NemotronH
    exported = export_hf_state_dict(build_megatron_model(path, tp=1, pp=1))
    assert set(exported) == set(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name


def test_model_prefix_names_load_the_same(tmp_path, hf_dir, dist_tp1):
    """A checkpoint named `model.` (transformers' in-memory names) gives the same model as `backbone.`."""
    from safetensors.torch import save_file

    path, _ = hf_dir
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    renamed = {name.replace("backbone.", "model.", 1): t for name, t in read_hf_state_dict(path).items()}
    save_file(renamed, str(tmp_path / "model.safetensors"))
    a = export_hf_state_dict(build_megatron_model(tmp_path, tp=1, pp=1))
    b = export_hf_state_dict(build_megatron_model(path, tp=1, pp=1))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_save_hf_model_loads_in_transformers(tmp_path, hf_dir, dist_tp1):
    from transformers import AutoModelForCausalLM

    path, _ = hf_dir
    model = build_megatron_model(path, tp=1, pp=1)
    with torch.no_grad():  # training changed the weights, a Mamba parameter among them
        model.decoder.layers[0].mixer.A_log.add_(0.5)
    out = save_hf_model(model, path, tmp_path / "export")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (reloaded(ids).logits - forward_logits(model, ids)).abs().max().item() < 1e-4


def test_fused_mamba_tensors_are_split_per_rank():
    """TP rank r's in_proj rows are [z_r; x_r; B_r; C_r; dt_r] (its heads and groups), its conv1d channels
    [x_r; B_r; C_r]; unshard puts the HF order back."""
    arch = nemotron_h_arch(_config(hidden_size=8).to_dict())
    sizes = {"z": 128, "x": 128, "B": 32, "C": 32, "dt": 8}
    labels = torch.cat([torch.full((n,), float(i)) for i, n in enumerate(sizes.values())])
    rows = torch.stack([labels, torch.arange(len(labels)).float()], dim=1)  # [component, HF row]
    name = "decoder.layers.0.mixer.in_proj.weight"
    shards = [shard(name, rows, 2, r, arch) for r in range(2)]
    for r, piece in enumerate(shards):
        assert piece.shape[0] == rows.shape[0] // 2
        expected = torch.cat([rows[labels == i][r * n // 2 : (r + 1) * n // 2] for i, n in enumerate(sizes.values())])
        assert torch.equal(piece, expected)
    assert torch.equal(unshard(name, shards, arch), rows)
    conv = torch.arange(192.0)[:, None, None]
    conv_name = "decoder.layers.0.mixer.conv1d.weight"
    conv_shards = [shard(conv_name, conv, 2, r, arch) for r in range(2)]
    assert conv_shards[1][:64].flatten().tolist() == list(range(64, 128))  # x of heads 4..7
    assert conv_shards[1][64:80].flatten().tolist() == list(range(144, 160))  # B of group 1
    assert torch.equal(unshard(conv_name, conv_shards, arch), conv)


def test_tp_must_divide_the_groups(hf_dir):
    from trainer.models.nemotron_h_bridge import megatron_config

    arch = nemotron_h_arch(_config(n_groups=1, num_key_value_heads=4).to_dict())
    with pytest.raises(ValueError, match="n_groups"):
        megatron_config(arch, tp=2, pp=1, parallel={}, dtype=torch.float32)


# --- tensor parallel over gloo, two processes ------------------------------------------------------------------


def _tp_worker(rank: int, port: int, model_dir: str, result_dir: str) -> None:
    from megatron.core import parallel_state

    init_distributed(tp=2, pp=1, rank=rank, world_size=2, master_addr="127.0.0.1", master_port=port)
    model = build_megatron_model(model_dir, tp=2, pp=1)
    ids = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        local = forward_logits(model, ids)
        logprobs = token_logprobs(local[:, :-1], ids[:, 1:], VOCAB)
    state = {
        "ids": ids,
        "logprobs": logprobs,
        "exported": export_hf_state_dict(model),
        "params": sum(p.numel() for p in model.parameters()),
        "in_proj_rows": model.decoder.layers[0].mixer.in_proj.weight.shape[0],
    }
    torch.save(state, os.path.join(result_dir, f"rank{rank}.pt"))
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_tensor_parallel_over_gloo(hf_dir, tmp_path):
    import torch.multiprocessing as mp

    path, hf_model = hf_dir
    mp.spawn(_tp_worker, args=(free_port(), str(path), str(tmp_path)), nprocs=2, join=True)
    original = read_hf_state_dict(path)
    total = sum(t.numel() for t in original.values())
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt")
        with torch.no_grad():
            ref = _ref_logprobs(hf_model(state["ids"]).logits, state["ids"])
        assert (state["logprobs"] - ref).abs().max().item() < LOGPROB_MAX_ABS
        assert state["in_proj_rows"] == (2 * 128 + 2 * 2 * 16 + 8) // 2
        assert state["params"] < 0.7 * total
        assert set(state["exported"]) == set(original)
        for name, tensor in original.items():
            assert torch.equal(state["exported"][name], tensor), name


def test_gradients_match_transformers(hf_dir, dist_tp1):
    """The backward through the scan, conv and gated norm: every weight's gradient of the summed next-token
    log-probs agrees with transformers' autograd (compared in HF names through the exporter)."""
    path, hf_model = hf_dir
    model = build_megatron_model(path, tp=1, pp=1)
    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(5))
    token_logprobs(forward_logits(model, ids)[:, :-1], ids[:, 1:], VOCAB).sum().backward()
    hf_model.zero_grad()
    _ref_logprobs(hf_model(ids).logits, ids).sum().backward()
    expected = {
        name.replace("model.", "backbone.", 1): p.grad for name, p in hf_model.named_parameters() if p.grad is not None
    }
    params = list(model.parameters())
    saved = [p.data for p in params]
    with torch.no_grad():
        for p in params:
            p.data = p.grad
        try:
            got = export_hf_state_dict(model)
        finally:
            for p, data in zip(params, saved):
                p.data = data
    assert set(got) == set(expected)
    for name, grad in expected.items():
        scale = grad.abs().max().item()
        assert scale > 0, name
        assert (got[name] - grad).abs().max().item() < 1e-4 * max(scale, 1.0), name


def test_policy_logprobs_match_transformers_fp32_and_bf16(tmp_path):
    """Through the trainer's own path (a PolicyWorker over the bridge, trainer.parity.logprob_parity): fp32 within
    2e-3 of transformers fp32, and the bf16 autocast recipe no further from it than transformers' own bf16
    autocast is (x1.5 mean, x2 max), for both attention backends."""
    from trainer.parity import logprob_parity

    _write_random_nemotron_h(tmp_path, seed=2)
    result = logprob_parity(tmp_path, ["sdpa", "local"], batch=2, seq=64, device=torch.device("cpu"))
    assert result["passed"], result
    assert result["ref_logit_std"] > 1.0
    for backend in ("sdpa", "local"):
        assert result[f"megatron_{backend}_fp32"]["max_abs"] < 1e-4, result


def test_activation_checkpointing_recomputes_and_keeps_the_gradients(hf_dir, dist_tp1):
    """policy.megatron_cfg.activation_checkpointing: each layer's forward runs again in the backward (MambaStack
    alone would ignore the setting), and the gradients are the same."""
    path, _ = hf_dir
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(8))
    grads, calls = [], []
    for recompute in (False, True):
        model = build_megatron_model(path, tp=1, pp=1, parallel={"activation_checkpointing": recompute})
        seen: list[int] = []  # a pre-hook: the recompute stops once the saved tensors are rebuilt (no post-hook)
        model.decoder.layers[0].mixer.register_forward_pre_hook(lambda *_, seen=seen: seen.append(1))
        token_logprobs(forward_logits(model, ids)[:, :-1], ids[:, 1:], VOCAB).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        calls.append(len(seen))
    assert calls == [1, 2]
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(*grads))
