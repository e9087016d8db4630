"""The SDPA layer spec and the fused ops compute what Megatron's local spec computes (CPU, fp32, eager path)."""

from __future__ import annotations

import pytest
import torch

from trainer.distributed import init_distributed

VOCAB = 300  # not a multiple of anything: the padded-vocab masking is exercised by the log-prob tests


@pytest.fixture(scope="module")
def dist_tp1():
    init_distributed(tp=1, pp=1)
    yield


def _write_qwen3(path, seed=0):
    """Tiny random Qwen3 (GQA 4 heads / 2 KV heads, q/k norms), weights and norms perturbed off their init."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        rope_theta=1e4,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).float()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.add_((0.3 if "norm" in name else 0.05) * torch.randn(param.shape, generator=gen))
    model.save_pretrained(path, safe_serialization=True)
    return model


def _logits_and_grads(model, ids):
    from trainer.models.megatron_bridge import forward_logits, token_logprobs

    model.zero_grad(set_to_none=True)
    logits = forward_logits(model, ids)
    token_logprobs(logits[:, :-1], ids[:, 1:], VOCAB).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_resolve_attention_backend():
    from trainer.models.attention import resolve_attention_backend

    assert resolve_attention_backend("SDPA") == "sdpa"
    assert resolve_attention_backend(None) == ("sdpa" if torch.cuda.is_available() else "local")
    with pytest.raises(ValueError, match="attention_backend='flash3'"):
        resolve_attention_backend("flash3")


@pytest.mark.parametrize("fused", [False, True])
def test_sdpa_spec_matches_local_spec(tmp_path, dist_tp1, monkeypatch, fused):
    """Same weights, same tokens: logits and every parameter gradient agree with the local (unfused) spec."""
    import trainer.models.attention as attention
    from trainer.models.fused_ops import FusedRMSNorm
    from trainer.models.megatron_bridge import build_megatron_model

    hf_model = _write_qwen3(tmp_path)
    ids = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(3))
    local = build_megatron_model(tmp_path, parallel={"attention_backend": "local"})
    monkeypatch.setattr(attention, "default_fused", lambda: fused)
    sdpa = build_megatron_model(tmp_path, parallel={"attention_backend": "sdpa"})
    cores = [m for m in sdpa.modules() if isinstance(m, attention.SDPACoreAttention)]
    assert len(cores) == 2 and not any(type(m).__name__ == "DotProductAttention" for m in sdpa.modules())
    assert any(isinstance(m, FusedRMSNorm) for m in sdpa.modules()) == fused
    assert set(dict(sdpa.named_parameters())) == set(dict(local.named_parameters()))

    want_logits, want_grads = _logits_and_grads(local, ids)
    got_logits, got_grads = _logits_and_grads(sdpa, ids)
    with torch.no_grad():
        hf_logits = hf_model(ids).logits
    assert (got_logits - hf_logits).abs().max() < 1e-4
    assert (got_logits - want_logits).abs().max() < 1e-5
    for name, grad in want_grads.items():
        scale = grad.abs().max().clamp_min(1e-6)
        assert ((got_grads[name] - grad).abs().max() / scale) < 1e-4, name


def test_sdpa_core_attention_padding_mask_matches_megatron(dist_tp1):
    """Non-causal mask types use the boolean mask (True = masked), like DotProductAttention."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from trainer.models.attention import SDPACoreAttention

    cfg = TransformerConfig(
        num_layers=1,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=16,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    g = torch.Generator().manual_seed(0)
    q = torch.randn(24, 2, 4, 16, generator=g)
    k, v = torch.randn(24, 2, 2, 16, generator=g), torch.randn(24, 2, 2, 16, generator=g)
    mask = torch.rand(2, 1, 24, 24, generator=g) < 0.3
    mask[..., 0] = False  # every query sees at least one key
    ref = DotProductAttention(cfg, 1, AttnMaskType.padding, "self")
    ours = SDPACoreAttention(cfg, 1, AttnMaskType.padding, "self")
    want = ref(q, k, v, mask)
    got = ours(q, k, v, mask)
    assert got.shape == want.shape == (24, 2, 64)
    assert (got - want).abs().max() < 1e-5
    causal = SDPACoreAttention(cfg, 1, AttnMaskType.causal, "self")(q, k, v, None)
    assert (causal - want).abs().max() > 1e-2, "causal and padding masks must differ"


def test_fused_rms_norm_and_rope_match_megatron():
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    from trainer.models.fused_ops import apply_rope, rms_norm

    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 2, 4, 16, generator=g, requires_grad=True)
    w = (1 + 0.3 * torch.randn(16, generator=g)).requires_grad_()
    ref_norm = torch.nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ref_norm.weight.copy_(w)
    got, want = rms_norm(x, w, 1e-6), ref_norm(x)
    assert (got - want).abs().max() < 1e-5
    upstream = torch.randn(got.shape, generator=g)
    gx, gw = torch.autograd.grad((got * upstream).sum(), [x, w])
    rx, rw = torch.autograd.grad((want * upstream).sum(), [x, ref_norm.weight])
    assert (gx - rx).abs().max() < 1e-4 and (gw - rw).abs().max() < 1e-4

    freqs = torch.randn(10, 1, 1, 16, generator=g) * 3
    assert (apply_rope(x, freqs) - _apply_rotary_pos_emb_bshd(x, freqs)).abs().max() < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast the output is the autocast dtype
        assert apply_rope(x, freqs).dtype == torch.bfloat16 and rms_norm(x, w, 1e-6).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_token_logprobs_match_log_softmax(dtype):
    from trainer.models.fused_ops import fused_token_logprobs

    g = torch.Generator().manual_seed(2)
    vocab, padded, temperature = 300, 320, 0.7
    logits = (3 * torch.randn(2, 9, padded, generator=g)).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (2, 9), generator=g)
    got = fused_token_logprobs(logits, targets, vocab, temperature)

    ref_logits = logits.detach().float().requires_grad_()
    scaled = ref_logits[..., :vocab] / temperature
    want = torch.log_softmax(scaled, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert got.dtype == torch.float32 and got.shape == (2, 9)
    assert (got - want).abs().max() < 1e-5
    upstream = torch.randn(2, 9, generator=g)
    (got_grad,) = torch.autograd.grad((got * upstream).sum(), [logits])
    (want_grad,) = torch.autograd.grad((want * upstream).sum(), [ref_logits])
    assert got_grad.dtype == dtype
    assert got_grad[..., vocab:].abs().max() == 0, "padded vocabulary entries get no gradient"
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (got_grad.float() - want_grad).abs().max() < tol
    with pytest.raises(ValueError, match="do not match"):
        fused_token_logprobs(logits, targets[:, :-1], vocab)
