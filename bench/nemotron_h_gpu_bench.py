"""`make bench-nemotron-h-gpu` / `python -m bench.nemotron_h_gpu_bench`: the NemotronH policy training on one GPU.

The model is Nemotron Nano v2 9B's shape (hidden 4480; Mamba-2 mixers of 128 heads x 80 in 8 groups, state 128,
conv 4, chunks of 128; attention 40 heads / 8 KV heads of 128; squared-ReLU MLP 15,680; vocab 131,072, untied)
with its first `--layers` layers (default 16 of 56: 8 Mamba, 1 attention, 7 MLP, the 9B's mix), random weights in
bf16. Three ways of training it on the same batches of `--gbs` rows of `--seq` tokens, each in its own process so
that one's memory and kernels do not touch the other's:

  ours (Triton)   `PolicyWorker.train` (bf16, fp32 master weights, fused AdamW, grad clipping: the trainer's step)
                  with mamba-ssm's Triton scan and gated norm (trainer/models/ssm.triton_kernels)
  ours (torch)    the same step on the pure-torch scan and norm (SLURM_GRPO_MAMBA_KERNELS=torch)
  transformers    `NemotronHForCausalLM` in bf16: forward, the same token-level loss shape (log-probs of the
                  completion tokens), backward, fused AdamW on the bf16 weights. Its fused Mamba path needs
                  causal-conv1d's compiled CUDA ops, which the machine lacks, so mamba-ssm is hidden from it and it
                  runs its torch path (what it does on a machine without those builds).

MFU = tokens/s x 3 x forward FLOPs per token / the card's dense bf16 peak. Forward FLOPs per token (matmuls at 2
per MAC): every projection (Mamba in/out, attention q/k/v/o, MLP up/down) and the LM head; causal attention over
half the sequence on average; and the Mamba-2 SSD work of the chunked algorithm: inside a chunk of Q tokens the
C.B scores per group (2 x Q/2 x N x G) and their product with x per head (2 x Q/2 x P x H), the state written and
read (2 x 2 x P x N x H), and the depthwise conv (2 x K per channel). Elementwise work (softplus, exp, norms,
gates) is not counted. `--seq`, `--gbs` and the micro-batch sizes are options; results: JSON in --out ($OUT on the
device machine, else bench/results/) and rows in docs/benchmarks.md unless --no-doc.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NANO_9B = "nvidia/NVIDIA-Nemotron-Nano-9B-v2"


def _nano_9b() -> tuple[str, dict]:
    """The 9B's layer pattern and sizes, as the placement planner knows them (one copy of the published config)."""
    from trainer.placement import KNOWN_MODELS

    config = dict(KNOWN_MODELS[NANO_9B])
    pattern = config.pop("hybrid_override_pattern")
    for key in ("model_type", "tie_word_embeddings"):
        config.pop(key)
    return pattern, {**config, "chunk_size": 128}


PATTERN_9B, SHAPE_9B = _nano_9b()
# The same layout at toy size: `--tiny` runs every side on CPU in seconds (the plumbing, not the speed).
SHAPE_TINY = {
    **SHAPE_9B,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 96,
    "mamba_num_heads": 8,
    "mamba_head_dim": 16,
    "n_groups": 2,
    "ssm_state_size": 16,
    "chunk_size": 16,
    "vocab_size": 512,
}


def shape_for(layers: int, tiny: bool = False) -> dict:
    return {**(SHAPE_TINY if tiny else SHAPE_9B), "hybrid_override_pattern": PATTERN_9B[:layers]}


def forward_flops_per_token(shape: dict, seq: int) -> dict[str, float]:
    """Forward FLOPs per token by part (see the module docstring for what is counted)."""
    h, pattern = shape["hidden_size"], shape["hybrid_override_pattern"]
    heads, p, g, n = shape["mamba_num_heads"], shape["mamba_head_dim"], shape["n_groups"], shape["ssm_state_size"]
    q_chunk, k = shape["chunk_size"], shape["conv_kernel"]
    d_inner = heads * p
    conv_dim = d_inner + 2 * g * n
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    mamba_proj = h * (2 * d_inner + 2 * g * n + heads) + d_inner * h
    mamba_ssd = 2 * (q_chunk / 2) * n * g + 2 * (q_chunk / 2) * p * heads + 2 * 2 * p * n * heads + 2 * k * conv_dim
    parts = {
        "mamba_projections": 2 * mamba_proj * pattern.count("M"),
        "mamba_ssd_and_conv": mamba_ssd * pattern.count("M"),
        "attention_projections": 2 * (h * q + 2 * h * kv + q * h) * pattern.count("*"),
        "attention_scores": 2 * 2 * q * (seq / 2) * pattern.count("*"),
        "mlp": 2 * 2 * h * shape["intermediate_size"] * pattern.count("-"),
        "lm_head": 2 * h * shape["vocab_size"],
    }
    parts["total"] = sum(parts.values())
    return parts


