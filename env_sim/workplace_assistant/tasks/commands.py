"""The task subcommands of `python -m env_sim`: `generate` and `convert-workbench`.

    python -m env_sim generate --n 1255 --seed 42 --output rows.jsonl
    python -m env_sim convert-workbench --output rows.jsonl

Both write JSON lines atomically and print a one-line JSON summary (rows per category, empty ground truths,
rows whose ground truth failed to replay).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from env_sim.workplace_assistant.tasks.rows import CATEGORIES, validate_row, write_rows


def _summary(rows: list[dict[str, Any]], output: str, check: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "output": output,
        "rows": len(rows),
        "per_category": dict(sorted(Counter(row["category"] for row in rows).items())),
        "empty_ground_truth": sum(1 for row in rows if not row["ground_truth"]),
    }
    if check:
        failing = {row["id"]: problems for row in rows if (problems := validate_row(row))}
        summary["rows_with_problems"] = len(failing)
        summary["problems"] = [p for problems in list(failing.values())[:10] for p in problems]
    return summary


def run_generate(args: argparse.Namespace) -> int:
    from env_sim.workplace_assistant.tasks.generator import generate_rows

    rows = generate_rows(args.n, args.seed, categories=args.categories or None, start_id=args.start_id)
    summary = _summary(rows, args.output, check=not args.no_check)
    if summary.get("rows_with_problems"):
        print(json.dumps(summary), file=sys.stderr)
        return 1
    write_rows(args.output, rows)
    print(json.dumps(summary))
    return 0


def run_convert_workbench(args: argparse.Namespace) -> int:
    from env_sim.workplace_assistant.tasks.workbench import QA_DIR, convert_workbench

    rows = convert_workbench(args.qa_dir or QA_DIR, start_id=args.start_id)
    write_rows(args.output, rows)
    # WorkBench rows are written as they are; replay problems are reported, not fixed.
    print(json.dumps(_summary(rows, args.output, check=not args.no_check)))
    return 0


GENERATE_HELP = "write seeded task rows in the dataset format"
CONVERT_HELP = "convert WorkBench queries_and_answers CSVs into task rows"


def configure_generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, required=True, help="number of rows")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", required=True, help="JSON-lines file to write")
    parser.add_argument(
        "--categories",
        nargs="*",
        choices=list(CATEGORIES),
        metavar="CATEGORY",
        help=f"restrict to these categories ({', '.join(CATEGORIES)})",
    )
    parser.add_argument("--start-id", type=int, default=0)
    parser.add_argument("--no-check", action="store_true", help="skip replaying every ground truth")


def configure_convert_workbench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="JSON-lines file to write")
    parser.add_argument(
        "--qa-dir", default=None, help="folder with the *_queries_and_answers.csv files (default: the vendored copy)"
    )
    parser.add_argument("--start-id", type=int, default=0)
    parser.add_argument("--no-check", action="store_true", help="skip replaying every ground truth")


# (name, help, configure, run) for env_sim.cli.register_command
COMMANDS = (
    ("generate", GENERATE_HELP, configure_generate, run_generate),
    ("convert-workbench", CONVERT_HELP, configure_convert_workbench, run_convert_workbench),
)


def add_task_commands(subparsers: Any) -> None:
    """Register the commands on an argparse subparsers object (for use outside env_sim.cli)."""
    for name, help_text, configure, run in COMMANDS:
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        configure(parser)
        parser.set_defaults(func=run)
