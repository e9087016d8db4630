"""env_sim for TRL's GRPOTrainer (bench/peer_bench.py's TRL side): the single-turn reward function and the
multi-turn environment, both scoring with env_sim's verifier.

Imported by both sides' processes (TRL's runs in .venv-peer): only the standard library at import time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

# TRL hands an environment's methods to the chat template as `tools`; the system message already carries env_sim's
# tool section (the same text our prompts show), so the multi-turn TRL side renders with the model's template told
# to leave `tools` out: both sides then see the same prompt tokens (checked every step).
TOOLS_IN_SYSTEM_MESSAGE = "{%- set tools = none -%}"


class EnvSimReward:
    """env_sim's verifier as a TRL reward function: each completion is one model call of an episode of the
    completion's row (`row_json` column), its tool calls executed, the final state verified. A completion that did
    not end with a stop token was cut by the token limit: its calls are recorded, not executed, as in our
    rollouts."""

    __name__ = "env_sim_verifier"  # TRL names a reward function by its __name__

    def __init__(self, tool_format: str, episode_options: Mapping[str, Any], stop_ids: Sequence[int]):
        self.tool_format = tool_format
        self.episode_options = dict(episode_options)
        self.stop_ids = {int(i) for i in stop_ids}
        self.seconds = 0.0

    def truncated(self, completion_ids: Sequence[int] | None) -> bool:
        return not (completion_ids and int(completion_ids[-1]) in self.stop_ids)

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[str],
        completion_ids: Sequence[Sequence[int]] | None = None,
        row_json: Sequence[str] | None = None,
        **_: Any,
    ) -> list[float]:
        from env_sim.agent import Episode

        if row_json is None:
            raise ValueError("EnvSimReward needs the dataset's row_json column")
        started = time.perf_counter()
        rewards = []
        for i, text in enumerate(completions):
            episode = Episode(json.loads(row_json[i]), self.tool_format, **self.episode_options)
            episode.step(str(text), truncated=self.truncated(completion_ids[i] if completion_ids else None))
            rewards.append(float(episode.finish().reward))
        self.seconds += time.perf_counter() - started
        return rewards


JSON_TYPES = {"string": str, "integer": int, "number": float, "boolean": bool}


def tool_method(tool: Mapping[str, Any]):
    """A method standing for one env_sim tool, with the signature and Google docstring that TRL (through
    transformers' `get_json_schema`) turns back into the tool's schema; calling it runs the tool on the episode."""
    import inspect

    function = tool.get("function", tool)
    name, params = function["name"], function.get("parameters", {})
    required = set(params.get("required", []))
    signature = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    doc = [function.get("description", name).strip(), "", "Args:"]
    for arg, spec in params.get("properties", {}).items():
        if spec.get("type") not in JSON_TYPES:
            raise ValueError(
                f"tool {name}: argument {arg} has type {spec.get('type')!r}, not one of {list(JSON_TYPES)}"
            )
        default = inspect.Parameter.empty if arg in required else None
        kind = inspect.Parameter.KEYWORD_ONLY
        signature.append(inspect.Parameter(arg, kind, default=default, annotation=JSON_TYPES[spec["type"]]))
        doc.append(f"    {arg}: {spec.get('description', arg)}")

    def call(self, **arguments: Any) -> str:
        return self._call_tool(name, arguments)

    call.__name__ = call.__qualname__ = name
    call.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    call.__annotations__ = {p.name: p.annotation for p in signature[1:]}
    call.__doc__ = "\n".join(doc if len(doc) > 3 else doc[:1])
    return call


class EpisodeEnvironment:
    """One episode's env_sim state behind TRL's environment protocol: `reset` starts the row's episode, tool
    methods (added per tool set by `environment_class`) run calls on it, `get_reward` verifies the calls made."""

    tool_format = "hermes"
    episode_options: dict[str, Any] = {}
    reward_seconds = [0.0]  # shared by every instance: the step's verification time

    def reset(self, row_json: str, **_: Any) -> None:
        from env_sim.agent import Episode

        self.episode = Episode(json.loads(row_json), self.tool_format, **self.episode_options)

    def _call_tool(self, name: str, arguments: Mapping[str, Any]) -> str:
        from env_sim.execute import execute_call

        text = json.dumps(dict(arguments), ensure_ascii=False)
        self.episode.function_calls.append({"name": name, "arguments": text})
        return execute_call(self.episode.env.call_tool, self.episode.state, name, text)

    def get_reward(self) -> float:
        started = time.perf_counter()
        reward = float(self.episode.finish().reward)
        EpisodeEnvironment.reward_seconds[0] += time.perf_counter() - started
        return reward


def environment_class(name: str, tools: Sequence[Mapping[str, Any]], tool_format: str, options: Mapping[str, Any]):
    """An `EpisodeEnvironment` whose methods are these tools (TRL exposes an environment's public methods)."""
    methods = [tool_method(tool) for tool in tools]
    attrs = {"tool_format": tool_format, "episode_options": dict(options), **{m.__name__: m for m in methods}}
    return type(f"Env_{name}", (EpisodeEnvironment,), attrs)
