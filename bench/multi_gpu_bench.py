"""`make bench-multi-gpu` / `python -m bench.multi_gpu_bench`: the policy on two GPUs of one host — TP=2 and DP=2
parity with one GPU, and data-parallel scaling.

One process per GPU (torch.multiprocessing, NCCL; gloo on CPU), each a `PolicyWorker` set up through
`trainer.distributed.init_distributed` and trained by `PolicyWorker.train`, the code path of the trainer's Ray
actors. The model, batch builder and policy config are trainer/parity/builders.py's (the ~1.1 B Qwen3-shaped
model, random weights), the FLOP/MFU helpers bench/gpu_bench.py's. Launches, one after the other, each a fresh set
of processes (RUNS, --runs):

  tp1    1 process:   TP=1 DP=1 — the reference (fp32 with TF32 off, and bf16 autocast twice from the same
                      weights); then throughput on one GPU (GPU 0);
  dp2    2 processes: TP=1 DP=2 — the same global batch, half the micro-batches per rank: parity, then throughput
                      and the time of the gradient all-reduce;
  tp2    (same processes as dp2) TP=2 DP=1 — the same weights and batch: parity, then throughput (information);
  tp1b   1 process:   the bf16 parity step of tp1 again, in a fresh process with an empty torch.compile cache;
  pair   2 processes: two independent 1-GPU trainings at the same time, no communication (what this host gives
                      two GPUs at best: DP=2 / pair is the cost of data parallelism itself);
  solo1  1 process:   1-GPU throughput on GPU 1 alone.

Parity: `trainer.parity.tp_dp.run_parity` in each run's processes (one GRPO optimizer step of `--parity-gbs` rows
of `--parity-seq` tokens at micro-batch 1; log-probs, loss, grad norm, NLL, the full gradient and the update against
TP=1 and the fp32 reference) and `trainer.parity.tp_dp.checks` for pass/fail: that module's docstring says what is
compared, at what tolerance and why. fp32 (TF32 off) must agree to 1e-3 relative; bf16 must be no further from the
fp32 reference than the TP=1 bf16 run is; DP=2 bf16 must agree with DP=1 to within x2 the distance between two
processes running the same TP=1 bf16 step (tp1b), or fp32's tolerance.

Throughput: `--mbs` x `--micro` micro-batches per GPU per optimizer step (gbs = mbs x micro x DP), sequence
`--seq`, median of `--steps` steps after `--warmup`; tokens/s = gbs x seq / step time (the slowest rank's).
Scaling efficiency = DP=2 tokens/s / (2 x DP=1 tokens/s). On GPU one step of tp1, dp2 and pair is also run under the
torch profiler (GPU busy vs idle time, top kernels: profile_<run>.txt beside the JSON).

Gradient all-reduce overlap (`policy.megatron_cfg.overlap_grad_reduce`, `trainer/policy/grad_reduce.py`): runs with
DP > 1 train in each mode of `--overlap` (default on,off) in the same processes: throughput steps of the modes
interleaved one by one (on, off, off, on, ...) so that drift hits both alike, a row per mode; parity steps in each
mode, the first compared with TP=1 as above and the others with the first (same process, same micro-batches: the
two-rank sum a + b is the same in any bucketing, so the gradient and update must agree to 1e-6).

Multicast (NVLS) stays off in every process: NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1 are set here before any process starts (the device's rules). `--tiny`: a tiny model, fp32,
gloo on CPU (a CI check of the same logic). Results: JSON in --out ($OUT on the device machine, else bench/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.gpu_bench import (
    ROOT,
    count_parameters,
    environment,
    forward_flops_per_token,
    peak_bf16_flops,
    sync,
    write_json,
)
from trainer.parity import GPU_SHAPE, TINY_SHAPE, free, make_hf_model, make_worker, rollout_batch
from trainer.parity.tp_dp import (
    NO_MULTICAST_ENV,
    full_logprobs,
    gather,
    log,
    mode_name,
    overlap_modes,
    run_parity,
    set_overlap,
    set_precision,
)
from trainer.parity.tp_dp import checks as parity_checks

# Runs: processes, TP size, and what differs from the defaults. Runs joined by "+" share one launch (one pair of
# processes); each launch is a fresh set of processes.
RUNS = {
    "tp1": {"world": 1, "tp": 1},  # the reference; 1-GPU throughput (GPU 0)
    "dp2": {"world": 2, "tp": 1},
    "tp2": {"world": 2, "tp": 2, "micro": "first", "profile": False},
    # the bf16 parity step (fp32 on CPU) again in a fresh process with an empty torch.compile cache: how far apart
    # two processes of the same code are (Inductor benchmarks kernel variants when it compiles; the winner can differ)
    "tp1b": {"world": 1, "tp": 1, "precisions": "last", "skip": ["train"], "fresh_compile_cache": True},
    # diagnostics for the scaling: two independent 1-GPU trainings at the same time (no communication), GPU 1 alone
    "pair": {"world": 2, "tp": 1, "independent": True, "skip": ["parity"]},
    "solo1": {"world": 1, "tp": 1, "gpus": [1], "skip": ["parity"], "micro": "first", "profile": False},
}
DEFAULT_RUNS = "tp1,dp2+tp2,tp1b,pair,solo1"
TINY_RUNS = "tp1,dp2+tp2,tp1b,pair"  # CPU: no second GPU to time alone


def timed_steps(fn, steps: int, host_barrier=None) -> list[float]:
    """Wall time of each call, ranks started together (barrier) and the slowest rank's time taken. `host_barrier`:
    a multiprocessing barrier that also lines up independent processes (the `pair` run)."""
    import torch.distributed as dist

    times = []
    for _ in range(steps):
        dist.barrier()
        sync()
        if host_barrier is not None:
            host_barrier.wait()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return [max(per_rank) for per_rank in zip(*gather(times))]


def run_throughput(worker, spec: dict, run: str, world: int, host_barrier=None) -> list[dict]:
    shape, seq, mbs = spec["shape"], spec["seq"], spec["mbs"]
    peak = spec.get("peak")
    modes = overlap_modes(worker, spec["overlap"])
    rows = []
    for i, micro in enumerate(spec["micro"]):
        gbs = mbs * micro * worker.dp
        worker.policy_cfg.update(train_global_batch_size=gbs, train_micro_batch_size=mbs, logprob_batch_size=mbs)
        base = {
            "section": "train",
            "run": run,
            "gpus": world,
            "tp": worker.tp,
            "dp": worker.dp,
            "micro_batch": mbs,
            "micro_batches_per_gpu_step": micro,
            "gbs": gbs,
            "seq": seq,
        }
        fresh = [dict(base, **({} if m is None else {"overlap_grad_reduce": m})) for m in modes]
        times: dict = {m: [] for m in modes}
        profiles: dict = {}
        try:
            batch = rollout_batch(gbs, seq, shape["vocab_size"], prompt=min(512, seq // 4))
            batch["prev_logprobs"] = full_logprobs(worker, batch)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            if host_barrier is not None:
                host_barrier.wait()
            for mode in modes:
                set_overlap(worker, mode)
                for _ in range(spec["warmup"]):
                    worker.train(batch)
            # the modes' steps interleaved (on, off, off, on, ...): machine drift hits each mode alike
            for step in range(spec["steps"]):
                for mode in modes if step % 2 == 0 else modes[::-1]:
                    set_overlap(worker, mode)
                    times[mode] += timed_steps(lambda batch=batch: worker.train(batch), 1, host_barrier)
            if i == 0 and spec.get("profile_dir") and torch.cuda.is_available():
                for mode in modes:
                    set_overlap(worker, mode)
                    suffix = "" if mode is None else f"_overlap_{mode_name(mode)}"
                    profiles[mode] = profile_step(
                        lambda batch=batch: worker.train(batch),
                        host_barrier,
                        Path(spec["profile_dir"]) / f"profile_{run}{suffix}.txt",
                    )
        except torch.OutOfMemoryError as exc:
            for row in fresh:
                row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
            rows += fresh
            free()
            continue
        finally:
            set_overlap(worker, modes[0])
        for mode, row in zip(modes, fresh):
            tokens_per_s = gbs * seq / statistics.median(times[mode])
            flops = 3 * forward_flops_per_token(shape, seq)
            row.update(
                step_seconds=statistics.median(times[mode]),
                step_seconds_all=times[mode],
                tokens_per_s=tokens_per_s,
                tokens_per_s_per_gpu=tokens_per_s / world,
            )
            if mode in profiles:
                row["profile"] = profiles[mode]
            if peak:
                row["mfu"] = round(tokens_per_s / world * flops / peak, 4)
            if torch.cuda.is_available():
                row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append(row)
            log(
                f"[{run}] train mbs={mbs} x {micro}/GPU gbs={gbs}"
                f"{'' if mode is None else ' overlap ' + mode_name(mode)}: {tokens_per_s:,.0f} tokens/s "
                f"({statistics.median(times[mode]):.3f} s/step), MFU {row.get('mfu')}"
            )
    return rows


def profile_step(fn, host_barrier, path: Path) -> dict:
    """One step under the torch profiler: wall time, GPU busy time (kernels, copies, NCCL) and the top kernels."""
    import torch.distributed as dist
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    dist.barrier()
    sync()
    if host_barrier is not None:
        host_barrier.wait()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - start
    averages = prof.key_averages()
    # device-side events only (CPU ops also carry their kernels' time), as the profiler's own "Self CUDA time total"
    device = [e for e in averages if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    busy = sum(e.self_device_time_total for e in device) / 1e6
    nccl = sum(e.self_device_time_total for e in device if "nccl" in e.key.lower()) / 1e6
    out = {"wall_seconds": wall, "gpu_busy_seconds": busy, "nccl_seconds": nccl, "gpu_idle_seconds": wall - busy}
    if not dist.is_initialized() or dist.get_rank() == 0:
        path.write_text(
            json.dumps(out)
            + "\n"
            + averages.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=80)
        )
    return out


def time_allreduce(worker, steps: int) -> dict:
    """The data-parallel gradient all-reduce of a step (`PolicyWorker._allreduce_grads`: flatten, NCCL all-reduce,
    copy back) and the bare all-reduce of the same flat fp32 buffer."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    group = parallel_state.get_data_parallel_group()
    grads = [p.grad for p in worker.model.parameters() if p.grad is not None]
    numel = sum(g.numel() for g in grads)
    flat = torch.zeros(numel, dtype=torch.float32, device=worker.device)
    for _ in range(2):
        dist.all_reduce(flat, group=group)
    bare = statistics.median(timed_steps(lambda: dist.all_reduce(flat, group=group), steps))
    whole = statistics.median(timed_steps(lambda: worker._allreduce_grads(group), steps))
    n = dist.get_world_size(group)
    bytes_ = numel * 4
    out = {
        "grad_bytes": bytes_,
        "allreduce_grads_seconds": whole,
        "bare_allreduce_seconds": bare,
        "bus_bandwidth_gb_s": bytes_ * 2 * (n - 1) / n / bare / 1e9,
    }
    if worker._reducer is not None:  # the overlapped path's buckets
        out.update(overlap_buckets=worker._reducer.num_buckets, overlap_bucket_mb=worker._reducer.bucket_bytes / 2**20)
    return out


