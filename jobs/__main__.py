"""Command line of the job chain (what the Makefile calls): `python -m jobs [--config NAME] COMMAND ...`.

    submit --until STAGE [--nodes N] [--wait] [key=value ...]   submit what is missing of the chain
    resume [--from latest|best|step_N] [--nodes N]              resubmit training from a checkpoint, with the
                                                                run's recorded config and the overrides given
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
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from infra.config import load_config
from jobs import chain, slurm_state, status, sweep
from jobs.stages import STAGE_ORDER, slurm_available
from trainer.checkpoint import list_checkpoints
from trainer.placement import PlacementError, known_shape, plan_for


def _config(
    args: argparse.Namespace,
    extra: Sequence[str] = (),
    nodes: int | None = None,
    source: str | Path | None = None,
    before: Sequence[str] = (),
) -> DictConfig:
    """The recipe `--config` (or the YAML `source`) with `before`, the command line's overrides and `extra`."""
    cfg = load_config(source or args.config, list(before) + list(args.overrides) + list(extra))
    if bool(cfg.slurm.use_cluster) and not slurm_available():
        print(
            "Slurm is not available here (no sbatch/sacct on PATH): running the chain with submitit's "
            "LocalExecutor instead (slurm.use_cluster=false).",
            flush=True,
        )
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


def placement_plan(cfg: DictConfig, quiet: bool = False) -> str | None:
    """The GPU placement plan of the train job, printed before anything is submitted; an impossible plan stops
    here, on the login node, in seconds (SystemExit with what to change). None on CPU recipes."""
    if int(cfg.cluster.gpus_per_node) <= 0:
        return None
    try:
        text = plan_for(cfg).describe()
    except PlacementError as err:
        raise SystemExit(f"run {cfg.run.name}: the train job cannot be placed: {err}") from None
    if known_shape(str(cfg.policy.model_name)) is None:
        text += f"\n(no memory estimate: {cfg.policy.model_name} is not among trainer.placement's known shapes)"
    if not quiet:
        print(text, flush=True)
    return text


def follow(cfg, job_ids: list[str], poll_s: float = 5.0, quiet: bool = False) -> dict[str, str]:
    """Poll sacct until every job has ended; print state changes. Returns job id -> final state."""
    last: dict[str, str] = {}
    while True:
        records = slurm_state.sacct_records(job_ids)
        states = {j: records[j].state if j in records else slurm_state.PENDING for j in job_ids}
        for job_id, state in states.items():
            if state != last.get(job_id) and not quiet:
                print(f"  [{time.strftime('%H:%M:%S')}] job {job_id}: {state}", flush=True)
        last = states
        if all(slurm_state.is_final(s) for s in states.values()):
            return states
        time.sleep(poll_s)


def cmd_submit(args: argparse.Namespace) -> int:
    cfg = _config(args, nodes=args.nodes)
    print(f"run {cfg.run.name}: chain up to {args.until} -> {cfg.run.root}", flush=True)
    if STAGE_ORDER.index(args.until) >= STAGE_ORDER.index("train"):
        placement_plan(cfg)
    plans = chain.submit_chain(
        cfg, args.until, nodes=int(cfg.cluster.num_nodes), always=args.force, targets=_targets(args.target)
    )
    ids = [p.job_id for p in plans if p.job_id]
    if args.wait and ids and bool(cfg.slurm.use_cluster):
        states = follow(cfg, ids)
        print(status.format_status(status.collect_status(cfg)))
        return 0 if all(s == "COMPLETED" for s in states.values()) else 1
    if ids and bool(cfg.slurm.use_cluster):
        print("follow with: make status   (or: python -m jobs status)")
    return 0


def resume_config(args: argparse.Namespace, extra: Sequence[str], nodes: int | None) -> DictConfig:
    """The run's recorded config (`<run.root>/config.yaml`, written at submission) with only the command line's
    overrides on top; prints what they change. Without a record: the recipe, and says so."""
    located = load_config(args.config, list(args.overrides))  # only to find the run (run.name, run.root)
    path = chain.config_record_path(located)
    if not path.exists():
        print(
            f"run {located.run.name}: no recorded config ({path} does not exist: the run was submitted before runs "
            f"recorded their config, or never); resuming with the recipe {args.config} and the overrides given",
            flush=True,
        )
        return _config(args, extra, nodes=nodes)
    recorded = chain.resolve_config(load_config(path))
    # one submission's deadline and starting checkpoint are not the next one's
    resets = [f"{key}=null" for key in chain.SUBMISSION_KEYS if OmegaConf.select(recorded, key) is not None]
    cfg = _config(args, extra, nodes=nodes, source=path, before=resets)
    changes = chain.config_changes(recorded, cfg)
    print(
        f"run {cfg.run.name}: resuming with its recorded config ({path})"
        + ("; changed:" if changes else "; nothing changed"),
        flush=True,
    )
    for key, old, new in changes:
        print(f"  {key}: {old} -> {new}", flush=True)
    return cfg


