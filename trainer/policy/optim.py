"""Optimizer, learning-rate schedule and gradient clipping for the Megatron-core policy.

We use `torch.optim.AdamW` (decoupled weight decay, as Megatron's Adam does) over fp32 master parameters
rather than Megatron's `get_megatron_optimizer`: the latter needs Megatron's DDP wrapper with contiguous
CUDA grad buffers, so it cannot run on the CPU machines where the tests run. Megatron's
`OptimizerParamScheduler` is used as is (warmup, then cosine/linear/constant to `min_lr`): it only touches
`param_groups`. Biases and norm weights (1-D parameters) get no weight decay, as in Megatron.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch


def build_optimizer(model: torch.nn.Module, opt_cfg: Mapping) -> torch.optim.Optimizer:
    """AdamW from `policy.megatron_cfg.optimizer` (lr, weight_decay, adam_beta1/2, adam_eps)."""
    name = str(opt_cfg["optimizer"]).lower()
    if name != "adam":
        raise ValueError(f"policy.megatron_cfg.optimizer.optimizer={name!r}: only 'adam' is supported")
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.dim() < 2 else decay).append(param)
    groups = [{"params": decay, "wd_mult": 1.0}, {"params": no_decay, "wd_mult": 0.0}]
    # one fused CUDA kernel for all parameters (the default, a per-op foreach loop, is several passes over memory)
    fused = bool(decay + no_decay) and all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=float(opt_cfg["lr"]),
        betas=(float(opt_cfg["adam_beta1"]), float(opt_cfg["adam_beta2"])),
        eps=float(opt_cfg["adam_eps"]),
        weight_decay=float(opt_cfg["weight_decay"]),
        fused=fused or None,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, opt_cfg: Mapping, sched_cfg: Mapping, total_steps: int):
    """Megatron's OptimizerParamScheduler: linear warmup from `lr_warmup_init` over `lr_warmup_iters`, then
    `lr_decay_style` (cosine | linear | constant) from `lr` to `min_lr` over `lr_decay_iters` (default: the
    run's total optimizer steps)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    style = str(sched_cfg["lr_decay_style"])
    if style not in ("cosine", "linear", "constant"):
        raise ValueError(f"policy.megatron_cfg.scheduler.lr_decay_style={style!r}: use cosine | linear | constant")
    warmup = int(sched_cfg["lr_warmup_iters"])
    decay_steps = int(sched_cfg["lr_decay_iters"] or 0) or max(int(total_steps), warmup + 1)
    if decay_steps <= warmup:
        raise ValueError(f"scheduler: lr_decay_iters ({decay_steps}) must exceed lr_warmup_iters ({warmup})")
    lr, min_lr, wd = float(opt_cfg["lr"]), float(opt_cfg["min_lr"]), float(opt_cfg["weight_decay"])
    return OptimizerParamScheduler(
        optimizer,
        init_lr=float(sched_cfg.get("lr_warmup_init") or 0.0) if warmup > 0 else lr,
        max_lr=lr,
        min_lr=min(min_lr, lr),
        lr_warmup_steps=warmup,
        lr_decay_steps=decay_steps,
        lr_decay_style=style,
        start_wd=wd,
        end_wd=wd,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
    )


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float | None, model_parallel_group=None) -> float:
    """Clip to `max_norm` (None or <= 0: measure only) and return the total L2 norm before clipping.

    Tensor-parallel shards are summed over the model-parallel group; parameters replicated on every TP
    rank (norms, biases of row-parallel layers) are counted once.
    """
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    # Every TP rank adds its shards; replicated parameters are added on TP rank 0 only; one all-reduce.
    # Per-tensor norms in one foreach launch (no float64 copy of every gradient), summed in float64.
    counted = [p.grad.detach() for p in params if param_is_not_tensor_parallel_duplicate(p)]
    sq_sum = torch.zeros((), dtype=torch.float64, device=params[0].grad.device)
    if counted:
        norms = torch.stack(torch._foreach_norm(counted)).double()
        sq_sum = sq_sum + norms.pow(2).sum()
    if model_parallel_group is not None and torch.distributed.get_world_size(model_parallel_group) > 1:
        torch.distributed.all_reduce(sq_sum, group=model_parallel_group)
    total = math.sqrt(float(sq_sum))
    if max_norm is not None and max_norm > 0 and math.isfinite(total):
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            torch._foreach_mul_([p.grad.detach() for p in params], coef)
    return total


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