def _rank_main(rank: int, world: int, ports: list[int], spec: dict, host_barrier=None) -> None:
    """One process = one rank (one GPU): the runs of this launch, results written by rank 0 (by every process when
    the run is `independent`: then each process is a world of its own on its own GPU)."""
    os.environ.update(NO_MULTICAST_ENV)
    first = RUNS[spec["runs"][0]]
    independent = bool(first.get("independent"))
    if spec["cuda"] and (first.get("gpus") or independent):  # before CUDA starts in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str((first.get("gpus") or list(range(world)))[rank])
    if first.get("fresh_compile_cache"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_fresh_")
    from trainer.distributed import destroy_distributed

    work = Path(spec["work"])
    hf_dir = work / "hf"
    if spec.get("build_model"):
        device = torch.device("cuda", rank) if spec["cuda"] else torch.device("cpu")
        started = time.perf_counter()
        make_hf_model(hf_dir, spec["shape"], device)
        free()
        if rank == 0:
            write_json({"build_seconds": time.perf_counter() - started}, work / "build.json")
    precision = "bfloat16" if spec["cuda"] else "float32"
    me, size, port = (0, 1, ports[rank]) if independent else (rank, world, ports[0])
    for run in spec["runs"]:
        cfg = RUNS[run]
        precisions = spec["precisions"][-1:] if cfg.get("precisions") == "last" else spec["precisions"]
        run_spec = dict(
            spec,
            precisions=precisions,
            micro=spec["micro"][:1] if cfg.get("micro") else spec["micro"],
            profile_dir=spec.get("profile_dir") if cfg.get("profile", True) else None,
            skip=sorted(set(spec["skip"]) | set(cfg.get("skip", []))),
        )
        result: dict = {"run": run, "world": world, "tp": cfg["tp"], "independent": independent}
        if cfg.get("gpus"):
            result["gpus_used"] = cfg["gpus"]
        started = time.perf_counter()
        worker = make_worker(
            hf_dir,
            "sdpa",
            gbs=spec["parity_gbs"],
            mbs=1,
            precision=precision,
            tp=cfg["tp"],
            rank=me,
            world_size=size,
            master=("127.0.0.1", port),
        )
        result.update(
            dp=worker.dp,
            setup_seconds=time.perf_counter() - started,
            params_per_rank=sum(p.numel() for p in worker.model.parameters()),
        )
        name = f"{run}.rank{rank}" if independent else run
        if "parity" not in run_spec["skip"]:
            result["parity"] = run_parity(
                worker,
                run,
                me,
                work,
                gbs=spec["parity_gbs"],
                seq=spec["parity_seq"],
                vocab_size=spec["shape"]["vocab_size"],
                precisions=run_spec["precisions"],
                overlap=spec["overlap"],
            )
            if me == 0:
                write_json(result, work / f"{name}.json")
        if "train" not in run_spec["skip"]:
            set_precision(worker, "bf16" if spec["cuda"] else "fp32")
            result["rows"] = run_throughput(worker, run_spec, run, size, host_barrier if independent else None)
            if worker.dp > 1:
                result["allreduce"] = time_allreduce(worker, spec["steps"])
                log(f"[{run}] allreduce: {json.dumps(result['allreduce'])}")
        if me == 0:
            write_json(result, work / f"{name}.json")
        del worker
        free()
    destroy_distributed()


# ---------------------------------------------------------------------------------------------------------------
# Launcher


def launch(world: int, spec: dict) -> None:
    import torch.multiprocessing as mp

    from trainer.distributed import free_port

    barrier = mp.get_context("spawn").Barrier(world, timeout=900)
    mp.spawn(_rank_main, args=(world, [free_port() for _ in range(world)], spec, barrier), nprocs=world, join=True)


def checks(report: dict) -> dict:
    """Pass/fail of the parity runs (`trainer.parity.tp_dp.checks`), the bf16 noise taken from tp1b where it ran."""
    runs = report["runs"]
    noise = runs.get("tp1b", {}).get("parity", {}).get("bf16_vs_tp1_bf16")
    return parity_checks({run: res["parity"] for run, res in runs.items() if "parity" in res}, noise)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny model, fp32, gloo on CPU (a quick check of the logic)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    p.add_argument("--seq", type=int, default=None, help="throughput sequence length")
    p.add_argument("--mbs", type=int, default=None, help="throughput micro-batch size (per GPU)")
    p.add_argument("--micro", default=None, help="throughput micro-batches per GPU per optimizer step, e.g. 2,4")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--parity-seq", type=int, default=None)
    p.add_argument("--parity-gbs", type=int, default=4, help="rows of the parity step (micro-batch 1)")
    p.add_argument("--layers", type=int, default=None, help="override the number of layers")
    p.add_argument("--precisions", default=None, help="parity precisions (default fp32,bf16 on GPU, fp32 on CPU)")
    p.add_argument(
        "--runs",
        default=None,
        help=f"launches in order, runs of one launch joined by + (default {DEFAULT_RUNS}; tiny: without solo1)",
    )
    p.add_argument("--no-profile", action="store_true", help="no torch-profiler step (GPU)")
    p.add_argument("--skip", default="", help="parity,train")
    p.add_argument(
        "--overlap",
        default="on,off",
        help="overlap_grad_reduce modes of the DP > 1 runs, the first the parity reference (on,off | on | off)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.update(NO_MULTICAST_ENV)
    cuda = torch.cuda.is_available() and not args.tiny
    if cuda and torch.cuda.device_count() < 2:
        print("needs 2 GPUs", file=sys.stderr)
        return 2
    shape = dict(GPU_SHAPE if cuda else TINY_SHAPE)
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    launches = [group.split("+") for group in (args.runs or (DEFAULT_RUNS if cuda else TINY_RUNS)).split(",") if group]
    for group in launches:
        unknown = [r for r in group if r not in RUNS]
        if (
            unknown
            or len({RUNS[r]["world"] for r in group}) > 1
            or (len(group) > 1 and any(set(RUNS[r]) - {"world", "tp", "micro", "profile"} for r in group))
        ):
            raise SystemExit(f"--runs: {group} (runs: {', '.join(RUNS)}; only plain runs of one size join with +)")
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="multi_gpu_bench_"))
    spec = {
        "work": str(work),
        "cuda": cuda,
        "shape": shape,
        "skip": sorted(skip),
        "seq": args.seq or (4096 if cuda else 64),
        "mbs": args.mbs or (4 if cuda else 2),
        "micro": [int(x) for x in (args.micro or ("2,4" if cuda else "2")).split(",")],
        "steps": args.steps or (5 if cuda else 2),
        "warmup": args.warmup or (2 if cuda else 1),
        "parity_seq": args.parity_seq or (1024 if cuda else 32),
        "parity_gbs": args.parity_gbs,
        "precisions": (args.precisions or ("fp32,bf16" if cuda else "fp32")).split(","),
        "overlap": [{"on": True, "off": False}[x] for x in args.overlap.split(",")],
    }
    env = environment(torch.device("cuda" if cuda else "cpu"))
    spec["peak"] = peak_bf16_flops(env["device"]) if cuda else None
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ("multi_gpu.json" if cuda else "multi_gpu_tiny.json")
    if cuda and not args.no_profile:
        spec["profile_dir"] = str(out_dir)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "environment": env,
        "peak_bf16_flops": spec["peak"],
        "gpus": torch.cuda.device_count() if cuda else 0,
        "backend": "nccl" if cuda else "gloo",
        "no_multicast_env": NO_MULTICAST_ENV,
        "model": {
            "shape": shape,
            "parameters": count_parameters(shape),
            "train_flops_per_token": 3 * forward_flops_per_token(shape, spec["seq"]),
        },
        "spec": {k: v for k, v in spec.items() if k != "work"},
        "launches": launches,
        "runs": {},
        "launch_seconds": {},
        "errors": {},
    }
    print(f"{report['gpus']} x {env['device']}; model {count_parameters(shape) / 1e9:.2f} B parameters", flush=True)
    first = True
    for group in launches:
        world = RUNS[group[0]]["world"]
        started = time.perf_counter()
        print(f"{time.strftime('%H:%M:%S')} launch {'+'.join(group)}: {world} process(es)", flush=True)
        try:
            launch(world, dict(spec, runs=group, build_model=first))
        except Exception as exc:  # record it, keep what the other launches measured
            report["errors"]["+".join(group)] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
            print(f"{'+'.join(group)} failed: {exc}", flush=True)
        first = False
        report["launch_seconds"]["+".join(group)] = time.perf_counter() - started
        for run in group:
            if (work / f"{run}.json").exists():
                report["runs"][run] = json.loads((work / f"{run}.json").read_text())
            ranks = sorted(work.glob(f"{run}.rank*.json"))
            if ranks:
                report["runs"][run] = {
                    "run": run,
                    "independent": True,
                    "processes": [json.loads(f.read_text()) for f in ranks],
                }
        if (work / "build.json").exists():
            report["model"].update(json.loads((work / "build.json").read_text()))
        report["checks"] = checks(report)
        write_json(report, target)
    report["scaling"] = scaling(report)
    report["checks"] = checks(report)
    report["passed"] = bool(report["checks"]) and all(report["checks"].values()) and not report["errors"]
    write_json(report, target)
    print_summary(report)
    print(f"wrote {target}")
    return 0 if report["passed"] else 1