def cmd_resume(args: argparse.Namespace) -> int:
    extra = [] if args.from_ in (None, "latest") else [f"+checkpointing.resume_from={args.from_}"]
    if args.from_ not in (None, "latest", "best") and not args.from_.startswith("step_"):
        raise SystemExit(f"--from must be latest, best or step_N, got {args.from_!r}")
    cfg = resume_config(args, extra, nodes=args.nodes)
    steps = [step for step, _ in list_checkpoints(str(cfg.checkpointing.checkpoint_dir))]
    if not steps:
        print(
            f"run {cfg.run.name}: no checkpoint in {cfg.checkpointing.checkpoint_dir}; training starts at step 0",
            flush=True,
        )
    else:
        print(
            f"run {cfg.run.name}: resuming training from the {args.from_ or 'latest'} checkpoint "
            f"(on disk: {', '.join(f'step_{n}' for n in steps)})",
            flush=True,
        )
    placement_plan(cfg)
    chain.submit_chain(cfg, args.until, nodes=int(cfg.cluster.num_nodes), always=["train"], keep_before="train")
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


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = _config(args, nodes=args.nodes)
    if placement_plan(cfg) is None:
        print(f"run {cfg.run.name}: cluster.gpus_per_node is 0: CPU actors, nothing to place")
    return 0


def cmd_sweep_install(args: argparse.Namespace) -> int:
    if not slurm_available():
        raise SystemExit("sweeps need Slurm (sbatch/squeue): bring up the cluster with `make cluster-up`")
    job_id = sweep.install(
        args.config, list(args.overrides), args.every_min, args.matrix, _targets(args.target).get("sanity")
    )
    print(
        f"sweep installed: first tick is job {job_id}; then every {args.every_min} min "
        f"(state in {sweep.sweep_root(args.config, list(args.overrides))}/sweep.json)"
    )
    return 0


def cmd_sweep_remove(args: argparse.Namespace) -> int:
    ids = sweep.remove(args.config, list(args.overrides))
    print(f"sweep removed (cancelled jobs: {', '.join(ids) or 'none pending'})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from jobs import demo

    cfg = load_config(args.config, demo.demo_overrides(args.overrides))
    if bool(cfg.slurm.use_cluster):
        ok, why = demo.slurm_responding()
        if not ok:
            print(
                f"demo: no usable Slurm cluster here ({why}). Running the same chain with submitit's "
                "LocalExecutor instead: the stages run one after another on this machine, "
                "without a queue, dependencies or requeue.",
                flush=True,
            )
            cfg.slurm.use_cluster = False
    cfg = chain.resolve_config(cfg, args.nodes)
    return demo.run_demo(cfg, nodes=int(cfg.cluster.num_nodes), poll_s=args.poll_s)


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
    p.add_argument(
        "--nodes",
        type=int,
        default=None,
        help="nodes of the train stage, one task per node (default: cluster.num_nodes)",
    )
    p.add_argument(
        "--force",
        action="append",
        default=[],
        choices=STAGE_ORDER,
        help="submit this stage even if up to date (repeatable)",
    )
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="STAGE=module:function",
        help="run another function for a stage (tests, benchmarks)",
    )
    p.add_argument("--wait", action="store_true", help="follow the jobs until they end; exit 1 if one failed")
    p = command("plan", cmd_plan, "print the train job's GPU placement and memory plan (nothing is submitted)")
    p.add_argument("--nodes", type=int, default=None, help="nodes of the train job (default: cluster.num_nodes)")
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
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="sanity=module:function",
        help="run another function as the sanity stage (tests)",
    )
    command("sweep-remove", cmd_sweep_remove, "cancel the scheduled sanity sweep")
    p = command("demo", cmd_demo, "run the whole chain, follow it, print a summary")
    p.add_argument("--nodes", type=int, default=None, help="nodes of the train job (default: cluster.num_nodes)")
    p.add_argument("--poll-s", type=float, default=5.0, help="seconds between progress polls")
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
