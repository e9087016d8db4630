"""``python -m env_sim <command>``: verify trajectories, serve the HTTP API, and each environment's own commands.

``verify`` and ``serve`` are generic (``--environment`` picks one, default the workplace assistant). An environment
adds commands through ``Environment.commands`` (the workplace assistant: ``generate``, ``convert-workbench``).
Adding a generic command: write ``configure(parser)`` and ``run(args) -> int`` and call
``register_command(name, help, configure, run)`` below; ``main`` picks everything registered up.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from env_sim.environment import DEFAULT_ENVIRONMENT, ENVIRONMENTS, get_environment
from env_sim.files import atomic_write_lines

_COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}


def register_command(
    name: str, help: str, configure: Callable[[argparse.ArgumentParser], None], run: Callable[[argparse.Namespace], int]
) -> None:
    _COMMANDS[name] = (help, configure, run)


class InputError(ValueError):
    """Bad input file content; the message names the file, line and problem."""


# --- verify -----------------------------------------------------------------------------------------


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON (Python's json reads it, other readers do not)")


def read_verify_input(path: Path) -> list[dict]:
    """Lines ``{"id", "predicted": [...], "ground_truth": [...]}``; blank lines are skipped."""
    rows = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_constant=_reject_constant)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            except ValueError as e:
                raise InputError(f"{path}:{lineno}: {e}") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in ("id", "predicted", "ground_truth"):
                if key not in row:
                    raise InputError(f"{path}:{lineno}: missing key '{key}'")
            for key in ("predicted", "ground_truth"):
                calls = row[key]
                if isinstance(calls, str) and key == "ground_truth":
                    continue  # the reference accepts a JSON-encoded ground truth too
                if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
                    raise InputError(f'{path}:{lineno}: \'{key}\' must be a list of {{"name", "arguments"}} objects')
            row["_line"] = lineno
            rows.append(row)
    return rows


def _add_environment_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--environment",
        default=DEFAULT_ENVIRONMENT,
        choices=sorted(ENVIRONMENTS),
        help=f"which environment (default: {DEFAULT_ENVIRONMENT})",
    )


def _configure_verify(p: argparse.ArgumentParser) -> None:
    _add_environment_option(p)
    p.add_argument("--input", required=True, type=Path, help="JSONL: {id, predicted, ground_truth} per line")
    p.add_argument("--output", required=True, type=Path, help="JSONL: {id, reward, ...diagnostics} per line")


def _run_verify(args: argparse.Namespace) -> int:
    verify = get_environment(args.environment).verify
    rows = read_verify_input(args.input)
    out = []
    total, scored, broken = 0.0, 0, []
    for row in rows:
        where = f"{args.input}:{row['_line']}: id={row['id']!r}"
        try:
            verdict = verify(row["predicted"], row["ground_truth"])
        except ValueError as e:
            raise InputError(f"{where}: {e}") from None
        problems = verdict.diagnostics.get("ground_truth_errors")
        if problems:  # a ground truth that does not replay scores nothing: reported, not scored
            broken.append(f"{where}: ground truth does not replay: {'; '.join(problems)}")
            out.append(json.dumps({"id": row["id"], "reward": None, **verdict.diagnostics}, ensure_ascii=False))
            continue
        total, scored = total + verdict.reward, scored + 1
        out.append(json.dumps({"id": row["id"], "reward": verdict.reward, **verdict.diagnostics}, ensure_ascii=False))
    atomic_write_lines(args.output, out)
    mean = total / scored if scored else 0.0
    print(f"verified {scored} trajectories, mean reward {mean:.4f} -> {args.output}", file=sys.stderr)
    for line in broken:
        print(f"not scored: {line}", file=sys.stderr)
    return 1 if broken else 0


# --- serve ------------------------------------------------------------------------------------------


def _configure_serve(p: argparse.ArgumentParser) -> None:
    _add_environment_option(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--verbose", action="store_true", help="log every request")


def _run_serve(args: argparse.Namespace) -> int:
    from env_sim.server import serve

    serve(get_environment(args.environment), args.host, args.port, args.verbose)
    return 0


register_command("verify", "score trajectories against ground truth (reference reward)", _configure_verify, _run_verify)
register_command("serve", "HTTP server compatible with the reference resources server", _configure_serve, _run_serve)


def build_parser() -> argparse.ArgumentParser:
    """Generic commands plus every environment's own (importing an environment is cheap: data loads lazily)."""
    commands = dict(_COMMANDS)
    for env_name in ENVIRONMENTS:
        for name, help_text, configure, run in get_environment(env_name).commands:
            if name in commands:
                raise ValueError(f"environment {env_name!r} redefines the command {name!r}")
            commands[name] = (help_text, configure, run)
    parser = argparse.ArgumentParser(prog="python -m env_sim", description="Tool-use environments for agents")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, configure, run) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except (InputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
