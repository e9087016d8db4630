"""Generation with a plain `transformers` model in this process: the same API as the vLLM group.

`policy.generation.backend: torch` selects it. It exists beside vLLM for debugging and for fast unit tests of the
rollout logic (no engine start-up); training runs use vLLM. Sampling follows vLLM's order (temperature, then
top-k, then top-p) and reports the log-prob of each sampled token under that processed distribution, like the
vLLM engines started with `logprobs_mode="processed_logprobs"`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from trainer.interfaces import GenerationOutput, SamplingParams


class TorchGeneration:
    def __init__(self, model_dir: str, max_model_len: int, dtype: str = "float32", batch_size: int = 16):
        from transformers import AutoModelForCausalLM

        started = time.perf_counter()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(self.device)
        self.model.eval()
        self.max_model_len = int(max_model_len)
        self.batch_size = int(batch_size)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set([eos] if isinstance(eos, int) else (eos or []))
        pad = self.model.generation_config.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.start_seconds = time.perf_counter() - started

    @classmethod
    def from_cfg(cls, cfg, model_dir: str) -> TorchGeneration:
        precision = str(cfg.policy.precision)
        dtype = {"bf16": "bfloat16", "fp32": "float32"}.get(precision, precision)
        return cls(model_dir, int(cfg.policy.generation.vllm_cfg.max_model_len), dtype)

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[GenerationOutput]:
        """Same contract as `VllmEngine.generate`."""
        prompts = [list(map(int, p)) for p in prompt_token_ids]
        seeds, max_tokens = sampling.seeds_for(len(prompts)), sampling.max_tokens_for(len(prompts))
        results: list[GenerationOutput] = []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            results.extend(
                self._generate_batch(prompts[start:stop], sampling, seeds[start:stop], max_tokens[start:stop])
            )
        return results

    @torch.no_grad()
    def _generate_batch(self, prompts, sampling: SamplingParams, seeds, max_tokens) -> list[GenerationOutput]:
        n = len(prompts)
        for p in prompts:
            if len(p) >= self.max_model_len:
                raise ValueError(f"prompt of {len(p)} tokens leaves no room under max_model_len={self.max_model_len}")
        limits = [min(m, self.max_model_len - len(p)) for p, m in zip(prompts, max_tokens)]
        stop_ids = self.eos_ids | set(sampling.stop_token_ids)
        temperature, top_p, top_k = sampling.temperature, sampling.top_p, sampling.top_k_or_zero
        gens = []
        for seed in seeds:
            g = torch.Generator(device=self.device)
            g.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
            gens.append(g)
        width = max(len(p) for p in prompts)  # left padding so every row's next token is at the end
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        out_tokens: list[list[int]] = [[] for _ in range(n)]
        out_logprobs: list[list[float]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        past = None
        step_ids = ids
        for _ in range(max(limits)):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
            out = self.model(
                input_ids=step_ids, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True
            )
            past = out.past_key_values
            logits = out.logits[:, -1].float()
            logits = _process_logits(logits, temperature, top_k, top_p)
            logprobs = torch.log_softmax(logits, dim=-1)
            next_ids = torch.empty(n, dtype=torch.long, device=self.device)
            for i in range(n):
                if finish[i] is not None:
                    next_ids[i] = self.pad_id
                    continue
                if temperature == 0:
                    token = int(logits[i].argmax())
                else:
                    token = int(torch.multinomial(logprobs[i].exp(), 1, generator=gens[i]))
                next_ids[i] = token
                out_tokens[i].append(token)
                out_logprobs[i].append(float(logprobs[i, token]))
                if token in stop_ids:
                    finish[i] = "stop"
                elif len(out_tokens[i]) >= limits[i]:
                    finish[i] = "length"
            if all(f is not None for f in finish):
                break
            step_ids = next_ids[:, None]
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=self.device)], dim=1)
        return [
            {"token_ids": t, "logprobs": lp, "finish_reason": f or "length"}
            for t, lp, f in zip(out_tokens, out_logprobs, finish)
        ]

    def update_weights(self, blob: bytes) -> dict[str, float]:
        """Load HF-named tensors from a safetensors blob into the model (tied lm_head follows the embedding)."""
        from safetensors.torch import load

        started = time.perf_counter()
        state = load(blob)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"refit blob has tensors the model does not: {unexpected[:5]}")
        untouched = [m for m in missing if not (m == "lm_head.weight" and self.model.config.tie_word_embeddings)]
        if untouched:
            raise ValueError(f"refit blob misses model tensors: {untouched[:5]}")
        seconds = time.perf_counter() - started
        return {"refit_seconds": seconds, "refit_engine_seconds_max": seconds, "refit_bytes": float(len(blob))}

    def sleep(self) -> list[bool]:
        return [False]

    def wake_up(self) -> list[bool]:
        return [False]

    def shutdown(self) -> None:
        self.model = None


def _process_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    if temperature > 0:
        logits = logits / temperature
    if top_k and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop_sorted = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the token crossing top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits
