"""`make bench-gpu` / `python -m bench.gpu_bench`: bf16 Megatron-core policy on one GPU — parity, tokens/s, MFU.

On the device machine (one H100/H200) it:
  1. builds a ~1B-parameter Qwen3-architecture model with random weights in `transformers` (the Qwen3-1.7B
     shape with 16 layers: 1.1 B parameters) and saves it as an HF directory;
  2. parity (`trainer.parity.logprob_parity`, where the comparison and its tolerances are defined): token
     log-probs of random sequences from transformers fp32 (the reference, TF32 off), transformers bf16, and our
     Megatron-core model (bridge-converted) in fp32 and in the policy's bf16 mode (fp32 master weights, bf16
     autocast). Megatron bf16 passes when its error against the fp32 reference is no larger than the error of
     transformers run with the same recipe (fp32 weights, bf16 autocast) on the same weights and tokens (x1.5 on
     the mean, x2 on the max); Megatron fp32 must match transformers fp32 to 2e-3 (summation order only);
  3. training: `PolicyWorker.train` (GRPO clipped loss, fwd + bwd + fused AdamW + grad clipping, as the trainer
     runs it) on `--gbs` sequences of `--seq` tokens per optimizer step; tokens/s, MFU, peak memory, for each
     attention backend / SDPA kernel / micro-batch size asked for;
  4. the policy's log-prob pass (`PolicyWorker.get_logprobs`, no grad) tokens/s;
  5. the torch generation backend (`TorchGeneration`, HF + KV cache, bf16) decode tokens/s.

MFU = tokens/s x model FLOPs per token / peak dense bf16 FLOP/s of the card (H100 SXM and H200: 989e12).
Model FLOPs per token: 2 x (matmul parameters incl. the LM head) + causal attention 2 x heads x head_dim x S
(half of the S x S score matrix) per layer, times 3 for training (forward + backward). The non-causal
convention (the full S x S, as in the PaLM paper) is reported beside it.

The model, worker and batch builders are trainer/parity/builders.py's: what is timed is what was checked.
`--tiny` runs the same steps with a tiny model on CPU (a few seconds; no MFU). Results: JSON in --out
($OUT on the device machine, else bench/results/), a short table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from infra.io import atomic_write_json
from trainer.parity import GPU_SHAPE, TINY_SHAPE, free, logprob_parity, make_hf_model, make_worker, rollout_batch

ROOT = Path(__file__).resolve().parent.parent

# Dense bf16 tensor-core peak by device name (vendor datasheets, without sparsity).
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("H20", 148e12),
    ("A100", 312e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    for key, peak in PEAK_BF16:
        if key in device_name:
            return peak
    return None


# ---------------------------------------------------------------------------------------------------------------
# FLOPs


def matmul_params(shape: dict) -> int:
    """Parameters that take part in a matmul per token (all layers' projections + the LM head)."""
    h, f, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * f
    return L * per_layer + h * shape["vocab_size"]


def forward_flops_per_token(shape: dict, seq: int, causal: bool = True) -> float:
    """Forward FLOPs per token of a sequence of `seq` tokens: matmuls + attention scores and values."""
    q = shape["num_attention_heads"] * shape["head_dim"]
    context = seq / 2 if causal else seq  # average keys a query attends to (causal: half)
    attention = shape["num_hidden_layers"] * 2 * 2 * q * context  # QK^T and PV, 2 FLOPs per MAC
    return 2 * matmul_params(shape) + attention


def count_parameters(shape: dict) -> int:
    h, L = shape["hidden_size"], shape["num_hidden_layers"]
    norms = L * (2 * h + 2 * shape["head_dim"]) + h
    return matmul_params(shape) + norms  # tied: the LM head counted in matmul_params is the embedding


def set_sdpa_kernel(worker, kernel: str) -> None:
    from trainer.models.attention import SDPACoreAttention

    for module in worker.model.modules():
        if isinstance(module, SDPACoreAttention):
            module.kernel = kernel


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------------------------------
# Sections


def train_throughput(
    worker,
    shape: dict,
    seq: int,
    gbs: int,
    variants: list[tuple[str, int]],
    steps: int,
    peak: float | None,
    profile_dir: Path | None = None,
) -> list[dict]:
    """Optimizer steps of `gbs` x `seq` tokens through `PolicyWorker.train`, per (sdpa kernel, micro-batch)."""
    batch = rollout_batch(gbs, seq, shape["vocab_size"], prompt=min(512, seq // 4))
    batch["prev_logprobs"] = worker.get_logprobs(batch)
    rows = []
    for kernel, mbs in variants:
        set_sdpa_kernel(worker, kernel)
        worker.policy_cfg["train_micro_batch_size"] = mbs
        row = {"section": "train", "sdpa_kernel": kernel, "micro_batch": mbs, "gbs": gbs, "seq": seq}
        try:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            warm = worker.train(batch)
            times = timed(lambda row=row: row.setdefault("results", []).append(worker.train(batch)), steps)
        except torch.OutOfMemoryError as exc:
            row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
            rows.append(row)
            free()
            continue
        except Exception as exc:  # a kernel refused (e.g. cuDNN not built in): record it, try the next variant
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            rows.append(row)
            continue
        results = row.pop("results")
        losses = [r[0]["parts"][0]["loss"] for r in results] + [warm[0]["parts"][0]["loss"]]
        row.update(
            step_seconds=statistics.median(times),
            step_seconds_all=times,
            loss_finite=all(map(lambda x: x == x and abs(x) < 1e30, losses)),
            grad_norm=results[-1][0]["grad_norm"],
        )
        add_rates(
            row,
            gbs * seq / row["step_seconds"],
            3 * forward_flops_per_token(shape, seq),
            shape,
            seq,
            passes=3,
            peak=peak,
        )
        if torch.cuda.is_available():
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(row)
        print(f"  train {kernel:9s} mbs={mbs}: {row['tokens_per_s']:,.0f} tokens/s, MFU {row.get('mfu')}", flush=True)
    done = [r for r in rows if "error" not in r]
    if profile_dir is not None and done:  # profile the fastest variant
        best = max(done, key=lambda r: r["tokens_per_s"])
        set_sdpa_kernel(worker, best["sdpa_kernel"])
        worker.policy_cfg["train_micro_batch_size"] = best["micro_batch"]
        profile(lambda: worker.train(batch), profile_dir / "profile_train.txt")
    return rows


def add_rates(
    row: dict,
    tokens_per_s: float,
    flops_per_token: float,
    shape: dict,
    seq: int,
    passes: int = 3,
    peak: float | None = None,
) -> None:
    row["tokens_per_s"] = tokens_per_s
    row["model_tflops_per_s"] = tokens_per_s * flops_per_token / 1e12
    if peak:
        row["mfu"] = round(tokens_per_s * flops_per_token / peak, 4)
        full = passes * forward_flops_per_token(shape, seq, causal=False)
        row["mfu_noncausal_convention"] = round(tokens_per_s * full / peak, 4)


def profile(fn, path: Path) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        fn()
        sync()
    key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=90)
    path.write_text(table)
    print(table[:6000], flush=True)


def logprob_throughput(worker, shape: dict, seq: int, n: int, mbs: int, repeats: int, peak: float | None) -> dict:
    batch = rollout_batch(n, seq, shape["vocab_size"], prompt=min(512, seq // 4), seed=1)
    worker.policy_cfg["logprob_batch_size"] = mbs
    worker.get_logprobs(batch)
    times = timed(lambda: worker.get_logprobs(batch), repeats)
    row = {"section": "logprobs", "n": n, "seq": seq, "micro_batch": mbs, "seconds": statistics.median(times)}
    add_rates(row, n * seq / row["seconds"], forward_flops_per_token(shape, seq), shape, seq, passes=1, peak=peak)
    return row


def generation_throughput(hf_dir: Path, prompts: int, prompt_len: int, new_tokens: int, vocab: int) -> dict:
    from trainer.generation.torch_backend import TorchGeneration
    from trainer.interfaces import SamplingParams

    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    engine = TorchGeneration(str(hf_dir), max_model_len=prompt_len + new_tokens + 8, dtype=dtype, batch_size=prompts)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, vocab, (prompts, prompt_len), generator=g).tolist()
    engine.generate(ids, SamplingParams(max_tokens=4, temperature=1.0, seed=0))
    sync()
    start = time.perf_counter()
    results = engine.generate(ids, SamplingParams(max_tokens=new_tokens, temperature=1.0, seed=1))
    sync()
    seconds = time.perf_counter() - start
    generated = sum(len(r["token_ids"]) for r in results)
    del engine
    free()
    return {
        "section": "generation",
        "backend": "torch (transformers, KV cache)",
        "dtype": dtype,
        "prompts": prompts,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "generated": generated,
        "seconds": seconds,
        "tokens_per_s": generated / seconds,
    }


# ---------------------------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    import megatron.core
    import transformers

    env = {
        "torch": torch.__version__,
        "megatron_core": megatron.core.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device=props.name,
            sms=props.multi_processor_count,
            memory_gib=props.total_memory / 2**30,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        env.update(device=f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    return env


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny model on CPU (a quick end-to-end check)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--layers", type=int, default=None, help="override the number of layers")
    p.add_argument("--gbs", type=int, default=None, help="sequences per optimizer step")
    p.add_argument("--mbs", default=None, help="micro-batch sizes to time with the first train backend")
    p.add_argument("--kernels", default="auto", help="SDPA kernels to time: auto,flash,cudnn,efficient")
    p.add_argument("--parity-backends", default="sdpa,local", help="sdpa (fused ops on CUDA), sdpa-unfused, local")
    p.add_argument(
        "--train-backends",
        default="sdpa,sdpa-unfused:2",
        help="backend[:mbs] list; without :mbs the first backend takes --mbs, others the largest",
    )
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per variant (after one warm-up)")
    p.add_argument("--profile", action="store_true", help="write a kernel-time table of one training step")
    p.add_argument("--skip", default="", help="sections to skip: parity,train,logprobs,generation")
    return p.parse_args(argv)


def write_json(report: dict, target: Path) -> None:
    atomic_write_json(target, report)


def main(argv=None) -> int:
    args = parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu" if tiny else "cuda")
    shape = dict(TINY_SHAPE if tiny else GPU_SHAPE)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    seq = args.seq or (64 if tiny else 4096)
    gbs = args.gbs or (4 if tiny else 8)
    mbs_list = [int(x) for x in (args.mbs or ("2" if tiny else "1,2,4")).split(",")]
    kernels = args.kernels.split(",")
    skip = set(filter(None, args.skip.split(",")))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ("gpu_bench_tiny.json" if tiny else "gpu.json")
    env = environment(device)
    peak = peak_bf16_flops(env["device"]) if device.type == "cuda" else None
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "environment": env,
        "peak_bf16_flops": peak,
        "model": {
            "shape": shape,
            "parameters": count_parameters(shape),
            "train_flops_per_token": 3 * forward_flops_per_token(shape, seq),
            "seq": seq,
        },
        "precision": "fp32 master weights, bf16 autocast (PolicyWorker, policy.precision=bfloat16)"
        + (" [tiny CPU run: training in fp32]" if tiny else ""),
        "rows": [],
    }
    print(f"device: {env['device']}; model {count_parameters(shape) / 1e9:.2f} B parameters; seq {seq}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    started = time.perf_counter()
    hf_dir = make_hf_model(work / "hf", shape, device)
    report["model"]["build_seconds"] = time.perf_counter() - started

    if "parity" not in skip:
        report["parity"] = logprob_parity(
            hf_dir, args.parity_backends.split(","), batch=1 if not tiny else 2, seq=seq, device=device
        )
        torch.backends.cuda.matmul.allow_tf32 = True  # the sections below time the policy's recipe with TF32
        print(f"parity: {json.dumps(report['parity'])}", flush=True)
        write_json(report, target)
    train_backends = []
    for i, item in enumerate(filter(None, args.train_backends.split(","))):
        name, _, mbs = item.partition(":")
        train_backends.append((name, [int(mbs)] if mbs else (mbs_list if i == 0 else [max(mbs_list)])))
    for i, (backend, backend_mbs) in enumerate(train_backends):
        if "train" in skip and ("logprobs" in skip or i > 0):
            continue
        # CPU: Megatron's linear backward is not autocast there (custom_bwd is CUDA-only), so it trains in fp32
        worker = make_worker(hf_dir, backend, gbs=gbs, mbs=backend_mbs[0], precision="float32" if tiny else "bfloat16")
        if "train" not in skip:
            backend_kernels = kernels if backend.startswith("sdpa") else ["-"]
            variants = [
                (k, m) for k in backend_kernels for m in (backend_mbs if k == backend_kernels[0] else backend_mbs[-1:])
            ]
            for row in train_throughput(
                worker, shape, seq, gbs, variants, args.steps, peak, out_dir if args.profile and i == 0 else None
            ):
                report["rows"].append({"backend": backend, **row})
            write_json(report, target)
        if "logprobs" not in skip and i == 0:
            set_sdpa_kernel(worker, kernels[0])
            row = logprob_throughput(worker, shape, seq, n=gbs, mbs=max(backend_mbs), repeats=args.steps, peak=peak)
            report["rows"].append({"backend": backend, **row})
            print(f"  logprobs: {row['tokens_per_s']:,.0f} tokens/s, MFU {row.get('mfu')}", flush=True)
            write_json(report, target)
        del worker
        free()
    if "generation" not in skip:
        row = generation_throughput(
            hf_dir,
            prompts=4 if tiny else 32,
            prompt_len=16 if tiny else 512,
            new_tokens=8 if tiny else 256,
            vocab=shape["vocab_size"],
        )
        report["rows"].append(row)
        print(f"  generation: {row['tokens_per_s']:,.0f} tokens/s", flush=True)

    write_json(report, target)
    print_table(report)
    print(f"wrote {target}")
    return 0 if report.get("parity", {}).get("passed", True) else 1


def print_table(report: dict) -> None:
    print("\n| section | backend | kernel | mbs | tokens/s | MFU | peak GiB | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        mem = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "-"
        tps = f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else "-"
        print(
            f"| {r['section']} | {r.get('backend', '-')} | {r.get('sdpa_kernel', '-')} | "
            f"{r.get('micro_batch', '-')} | {tps} | {mfu} | {mem} | {r.get('error', '')} |"
        )
    if "parity" in report:
        print(f"parity passed: {report['parity']['passed']}")


if __name__ == "__main__":
    sys.exit(main())
