"""The seam between the generic machinery (agent loop, HTTP server, CLI) and one environment.

An environment is a package under ``env_sim/`` whose module exposes ``ENVIRONMENT``, an ``Environment`` holding
the handful of things the generic code needs: the tool schemas, a fresh episode state, running one tool on a
state, and the reward. Everything else (databases, tools, data, task rows) stays inside the environment's folder.
The generic code finds an environment by the name a dataset row carries in ``environment_name``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# environment name -> module that defines ENVIRONMENT (imported on first use)
ENVIRONMENTS = {"workplace_assistant": "env_sim.workplace_assistant"}
DEFAULT_ENVIRONMENT = "workplace_assistant"


@dataclass(frozen=True)
class Verdict:
    """The reward of one trajectory plus whatever the verifier wants to log about it."""

    reward: float
    diagnostics: dict = field(default_factory=dict)


def _keep_all(tools: list[dict], category: str) -> list[dict]:
    return list(tools)


@dataclass(frozen=True)
class Environment:
    """What an environment gives the agent loop, the server and the CLI.

    name: the ``environment_name`` of its dataset rows.
    tool_schemas: Responses-API function schemas, in the order prompts show them.
    fresh_state: ``() -> state``; a new, independent episode state (opaque to the generic code).
    call_tool: ``(state, name, kwargs) -> output`` (str, dict or list); never raises: an unknown tool or a failing
        call comes back as the output the model should see.
    verify: ``(predicted_calls, ground_truth) -> Verdict``; the calls are ``[{"name", "arguments": JSON text}]``.
    domain_tools: ``(tools, category) -> tools`` for the prompt option ``tool_scope="domain"``; default: all.
    commands: extra ``python -m env_sim`` subcommands, as ``(name, help, configure, run)`` tuples.
    """

    name: str
    tool_schemas: list[dict]
    fresh_state: Callable[[], Any]
    call_tool: Callable[[Any, str, dict], Any]
    verify: Callable[[Sequence[dict], Any], Verdict]
    domain_tools: Callable[[list[dict], str], list[dict]] = _keep_all
    commands: tuple = ()


def get_environment(env: str | Environment | None = None) -> Environment:
    """An environment by name (None: the default); an Environment is returned unchanged."""
    if isinstance(env, Environment):
        return env
    name = env or DEFAULT_ENVIRONMENT
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; known: {sorted(ENVIRONMENTS)}")
    return importlib.import_module(ENVIRONMENTS[name]).ENVIRONMENT
