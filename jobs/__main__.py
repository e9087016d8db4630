"""Command line of the job chain (what the Makefile calls): `python -m jobs [--config NAME] COMMAND ...`.

    submit --until STAGE [--nodes N] [--wait] [key=value ...]   submit what is missing of the chain
    resume [--from latest|best|step_N] [--nodes N]              resubmit training from a checkpoint
    status                                                      job id, state, reason, artifacts per stage
    logs [--stage S] [--lines N]                                log files and their tails
    sweep-install [--every-min M] [--matrix FILE]               scheduled sanity sweeps (self-resubmitting)
    sweep-remove
    demo                                                        the whole chain, followed, with a summary

Trailing `key=value` arguments are config overrides (`+key=value` adds a key). Only submitit and omegaconf are
imported here: this runs on login nodes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from jobs import chain, status, sweep
from jobs.stages import STAGE_ORDER, slurm_available
from pipeline.config import load_config

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED")


def _config(args: argparse.Namespace, extra: list[str] = (), nodes: int | None = None):
    cfg = load_config(args.config, list(args.overrides) + list(extra))
    if bool(cfg.slurm.use_cluster) and not slurm_available():
        print("Slurm is not available here (no sbatch/sacct on PATH): running the chain with submitit's "
              "LocalExecutor instead (slurm.use_cluster=false).", flush=True)
        cfg.slurm.use_cluster = False
    return chain.resolve_config(cfg, nodes)


def _targets(items: list[str]) -> dict[str, str]:
    targets = {}
    for item in items or []:
        stage, sep, target = item.partition("=")
        if not sep or stage not in STAGE_ORDER or ":" not in target:
            raise SystemExit(f"--target wants STAGE=module:function with STAGE in {STAGE_ORDER}, got {item!r}")
        targets[stage] = target
    return targets


def follow(cfg, job_ids: list[str], poll_s: float = 5.0, quiet: bool = False) -> dict[str, str]:
    """Poll sacct until every job has ended; print state changes. Returns job id -> final state."""
    last: dict[str, str] = {}
    while True:
        records = status.sacct_records(job_ids)
        states = {j: records.get(j, {}).get("State", "PENDING") for j in job_ids}
        for job_id, state in states.items():
            if state != last.get(job_id) and not quiet:
                print(f"  [{time.strftime('%H:%M:%S')}] job {job_id}: {state}", flush=True)
        last = states
        if all(s.startswith(FINAL_STATES) for s in states.values()):
            return states
        time.sleep(poll_s)


def cmd_submit(args: argparse.Namespace) -> int:
    cfg = _config(args, nodes=args.nodes)
    print(f"run {cfg.run.name}: chain up to {args.until} -> {cfg.run.root}", flush=True)
    plans = chain.submit_chain(cfg, args.until, nodes=args.nodes or 1, always=args.force,
                               targets=_targets(args.target))
    ids = [p.job_id for p in plans if p.job_id]
    if args.wait and ids and bool(cfg.slurm.use_cluster):
        states = follow(cfg, ids)
        print(status.format_status(status.collect_status(cfg)))
        return 0 if all(s.startswith("COMPLETED") for s in states.values()) else 1
    if ids and bool(cfg.slurm.use_cluster):
        print("follow with: make status   (or: python -m jobs status)")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    extra = [] if args.from_ in (None, "latest") else [f"+checkpointing.resume_from={args.from_}"]
    if args.from_ not in (None, "latest", "best") and not args.from_.startswith("step_"):
        raise SystemExit(f"--from must be latest, best or step_N, got {args.from_!r}")
    cfg = _config(args, extra, nodes=args.nodes)
    print(f"run {cfg.run.name}: resuming training from {args.from_ or 'latest'} checkpoint", flush=True)
    chain.submit_chain(cfg, args.until, nodes=args.nodes or 1, always=["train"])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _config(args)
    rows = status.collect_status(cfg)
    if not rows:
        print(f"nothing submitted yet for run {cfg.run.name} ({chain.record_path(cfg)} does not exist)")
        return 0
    print(f"run {cfg.run.name} ({cfg.run.root})")
    print(status.format_status(rows))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        files = status.log_files(cfg, args.stage)
    except KeyError as err:
        print(err.args[0], file=sys.stderr)
        return 1
    print(status.format_logs(files, args.lines))
    return 0


def cmd_sweep_install(args: argparse.Namespace) -> int:
    if not slurm_available():
        raise SystemExit("sweeps need Slurm (sbatch/squeue): bring up the cluster with `make cluster-up`")
    job_id = sweep.install(args.config, list(args.overrides), args.every_min, args.matrix,
                           _targets(args.target).get("sanity"))
    print(f"sweep installed: first tick is job {job_id}; then every {args.every_min} min "
          f"(state in {sweep.sweep_root(args.config, list(args.overrides))}/sweep.json)")
    return 0


def cmd_sweep_remove(args: argparse.Namespace) -> int:
    ids = sweep.remove(args.config, list(args.overrides))
    print(f"sweep removed (cancelled jobs: {', '.join(ids) or 'none pending'})")
    return 0


def _val_summary(root: Path) -> list[str]:
    metrics = root / "train" / "metrics.jsonl"
    if not metrics.exists():
        return [f"no training metrics at {metrics}"]
    vals, speeds = [], []
    for line in metrics.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key, value in row.items():
            if key.endswith("val:accuracy") and isinstance(value, (int, float)):
                vals.append((row.get("step"), value))
            if "samples" in key and key.endswith("/s") and isinstance(value, (int, float)):
                speeds.append(value)
    lines = []
    if vals:
        best = max(vals, key=lambda item: item[1])
        lines.append(f"val:accuracy  first {vals[0][1]:.3f} (step {vals[0][0]})  best {best[1]:.3f} "
                     f"(step {best[0]})  final {vals[-1][1]:.3f} (step {vals[-1][0]})")
    if speeds:
        lines.append(f"samples/s     mean {sum(speeds) / len(speeds):.2f}")
    for name in ("train/reward_accuracy.png", "train/metrics.jsonl", "train/hf_model", "eval/per_category.json"):
        path = root / name
        lines.append(f"{name:<28} {path if path.exists() else '(missing)'}")
    return lines


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = _config(args, nodes=args.nodes)
    until = "eval"
    print(f"demo: run {cfg.run.name}, chain {' -> '.join(chain.chain_stages(cfg, until))} -> {cfg.run.root}",
          flush=True)
    started = time.time()
    plans = chain.submit_chain(cfg, until, nodes=args.nodes or 1)
    ids = [p.job_id for p in plans if p.job_id]
    ok = True
    if ids and bool(cfg.slurm.use_cluster):
        states = follow(cfg, ids)
        ok = all(s.startswith("COMPLETED") for s in states.values())
    print(f"\ndemo finished in {time.time() - started:.0f}s ({'all stages completed' if ok else 'FAILED'})")
    if bool(cfg.slurm.use_cluster):
        print(status.format_status(status.collect_status(cfg)))
    print("\n".join(_val_summary(Path(cfg.run.root))))
    if not ok:
        print("see the failing stage's log: make logs STAGE=<stage>")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="tiny_cpu", help="recipe name in configs/ or a YAML path")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(handler=handler)
        return p

    p = command("submit", cmd_submit, "submit the chain up to a stage (skips up-to-date stages)")
    p.add_argument("--until", required=True, choices=STAGE_ORDER)
    p.add_argument("--nodes", type=int, default=None, help="nodes for the train stage (one task per node)")
    p.add_argument("--force", action="append", default=[], choices=STAGE_ORDER,
                   help="submit this stage even if up to date (repeatable)")
    p.add_argument("--target", action="append", default=[], metavar="STAGE=module:function",
                   help="run another function for a stage (tests, benchmarks)")
    p.add_argument("--wait", action="store_true", help="follow the jobs until they end; exit 1 if one failed")
    p = command("resume", cmd_resume, "resubmit training from a checkpoint")
    p.add_argument("--from", dest="from_", default=None, help="latest (default), best or step_N")
    p.add_argument("--nodes", type=int, default=None)
    p.add_argument("--until", default="train", choices=("train", "eval"))
    command("status", cmd_status, "per-stage job state, reason and artifacts")
    p = command("logs", cmd_logs, "stage log files and their last lines")
    p.add_argument("--stage", choices=STAGE_ORDER, default=None)
    p.add_argument("--lines", type=int, default=20)
    p = command("sweep-install", cmd_sweep_install, "schedule sanity sweeps (self-resubmitting job)")
    p.add_argument("--every-min", type=int, default=1440)
    p.add_argument("--matrix", default=None, help="YAML list of override lists; one sanity run per entry")
    p.add_argument("--target", action="append", default=[], metavar="sanity=module:function",
                   help="run another function as the sanity stage (tests)")
    command("sweep-remove", cmd_sweep_remove, "cancel the scheduled sanity sweep")
    p = command("demo", cmd_demo, "run the whole chain, follow it, print a summary")
    p.add_argument("--nodes", type=int, default=None)
    for p in sub.choices.values():
        p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
