"""`make bench-vllm-gpu` (one GPU, with the GPU bundle on PYTHONPATH): a vLLM engine as the trainer builds it
(the project's refit extension, sleep mode, processed log-probs) on a random Qwen3-1.7B-shaped model.

Measures engine start, generation tokens/s (256 prompts of 512 tokens, 512 new each), the host refit path the
trainer uses today (state dict -> bf16 host tensors -> one safetensors blob -> `collective_rpc`), and sleep level 1
(seconds, GPU memory freed) and wake-up, checking that seeded sampling gives the same tokens after a refit of the
same weights and after a sleep/wake cycle. Results: bench/results/vllm_gpu_probe.json and $OUT when set.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from infra.io import atomic_write_text

SHAPE = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
             num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=8192,
             tie_word_embeddings=True)  # fmt: skip
REFIT_EXTENSION = "trainer.generation.weight_refit.WeightRefitExtension"


def main() -> dict:
    import torch
    from safetensors.torch import save
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    model_dir = "/tmp/qwen3_1p7b_random"
    model = Qwen3ForCausalLM(Qwen3Config(**SHAPE, torch_dtype="bfloat16")).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    res: dict = {"params": sum(p.numel() for p in model.parameters()), "gpu": torch.cuda.get_device_name()}
    started = time.time()
    llm = LLM(model=model_dir, skip_tokenizer_init=True, dtype="bfloat16", gpu_memory_utilization=0.5,
              max_model_len=4096, enable_prefix_caching=True, seed=0, enable_sleep_mode=True,
              worker_extension_cls=REFIT_EXTENSION, logprobs_mode="processed_logprobs")  # fmt: skip
    res["engine_start_s"] = time.time() - started

    def generate(n: int, prompt: int, new: int) -> tuple[float, list]:
        prompts = [TokensPrompt(prompt_token_ids=[(7 * i + j) % 150000 + 10 for j in range(prompt)]) for i in range(n)]
        sampling = SamplingParams(max_tokens=new, min_tokens=new, temperature=1.0, detokenize=False, logprobs=0, seed=1)
        t = time.time()
        outs = llm.generate(prompts, sampling, use_tqdm=False)
        seconds = time.time() - t
        return sum(len(o.outputs[0].token_ids) for o in outs) / seconds, [o.outputs[0].token_ids[:8] for o in outs]

    generate(4, 64, 16)  # warm-up
    res["generation_tokens_per_s"], first = generate(256, 512, 512)
    model = model.cuda()
    torch.cuda.synchronize()
    t = time.time()
    state = {k: v.detach().to(torch.bfloat16).cpu().contiguous() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}  # fmt: skip
    blob = save(state)
    res["refit_blob_build_s"], res["refit_blob_bytes"] = time.time() - t, len(blob)
    del model
    torch.cuda.empty_cache()
    t = time.time()
    res["refit_tensors"] = llm.collective_rpc("refit_from_safetensors", args=(blob,))
    llm.reset_prefix_cache()
    res["refit_rpc_s"] = time.time() - t
    res["refit_host_path_s"] = res["refit_blob_build_s"] + res["refit_rpc_s"]
    res["same_tokens_after_refit"] = generate(256, 512, 512)[1] == first
    free_before = torch.cuda.mem_get_info()[0]
    t = time.time()
    llm.sleep(level=1)
    res["sleep_s"], res["sleep_freed_gib"] = time.time() - t, (torch.cuda.mem_get_info()[0] - free_before) / 2**30
    t = time.time()
    llm.wake_up()
    res["wake_s"] = time.time() - t
    res["generation_tokens_per_s_after_wake"], after = generate(256, 512, 512)
    res["same_tokens_after_sleep_wake"] = after == first
    text = json.dumps(res, indent=1)
    print(text, flush=True)
    for folder in filter(None, (os.environ.get("OUT"), str(Path(__file__).parent / "results"))):
        atomic_write_text(Path(folder) / "vllm_gpu_probe.json", text)
    return res


if __name__ == "__main__":
    main()
