"""A toy Megatron-core GPT (integer tokens, no tokenizer) for fast unit tests of the policy and trainer.

The real runs build their model from a Hugging Face directory (`trainer.models.megatron_bridge`); tests of
the GRPO machinery only need *a* Megatron GPTModel that trains on CPU in milliseconds. Its "HF export" is
its own state dict, so weight refits into the toy sampler (tests/grpo) round-trip exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from trainer.interfaces import Generation, GenerationOutput, SamplingParams

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
        num_layers=s["num_layers"],
        hidden_size=s["hidden_size"],
        num_attention_heads=s["num_attention_heads"],
        tensor_model_parallel_size=tp,
        use_cpu_initialization=True,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        normalization="RMSNorm",
    )
    torch.manual_seed(seed)  # identical initial weights in every process that builds it
    model = GPTModel(
        config=cfg,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=s["vocab_size"],
        max_sequence_length=s["max_sequence_length"],
        position_embedding_type="learned_absolute",
        share_embeddings_and_output_weights=False,
    )
    return model


def export_toy_state_dict(model) -> dict[str, torch.Tensor]:
    """The toy model's 'HF' export: its own tensors (TP=1 only), without Megatron's extra-state entries."""
    return {
        k: v.detach()
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")
    }


class ToySampler:
    """An in-process generation backend (`trainer.interfaces.Generation`) for the toy GPT: refit from a
    safetensors blob, sample with seeds.

    Plays the role of the vLLM engines in fast tests: the trainer refits it after every update exactly as it
    refits vLLM, so a test sees the new weights reach generation."""

    def __init__(self, **sizes):
        self.model = build_toy_gpt(**sizes)
        self.model.eval()
        self.refits = 0

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[GenerationOutput]:
        """`sample` per prompt, with its seed and token limit (no stop tokens: every answer runs to the limit)."""
        n = len(prompt_token_ids)
        out: list[GenerationOutput] = []
        for prompt, seed, limit in zip(prompt_token_ids, sampling.seeds_for(n), sampling.max_tokens_for(n)):
            tokens, logprobs = self.sample(list(prompt), limit, seed, sampling.temperature)
            out.append({"token_ids": tokens, "logprobs": logprobs, "finish_reason": "length"})
        return out

    def update_weights(self, blob: bytes) -> dict[str, float]:
        from safetensors.torch import load

        self.model.load_state_dict(load(blob), strict=False)
        self.refits += 1
        return {"refit_bytes": float(len(blob))}

    def sleep(self) -> list[bool]:
        return [False]

    def wake_up(self) -> list[bool]:
        return [False]

    def shutdown(self) -> None:
        pass

    @torch.no_grad()
    def sample(self, prompt: list[int], max_new_tokens: int, seed: int | None, temperature: float = 1.0):
        """Tokens and their log-probs (of the temperature-scaled distribution), sampled one at a time."""
        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
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
        return tokens[len(prompt) :], logprobs


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
    return [
        {
            "id": i,
            "category": "toy",
            "prompt_tokens": torch.randint(1, vocab_size, (prompt_len,), generator=gen).tolist(),
        }
        for i in range(n)
    ]


def make_toy_rollout_fn(target_token: int = 7, max_new_tokens: int = 6):
    """`collect_rollouts`-compatible function for the toy task: reward 1 iff the response contains the target
    token (a skill the toy model can learn in a few dozen steps)."""

    def rollout_fn(rows, generation: Generation, tokenizer, cfg, seed: int) -> list[ToyRollout]:
        sampling = SamplingParams.from_config(cfg).replace(
            max_tokens=max_new_tokens, seeds=[seed * 1000 + i for i in range(len(rows))]
        )
        outputs = generation.generate([row["prompt_tokens"] for row in rows], sampling)
        return [
            ToyRollout(row, row["prompt_tokens"], out["token_ids"], out["logprobs"], target_token in out["token_ids"])
            for row, out in zip(rows, outputs)
        ]

    return rollout_fn
