"""A toy Megatron-core GPT (integer tokens, no tokenizer) for fast unit tests of the policy and trainer.

The real runs build their model from a Hugging Face directory (`trainer.models.megatron_bridge`); tests of
the GRPO machinery only need *a* Megatron GPTModel that trains on CPU in milliseconds. Its "HF export" is
its own state dict, so weight refits into the toy sampler (tests/grpo) round-trip exactly.
"""
from __future__ import annotations

import torch

TOY_DEFAULTS = dict(vocab_size=32, hidden_size=32, num_layers=2, num_attention_heads=4, max_sequence_length=64)


def build_toy_gpt(tp: int = 1, pp: int = 1, dtype: torch.dtype = torch.float32, seed: int = 1234, **sizes):
    """A GPTModel with the local (non-TE) layer spec; call after model-parallel init."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    if pp != 1:
        raise ValueError("the toy GPT supports pipeline_model_parallel_size=1 only")
    s = {**TOY_DEFAULTS, **sizes}
    cfg = TransformerConfig(
        num_layers=s["num_layers"], hidden_size=s["hidden_size"], num_attention_heads=s["num_attention_heads"],
        tensor_model_parallel_size=tp, use_cpu_initialization=True, params_dtype=dtype, pipeline_dtype=dtype,
        hidden_dropout=0.0, attention_dropout=0.0, normalization="RMSNorm",
    )
    torch.manual_seed(seed)  # identical initial weights in every process that builds it
    model = GPTModel(config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
                     vocab_size=s["vocab_size"], max_sequence_length=s["max_sequence_length"],
                     position_embedding_type="learned_absolute", share_embeddings_and_output_weights=False)
    return model


def export_toy_state_dict(model) -> dict[str, torch.Tensor]:
    """The toy model's 'HF' export: its own tensors (TP=1 only), without Megatron's extra-state entries."""
    return {k: v.detach() for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}


class ToySampler:
    """An in-process 'generation engine' for the toy GPT: refit from a safetensors blob, sample with seeds.

    Plays the role of the vLLM engines in fast tests: the trainer refits it after every update exactly as it
    refits vLLM, so a test sees the new weights reach generation."""

    def __init__(self, **sizes):
        self.model = build_toy_gpt(**sizes)
        self.model.eval()
        self.refits = 0

    def update_weights(self, blob: bytes) -> None:
        from safetensors.torch import load

        self.model.load_state_dict(load(blob), strict=False)
        self.refits += 1

    @torch.no_grad()
    def sample(self, prompt: list[int], max_new_tokens: int, seed: int, temperature: float = 1.0):
        """Tokens and their log-probs (of the temperature-scaled distribution), sampled one at a time."""
        gen = torch.Generator().manual_seed(seed)
        tokens, logprobs = list(prompt), []
        for _ in range(max_new_tokens):
            seq = len(tokens)
            ids = torch.tensor([tokens])
            mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1)[None, None]
            logits = self.model(ids, torch.arange(seq)[None], mask)[0, -1].float() / temperature
            probs = torch.softmax(logits, -1)
            token = int(torch.multinomial(probs, 1, generator=gen))
            tokens.append(token)
            logprobs.append(float(torch.log(probs[token])))
        return tokens[len(prompt):], logprobs


class ToyRollout:
    """Rollout-shaped record (same fields the trainer reads from `trainer.rollout.Rollout`)."""

    def __init__(self, row, prompt, response, response_logprobs, reward):
        self.row_id = row["id"]
        self.category = row.get("category", "toy")
        self.token_ids = list(prompt) + list(response)
        self.loss_mask = [0] * len(prompt) + [1] * len(response)
        self.generation_logprobs = [0.0] * len(prompt) + list(response_logprobs)
        self.reward = float(reward)
        self.verdict = {"reward": self.reward}
        self.truncated = False
        self.num_turns = 1


def toy_rows(n: int, vocab_size: int = 32, prompt_len: int = 3, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [{"id": i, "category": "toy", "prompt_tokens": torch.randint(1, vocab_size, (prompt_len,), generator=gen).tolist()}
            for i in range(n)]


def make_toy_rollout_fn(target_token: int = 7, max_new_tokens: int = 6):
    """`collect_rollouts`-compatible function for the toy task: reward 1 iff the response contains the target
    token (a skill the toy model can learn in a few dozen steps)."""

    def rollout_fn(rows, generation: ToySampler, tokenizer, cfg, seed: int):
        temperature = float(cfg.policy.generation.temperature)
        out = []
        for i, row in enumerate(rows):
            response, lps = generation.sample(row["prompt_tokens"], max_new_tokens, seed * 1000 + i, temperature)
            out.append(ToyRollout(row, row["prompt_tokens"], response, lps, target_token in response))
        return out

    return rollout_fn