def write_model(out_dir: Path, shape: dict, device: str, seed: int = 0) -> int:
    """A random NemotronH (bf16 on a GPU) with perturbed norms (peaked logits); returns its parameter count."""
    import torch
    from transformers import NemotronHConfig, NemotronHForCausalLM

    config = NemotronHConfig(
        **shape,
        num_hidden_layers=len(shape["hybrid_override_pattern"]),
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = NemotronHForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.3 * torch.randn_like(param))
        model.model.norm_f.weight.mul_(3.0)
    model.save_pretrained(out_dir, safe_serialization=True)
    return sum(t.numel() for t in model.parameters())


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def run_ours(spec: dict) -> dict:
    import torch

    from bench.gpu_bench import timed
    from trainer.models.ssm import triton_kernels
    from trainer.parity import make_worker, rollout_batch

    kernels = "triton" if triton_kernels() is not None else "torch"
    batch = rollout_batch(spec["gbs"], spec["seq"], spec["shape"]["vocab_size"], prompt=spec["prompt"])
    rows = []
    worker = None
    for mbs in spec["micro_batches"]:
        row = {"side": f"ours ({kernels})", "micro_batch": mbs}
        try:
            if worker is None:
                worker = make_worker(Path(spec["hf_dir"]), "sdpa", spec["gbs"], mbs, precision=spec["precision"])
                batch["prev_logprobs"] = worker.get_logprobs(batch)
            worker.policy_cfg["train_micro_batch_size"] = mbs
            reset_peak_memory()
            worker.train(batch)  # warm-up (Triton autotuning, allocator)
            row["step_seconds_all"] = timed(functools.partial(worker.train, batch), spec["steps"])
            row["peak_memory_gib"] = peak_memory_gib()
            if spec.get("profile"):
                row["profile"] = profile_top(functools.partial(worker.train, batch))
        except torch.OutOfMemoryError as exc:
            row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
        rows.append(row)
    return {"rows": rows, "kernels": kernels}


