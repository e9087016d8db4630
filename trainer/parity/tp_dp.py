"""Tensor and data parallelism against one rank: one GRPO optimizer step of the same weights and batch.

Each rank is a `PolicyWorker` set up through `trainer.distributed.init_distributed` and trained by
`PolicyWorker.train`, the code path of the trainer's Ray actors. Runs (one set of processes each):

  tp1   TP=1 DP=1, the reference: its records are saved to disk for the later runs;
  dp2   TP=1 DP=2: the same global batch, half the micro-batches per rank;
  tp2   TP=2 DP=1: the same weights and batch, every layer split over two ranks.

The step (`run_parity`): `gbs` rows of `seq` tokens at micro-batch 1; prev_logprobs from `get_logprobs` as the
trainer does, the GRPO clipped loss, AdamW, grad clipping at 1.0. Compared with the TP=1 run of the same precision
and with the fp32 reference (`compare_step`): token log-probs (the forward), the mean NLL of the trained tokens, the
trainer's loss and grad norm, the full gradient and the parameter update (both gathered to HF layout, every tensor).
The loss is the GRPO loss on-policy (ratio ~1), nearly model-independent by construction; the NLL of the trained
tokens is the model-dependent scalar.

Tolerances (`checks`), and why:
  fp32 (TF32 off): 1e-3 relative on loss, grad norm, NLL and the gradient's L2, 2e-3 absolute on log-probs: only
      summation order and the TP split differ. The update: 1e-2 relative L2, since Adam's first step is
      ~lr * sign(g) and an element whose gradient is within rounding of 0 may flip (2 lr); 1e-2 allows at most
      0.0025% of the elements to flip.
  bf16: no further from the fp32 reference than the TP=1 bf16 run is (x1.5 + one bf16 ulp on scalars, x1.5 on
      mean and x2 on max abs log-prob differences, as the Megatron-vs-transformers check): both round the same
      matmul inputs to bf16, so an excess would be a bug of ours, not rounding.
  DP=2 bf16 against DP=1 bf16: DP runs the very same micro-batches, only the gradient sum is ordered differently,
      so it must agree to within 2 x the distance between two processes running the same TP=1 bf16 step (`noise`:
      within one process the step repeats bit for bit, but torch.compile picks its kernels by timing them in each
      fresh process, and one changed rounding in bf16 spreads through the layers), or fp32's tolerance.
  Overlapped vs after-the-backward gradient all-reduce (`overlap`, same process, same micro-batches): the two-rank
      sum a + b is the same in any bucketing, so gradient, update, loss and grad norm agree to 1e-6.

`tp_dp_parity` launches the runs as local processes (gloo on CPU, NCCL on GPUs) and returns the records and
checks; bench/multi_gpu_bench.py runs `run_parity` inside its own processes, beside its throughput steps.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from trainer.parity.builders import free, make_worker, rollout_batch

REFERENCE_RUN = "tp1"
BF16_ULP = 2.0**-8  # one bf16 rounding step, relative (8 significant bits)
FP32_RTOL = 1e-3
# run -> (processes, TP size); DP = processes / TP
LAYOUTS = {"tp1": (1, 1), "dp2": (2, 1), "tp2": (2, 2)}
# Multicast (NVLS) stays off in every process (the device machine's rules); harmless on CPU.
NO_MULTICAST_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

# ---------------------------------------------------------------------------------------------------------------
# Helpers that run inside a rank


def log(message: str) -> None:
    """Print once (global rank 0)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def gather(obj) -> list:
    """Every rank's `obj`, on every rank."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def full_logprobs(worker, batch: dict) -> torch.Tensor:
    """The whole batch's log-probs on every rank, as `PolicyGroup.get_logprobs` assembles them from the shards."""
    return torch.cat([s for s in gather(worker.get_logprobs(batch)) if s is not None], dim=0)


def train_step(worker, batch: dict) -> dict:
    """`PolicyWorker.train` on every rank; the trainer's merged metrics (`combine_train_results`)."""
    from trainer.policy.worker import combine_train_results

    return combine_train_results(gather(worker.train(batch)))