def _rows(report: dict, run: str, overlap: bool | None = None) -> dict:
    """A run's throughput rows by micro-batches per GPU (of one overlap mode, for DP > 1); an independent run's
    processes summed (they ran at once)."""
    res = report["runs"].get(run, {})
    if res.get("independent"):
        per = [
            {r["micro_batches_per_gpu_step"]: r for r in p.get("rows", []) if "tokens_per_s" in r}
            for p in res["processes"]
        ]
        common = set.intersection(*(set(x) for x in per)) if per else set()
        return {
            m: {
                "tokens_per_s": sum(x[m]["tokens_per_s"] for x in per),
                "per_process_tokens_per_s": [x[m]["tokens_per_s"] for x in per],
            }
            for m in common
        }
    return {
        r["micro_batches_per_gpu_step"]: r
        for r in res.get("rows", [])
        if "tokens_per_s" in r and r.get("overlap_grad_reduce") == overlap
    }


def _modes(report: dict, run: str) -> list:
    """The overlap modes of a run's rows, in the order they were run (None where not applicable)."""
    rows = report["runs"].get(run, {}).get("rows", [])
    return list(dict.fromkeys(r.get("overlap_grad_reduce") for r in rows)) or [None]


def scaling(report: dict) -> list[dict]:
    """2-GPU tokens/s against 2 x the 1-GPU (tp1, GPU 0) tokens/s at the same micro-batches per GPU: DP=2 (the
    target), TP=2, and the two independent trainings (`pair`: the most two GPUs of this host give without any
    communication); DP=2 / pair isolates the cost of the data-parallel step itself."""
    one = _rows(report, "tp1")
    pair = _rows(report, "pair")
    out = []
    for run, mode in [(name, mode) for name in ("dp2", "tp2", "pair", "solo1") for mode in _modes(report, name)]:
        for micro, r in sorted(_rows(report, run, mode).items()):
            ref = one.get(micro)
            if not ref:
                continue
            row = {
                "run": run,
                "micro_batches_per_gpu_step": micro,
                "one_gpu_tokens_per_s": ref["tokens_per_s"],
                "tokens_per_s": r["tokens_per_s"],
            }
            if mode is not None:
                row["overlap_grad_reduce"] = mode
            if run == "solo1":  # GPU 1 alone vs GPU 0 alone
                row["ratio_to_gpu0"] = r["tokens_per_s"] / ref["tokens_per_s"]
            else:
                row["scaling_efficiency"] = r["tokens_per_s"] / (2 * ref["tokens_per_s"])
            if run == "dp2" and micro in pair:
                row["efficiency_vs_pair"] = r["tokens_per_s"] / pair[micro]["tokens_per_s"]
            if "per_process_tokens_per_s" in r:
                row["per_process_tokens_per_s"] = r["per_process_tokens_per_s"]
            out.append(row)
    return out