def profile_top(step, rows: int = 15) -> list[dict]:
    """One more step under torch.profiler: the ops that hold the device longest (self time, so nested ops are not
    counted twice) with their call counts, after a first row with every op's self time summed."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    device_time = lambda e: getattr(e, "self_device_time_total", 0) if cuda else e.self_cpu_time_total  # noqa: E731
    top = sorted(events, key=device_time, reverse=True)[:rows]
    total = sum(device_time(e) for e in events)
    return [{"op": "(all ops)", "self_ms": round(total / 1e3, 2), "calls": sum(e.count for e in events)}] + [
        {"op": e.key[:120], "self_ms": round(device_time(e) / 1e3, 2), "calls": e.count} for e in top
    ]


def run_transformers(spec: dict) -> dict:
    sys.modules["mamba_ssm"] = None  # type: ignore[assignment]  # see the module docstring: its torch path
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from bench.gpu_bench import timed
    from trainer.parity import rollout_batch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=dtype).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01, fused=device == "cuda")
    batch = rollout_batch(spec["gbs"], spec["seq"], spec["shape"]["vocab_size"], prompt=spec["prompt"])
    ids, mask, adv = (batch[k].to(device) for k in ("input_ids", "loss_mask", "advantages"))
    rows = []
    for mbs in spec["micro_batches"]:
        row = {"side": "transformers (torch path)", "micro_batch": mbs}

        def step(mbs: int = mbs) -> None:
            optimizer.zero_grad(set_to_none=True)
            tokens = mask[:, 1:].sum()
            for start in range(0, ids.shape[0], mbs):
                chunk, m = ids[start : start + mbs], mask[start : start + mbs, 1:]
                logits = model(input_ids=chunk).logits[:, :-1].float()
                logp = torch.gather(F.log_softmax(logits, -1), -1, chunk[:, 1:, None]).squeeze(-1)
                loss = -(logp * adv[start : start + mbs, None] * m).sum() / tokens
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

        try:
            reset_peak_memory()
            step()
            row["step_seconds_all"] = timed(step, spec["steps"])
            row["peak_memory_gib"] = peak_memory_gib()
        except torch.OutOfMemoryError as exc:
            row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
            optimizer.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return {"rows": rows}


def side_process(side: str, spec_path: Path, env: dict[str, str]) -> dict:
    """One side in a fresh interpreter; its JSON comes back on the last line of stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.nemotron_h_gpu_bench", "--side", side, "--spec", str(spec_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    sys.stderr.write(proc.stderr[-4000:])
    if proc.returncode != 0:
        return {"rows": [], "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_rates(rows: list[dict], spec: dict, peak: float | None) -> None:
    flops = 3 * forward_flops_per_token(spec["shape"], spec["seq"])["total"]
    for row in rows:
        if "step_seconds_all" not in row:
            continue
        row["step_seconds"] = statistics.median(row["step_seconds_all"])
        row["tokens_per_s"] = spec["gbs"] * spec["seq"] / row["step_seconds"]
        if peak:
            row["mfu"] = round(row["tokens_per_s"] * flops / peak, 4)


def doc_rows(result: dict) -> list[tuple[str, str]]:
    out = []
    for row in result["rows"]:
        if "tokens_per_s" in row:
            mfu = f", MFU {100 * row['mfu']:.1f}%" if "mfu" in row else ""
            figure = f"{row['tokens_per_s']:,.0f} tokens/s{mfu}, peak {row['peak_memory_gib']:.1f} GiB"
        else:
            figure = row.get("error", "no result")
        out.append((f"NemotronH train step, {row['side']}, micro-batch {row['micro_batch']}", figure))
    return out


def append_doc_rows(result: dict, path: Path = ROOT / "docs" / "benchmarks.md") -> None:
    from bench.env_bench import append_table_rows

    s = result["spec"]
    flops = result["forward_flops_per_token"]
    config = (
        f"bench.nemotron_h_gpu_bench, Nemotron Nano v2 9B shape with {len(s['shape']['hybrid_override_pattern'])} "
        f"of 56 layers ('{s['shape']['hybrid_override_pattern']}', {result['parameters'] / 1e9:.2f} B parameters), "
        f"random bf16 weights, {s['gbs']} x {s['seq']} tokens per optimizer step, median of {s['steps']} steps; "
        f"Mamba SSD+conv {100 * flops['mamba_ssd_and_conv'] / flops['total']:.1f}% of the counted FLOPs"
    )
    append_table_rows(path, result["date"], result["machine"], config, doc_rows(result))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--tiny", action="store_true", help="toy sizes on CPU: checks the plumbing in seconds")
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--gbs", type=int, default=8)
    p.add_argument("--mbs", default="1,2", help="micro-batch sizes")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--sides", default="ours,ours-torch,transformers")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    p.add_argument("--profile", action="store_true", help="ours: one more step under torch.profiler, top ops kept")
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--from-json", type=Path, help="only add the doc rows of an earlier result file")
    p.add_argument("--side", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        spec = json.loads(args.spec.read_text())
        print(json.dumps((run_ours if args.side == "ours" else run_transformers)(spec)))
        return 0
    if args.from_json:
        append_doc_rows(json.loads(args.from_json.read_text()))
        return 0

    import torch

    from bench.gpu_bench import environment, peak_bf16_flops
    from infra.io import atomic_write_json

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    env_info = environment(torch.device(device))
    peak = peak_bf16_flops(env_info["device"]) if device == "cuda" else None
    work = Path(tempfile.mkdtemp(prefix="nemotron_h_bench_"))
    shape = shape_for(args.layers, tiny=device == "cpu")
    hf_dir = work / "hf"
    parameters = write_model(hf_dir, shape, device)
    if device == "cuda":
        torch.cuda.empty_cache()
    spec = {
        "hf_dir": str(hf_dir),
        "shape": shape,
        "seq": args.seq,
        "gbs": args.gbs,
        "prompt": min(512, args.seq // 4),
        "micro_batches": [int(m) for m in args.mbs.split(",")],
        "steps": args.steps,
        "profile": args.profile,
        "precision": "bfloat16" if device == "cuda" else "float32",  # Megatron's CPU linears refuse bf16
    }
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    base_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    sides = {
        "ours": ("ours", base_env),
        "ours-torch": ("ours", {**base_env, "SLURM_GRPO_MAMBA_KERNELS": "torch"}),
        "transformers": ("transformers", base_env),
    }
    rows, errors = [], {}
    for name in args.sides.split(","):
        side, env = sides[name]
        t = time.perf_counter()
        got = side_process(side, spec_path, env)
        print(f"[nemotron-h] {name}: {time.perf_counter() - t:.0f} s, {got.get('error') or 'ok'}", flush=True)
        rows += got["rows"]
        if got.get("error"):
            errors[name] = got["error"]
    add_rates(rows, spec, peak)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{env_info['device']}, torch {env_info['torch']}, transformers {env_info['transformers']}",
        "environment": env_info,
        "spec": {k: v for k, v in spec.items() if k != "hf_dir"},
        "parameters": parameters,
        "forward_flops_per_token": forward_flops_per_token(shape, args.seq),
        "rows": rows,
        "errors": errors,
    }
    atomic_write_json(Path(args.out) / ("nemotron_h_tiny.json" if device == "cpu" else "nemotron_h_gpu.json"), result)
    if not args.no_doc and device == "cuda":
        append_doc_rows(result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