@torch.no_grad()
def export_grads(worker) -> dict[str, torch.Tensor]:
    """The gradients in HF layout (TP shards gathered), through the weight exporter: each parameter's storage is
    swapped with its gradient for the export."""
    from trainer.models.megatron_bridge import export_hf_state_dict

    params = list(worker.model.parameters())
    saved = [p.data for p in params]
    for p in params:
        p.data = p.grad if p.grad is not None else torch.zeros_like(p)
    try:
        return export_hf_state_dict(worker.model)
    finally:
        for p, data in zip(params, saved):
            p.data = data


def reset_optimizer(worker, state: dict) -> None:
    """Back to the given weights with a fresh optimizer and scheduler (the first step again)."""
    from trainer.policy.optim import build_optimizer, build_scheduler

    worker.model.load_state_dict(state, strict=False)
    mcfg = worker.policy_cfg["megatron_cfg"]
    worker.optimizer = build_optimizer(worker.model, mcfg["optimizer"])
    worker.scheduler = build_scheduler(worker.optimizer, mcfg["optimizer"], mcfg["scheduler"], worker.total_steps)


def set_overlap(worker, on: bool | None) -> None:
    """The data-parallel gradient all-reduce overlapped with the last backward (True) or after it (False)."""
    if on is not None:
        worker.policy_cfg["megatron_cfg"]["overlap_grad_reduce"] = bool(on)


def overlap_modes(worker, overlap: list[bool]) -> list:
    """The overlap modes a worker trains in: `overlap` with data parallelism, else one (None: not applicable)."""
    return list(overlap) if worker.dp > 1 else [None]


def mode_name(on: bool | None) -> str:
    return {True: "on", False: "off", None: "-"}[on]


def set_precision(worker, precision: str) -> None:
    """fp32: no autocast and no TF32 (the reference); bf16: the policy's autocast recipe."""
    worker.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    torch.backends.cudnn.allow_tf32 = precision != "fp32"


# ---------------------------------------------------------------------------------------------------------------
# Comparisons


@torch.no_grad()
def compare_tensors(a: dict, b: dict, device: torch.device, unit: float | None = None) -> dict:
    """a vs b (b the reference) over every tensor: relative L2 of the difference, max abs diff (also in `unit`s,
    and the share of elements off by more than 0.1 unit), and the tensor with the largest relative L2."""
    diff_sq = ref_sq = 0.0
    max_abs = ref_max = 0.0
    over = count = 0
    worst = ("", 0.0)
    for name, ref in b.items():
        x, y = a[name].to(device, torch.float32), ref.to(device, torch.float32)
        d = x - y
        dsq, rsq = float(d.double().square().sum()), float(y.double().square().sum())
        diff_sq, ref_sq = diff_sq + dsq, ref_sq + rsq
        max_abs, ref_max = max(max_abs, float(d.abs().max())), max(ref_max, float(y.abs().max()))
        if unit:
            over += int((d.abs() > 0.1 * unit).sum())
        count += d.numel()
        rel = math.sqrt(dsq / rsq) if rsq > 0 else (math.inf if dsq > 0 else 0.0)
        if rel > worst[1]:
            worst = (name, rel)
    out = {
        "rel_l2": math.sqrt(diff_sq / ref_sq) if ref_sq else 0.0,
        "max_abs": max_abs,
        "ref_max_abs": ref_max,
        "worst_tensor": worst[0],
        "worst_tensor_rel_l2": worst[1],
        "elements": count,
    }
    if unit:
        out.update(max_abs_units=max_abs / unit, share_over_0_1_unit=over / count)
    return out


def compare_step(a: dict, b: dict, device: torch.device, lr: float) -> dict:
    """Two parity records: scalars (relative diffs), token log-probs (abs, on trained tokens), grads, update."""
    mask = b["loss_mask"].bool()
    lp = (a["logprobs"] - b["logprobs"]).abs()[mask]
    rel = lambda key: abs(a[key] - b[key]) / max(abs(b[key]), 1e-12)  # noqa: E731
    return {
        "loss_rel": rel("loss"),
        "grad_norm_rel": rel("grad_norm"),
        "nll_rel": rel("nll"),
        "logprob_max_abs": float(lp.max()),
        "logprob_mean_abs": float(lp.mean()),
        "grad": compare_tensors(a["grads"], b["grads"], device),
        "update": compare_tensors(a["update"], b["update"], device, unit=lr),
    }