def print_summary(report: dict) -> None:
    print("\n| run | GPUs | TP | DP | mbs x micro/GPU | gbs | tokens/s | per GPU | MFU | s/step | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run, res in report["runs"].items():
        for r in [r for p in res.get("processes", [res]) for r in p.get("rows", [])]:
            if "error" in r:
                print(f"| {run} | {r['gpus']} | {r['tp']} | {r['dp']} | - | {r['gbs']} | {r['error']} |")
                continue
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
            mem = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "-"
            label = run if "overlap_grad_reduce" not in r else f"{run} overlap {mode_name(r['overlap_grad_reduce'])}"
            print(
                f"| {label} | {r['gpus']} | {r['tp']} | {r['dp']} | {r['micro_batch']} x "
                f"{r['micro_batches_per_gpu_step']} | {r['gbs']} | {r['tokens_per_s']:,.0f} | "
                f"{r['tokens_per_s_per_gpu']:,.0f} | {mfu} | {r['step_seconds']:.3f} | {mem} |"
            )
    for s in report.get("scaling", []):
        figures = {
            k: f"{100 * v:.1f}%"
            for k, v in s.items()
            if k in ("scaling_efficiency", "efficiency_vs_pair", "ratio_to_gpu0")
        }
        mode = f" overlap {mode_name(s['overlap_grad_reduce'])}" if "overlap_grad_reduce" in s else ""
        print(
            f"scaling {s['run']}{mode} ({s['micro_batches_per_gpu_step']} micro-batches/GPU): {s['tokens_per_s']:,.0f} "
            f"tokens/s vs 1 GPU {s['one_gpu_tokens_per_s']:,.0f}: {figures}"
        )
    for run, res in report["runs"].items():
        for name, c in res.get("parity", {}).items():
            if isinstance(c, dict) and "grad" in c:
                print(
                    f"parity {run} {name}: loss {c['loss_rel']:.2e} grad_norm {c['grad_norm_rel']:.2e} "
                    f"nll {c['nll_rel']:.2e} logprob max/mean {c['logprob_max_abs']:.2e}/"
                    f"{c['logprob_mean_abs']:.2e} grad rel_l2 {c['grad']['rel_l2']:.2e} "
                    f"({c['grad']['worst_tensor']} {c['grad']['worst_tensor_rel_l2']:.2e}) update rel_l2 "
                    f"{c['update']['rel_l2']:.2e} max {c['update'].get('max_abs_units', 0):.2f} lr"
                )
    for name, ok in report.get("checks", {}).items():
        print(f"check {name}: {'ok' if ok else 'FAILED'}")
    for name, err in report.get("errors", {}).items():
        print(f"error {name}: {err}")
    print(f"passed: {report.get('passed')}")


if __name__ == "__main__":
    sys.exit(main())