def parity_record(worker, batch: dict, theta0: dict) -> dict:
    """One optimizer step from the current weights: log-probs, the trainer's metrics, gradient and update."""
    from trainer.models.megatron_bridge import export_hf_state_dict

    lp = full_logprobs(worker, batch)
    metrics = train_step(worker, dict(batch, prev_logprobs=lp))
    grads = export_grads(worker)
    theta1 = export_hf_state_dict(worker.model)
    mask = batch["loss_mask"]
    return {
        "loss": metrics["loss"],
        "grad_norm": metrics["grad_norm"],
        "nll": float(-(lp * mask).sum() / mask.sum()),
        "logprobs": lp,
        "loss_mask": mask,
        "grads": grads,
        "update": {k: theta1[k] - theta0[k] for k in theta0},
    }


def run_parity(
    worker,
    run: str,
    rank: int,
    ref_dir: Path,
    *,
    gbs: int,
    seq: int,
    vocab_size: int,
    precisions: list[str],
    overlap: list[bool],
) -> dict:
    """The parity steps of one run on a set-up worker (every rank calls it); returns rank 0's comparisons.

    The reference run (tp1) saves its records in `ref_dir` (ref_<precision>.pt) and compares bf16 with fp32
    (`bf16_vs_fp32`: the size of bf16 rounding) and bf16 with itself (`bf16_repeat_vs_bf16`); any other run compares
    each precision with tp1's (`<p>_vs_tp1_<p>`) and bf16 with tp1's fp32 (`bf16_vs_tp1_fp32`). With DP > 1 the step
    runs in each all-reduce mode of `overlap`: the first is compared with tp1, the others with the first
    (`<p>_overlap_<mode>_vs_<first>`). The worker ends on its initial weights, in bf16 mode."""
    from trainer.models.megatron_bridge import export_hf_state_dict

    lr = float(worker.policy_cfg["megatron_cfg"]["optimizer"]["lr"])
    batch = rollout_batch(gbs, seq, vocab_size, prompt=seq // 4, seed=5)
    worker.policy_cfg.update(train_global_batch_size=gbs, train_micro_batch_size=1, logprob_batch_size=1)
    initial = {
        k: v.detach().to("cpu", copy=True) for k, v in worker.model.state_dict().items() if isinstance(v, torch.Tensor)
    }
    theta0 = export_hf_state_dict(worker.model)
    device = worker.device
    records, out = {}, {}
    modes = overlap_modes(worker, overlap)
    if modes[0] is not None:
        out["overlap_grad_reduce"] = modes[0]  # the mode of the records compared with TP=1
    for precision in precisions:
        set_precision(worker, precision)
        for j, mode in enumerate(modes):
            set_overlap(worker, mode)
            reset_optimizer(worker, initial)
            started = time.perf_counter()
            record = parity_record(worker, batch, theta0)
            if j == 0:
                records[precision] = record
                out[precision] = {k: record[k] for k in ("loss", "grad_norm", "nll")}
                out[precision]["seconds"] = time.perf_counter() - started
            else:  # the same step with the other all-reduce: against the first mode's, in this process
                if rank == 0:
                    out[f"{precision}_overlap_{mode_name(mode)}_vs_{mode_name(modes[0])}"] = compare_step(
                        record, records[precision], device, lr
                    )
                log(
                    f"[{run}] parity {precision} overlap {mode_name(mode)}: loss {record['loss']:.6f} grad_norm "
                    f"{record['grad_norm']:.6f}"
                )
                del record
        set_overlap(worker, modes[0])
        if run == REFERENCE_RUN and precision == "bf16":  # run-to-run noise of the same step
            reset_optimizer(worker, initial)
            again = parity_record(worker, batch, theta0)
            if rank == 0:
                out["bf16_repeat_vs_bf16"] = compare_step(again, records["bf16"], device, lr)
            del again
        log(
            f"[{run}] parity {precision}: loss {out[precision]['loss']:.6f} grad_norm "
            f"{out[precision]['grad_norm']:.6f} nll {out[precision]['nll']:.6f}"
        )
    set_precision(worker, "bf16")
    if rank == 0:
        if run == REFERENCE_RUN:
            if "bf16" in records and "fp32" in records:
                out["bf16_vs_fp32"] = compare_step(records["bf16"], records["fp32"], device, lr)
            for precision, record in records.items():
                torch.save(record, ref_dir / f"ref_{precision}.pt")
        else:
            refs = {p: torch.load(ref_dir / f"ref_{p}.pt", weights_only=False, mmap=True) for p in records}
            for precision, record in records.items():
                out[f"{precision}_vs_tp1_{precision}"] = compare_step(record, refs[precision], device, lr)
            if "bf16" in records and "fp32" in records:
                out["bf16_vs_tp1_fp32"] = compare_step(records["bf16"], refs["fp32"], device, lr)
            del refs
    worker.model.load_state_dict(initial, strict=False)
    del records, initial, theta0
    free()
    return out


def checks(parity: dict, noise: dict | None = None) -> dict:
    """Pass/fail of the parity comparisons (tolerances and their reasons: the module docstring).

    `parity`: run name -> `run_parity`'s result (tp1, dp2, tp2; a run left out is not checked). `noise`: the same
    TP=1 bf16 step in another process against tp1's (None: tp1's in-process repeat is used)."""
    out = {}
    tp1 = parity.get(REFERENCE_RUN, {})
    base = tp1.get("bf16_vs_fp32")  # TP=1 bf16 vs fp32: the size of bf16 rounding here
    noise = noise or tp1.get("bf16_repeat_vs_bf16")
    for run in ("tp2", "dp2"):
        result = parity.get(run)
        if not result:
            continue
        if "fp32_vs_tp1_fp32" in result:
            c = result["fp32_vs_tp1_fp32"]
            out[f"{run}_fp32_loss_gradnorm_nll_rel<=1e-3"] = (
                max(c["loss_rel"], c["grad_norm_rel"], c["nll_rel"]) <= FP32_RTOL
            )
            out[f"{run}_fp32_logprob_max_abs<=2e-3"] = c["logprob_max_abs"] <= 2e-3
            out[f"{run}_fp32_grad_rel_l2<=1e-3"] = c["grad"]["rel_l2"] <= FP32_RTOL
            out[f"{run}_fp32_update_rel_l2<=1e-2"] = c["update"]["rel_l2"] <= 1e-2
        if "bf16_vs_tp1_fp32" in result and base:
            c = result["bf16_vs_tp1_fp32"]
            for key in ("loss_rel", "grad_norm_rel", "nll_rel"):
                out[f"{run}_bf16_{key}_vs_fp32<=1.5x_tp1_bf16"] = c[key] <= 1.5 * base[key] + BF16_ULP
            out[f"{run}_bf16_logprob_mean<=1.5x_tp1_bf16"] = (
                c["logprob_mean_abs"] <= 1.5 * base["logprob_mean_abs"] + 1e-4
            )
            out[f"{run}_bf16_logprob_max<=2x_tp1_bf16"] = c["logprob_max_abs"] <= 2 * base["logprob_max_abs"] + 1e-3
            for key in ("grad", "update"):
                out[f"{run}_bf16_{key}_rel_l2_vs_fp32<=1.5x_tp1_bf16"] = (
                    c[key]["rel_l2"] <= 1.5 * base[key]["rel_l2"] + 1e-3
                )
        for precision in ("fp32", "bf16"):  # overlapped vs after-the-backward all-reduce, same process
            for name, c in result.items():
                if name.startswith(f"{precision}_overlap_") and isinstance(c, dict) and "grad" in c:
                    out[f"{run}_{name}_grad_update_loss_rel<=1e-6"] = (
                        max(c["grad"]["rel_l2"], c["update"]["rel_l2"], c["loss_rel"], c["grad_norm_rel"]) <= 1e-6
                    )
        if run == "dp2" and "bf16_vs_tp1_bf16" in result and noise:
            c = result["bf16_vs_tp1_bf16"]
            for key in ("grad", "update"):
                tol = max(2 * noise[key]["rel_l2"], FP32_RTOL if key == "grad" else 1e-2)
                out[f"dp2_bf16_{key}_rel_l2_vs_dp1_bf16<=max(2x_noise,fp32_tol)"] = c[key]["rel_l2"] <= tol
    return out


# ---------------------------------------------------------------------------------------------------------------
# A launcher of the parity runs alone (the benchmark has its own, with throughput steps in the same processes)


def _parity_rank(rank: int, world: int, port: int, spec: dict) -> None:
    """One rank of one launch: the runs of `spec["runs"]` in turn, rank 0 writing each run's result."""
    from trainer.distributed import destroy_distributed

    os.environ.update(NO_MULTICAST_ENV)
    work = Path(spec["work"])
    for run in spec["runs"]:
        worker = make_worker(
            Path(spec["hf_dir"]),
            "sdpa",
            gbs=spec["gbs"],
            mbs=1,
            precision=spec["precision"],
            tp=LAYOUTS[run][1],
            rank=rank,
            world_size=world,
            master=("127.0.0.1", port),
        )
        result = {
            "run": run,
            "tp": worker.tp,
            "dp": worker.dp,
            "params_per_rank": sum(p.numel() for p in worker.model.parameters()),
            "parity": run_parity(
                worker,
                run,
                rank,
                work,
                gbs=spec["gbs"],
                seq=spec["seq"],
                vocab_size=spec["vocab_size"],
                precisions=spec["precisions"],
                overlap=spec["overlap"],
            ),
        }
        if rank == 0:
            (work / f"{run}.json").write_text(json.dumps(result))
        del worker
        free()
    destroy_distributed()


def tp_dp_parity(
    hf_dir: Path,
    *,
    gbs: int = 4,
    seq: int = 32,
    precisions: tuple[str, ...] = ("fp32",),
    overlap: tuple[bool, ...] = (True, False),
    runs: tuple[str, ...] = ("tp1", "dp2", "tp2"),
    cuda: bool = False,
    work: Path | None = None,
) -> dict:
    """TP=2 and DP=2 against TP=1 on the model in `hf_dir`: the reference run in one process, then the two-rank
    runs together in a fresh pair of processes (gloo on CPU, NCCL on GPUs 0 and 1 with `cuda`).

    Returns {"runs": run -> {tp, dp, params_per_rank, parity}, "checks", "passed"}; `passed` needs at least one
    check, so a launch that compared nothing fails."""
    import torch.multiprocessing as mp

    from trainer.distributed import free_port

    if REFERENCE_RUN not in runs:
        raise ValueError(f"runs {runs}: the reference run {REFERENCE_RUN} is needed")
    os.environ.update(NO_MULTICAST_ENV)
    work = Path(work or tempfile.mkdtemp(prefix="tp_dp_parity_"))
    vocab_size = json.loads((Path(hf_dir) / "config.json").read_text())["vocab_size"]
    spec = {
        "work": str(work),
        "hf_dir": str(hf_dir),
        "gbs": gbs,
        "seq": seq,
        "vocab_size": vocab_size,
        "precisions": list(precisions),
        "overlap": list(overlap),
        "precision": "bfloat16" if cuda else "float32",
    }
    launches = [[REFERENCE_RUN]] + [
        [r for r in runs if r != REFERENCE_RUN and LAYOUTS[r][0] == world]
        for world in sorted({LAYOUTS[r][0] for r in runs if r != REFERENCE_RUN})
    ]
    for group in launches:
        world = LAYOUTS[group[0]][0]
        mp.spawn(_parity_rank, args=(world, free_port(), dict(spec, runs=group)), nprocs=world, join=True)
    results = {run: json.loads((work / f"{run}.json").read_text()) for run in runs}
    out: dict[str, Any] = {"runs": results, "checks": checks({run: r["parity"] for run, r in results.items()})}
    out["passed"] = bool(out["checks"]) and all(out["checks"].values())
    return out
