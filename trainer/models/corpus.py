"""The text the tiny model's tokenizer is trained on: what its prompts and answers will consist of.

Tool schemas (full JSON and the compact one-line rendering), and whole expert conversations from the task
generator (system prompt, query, Hermes tool calls, tool outputs, final answer) rendered in both tool formats.
Its own generator seed keeps the tokenizer independent of the run's data split; the texts carry no labels the
model could learn from (a tokenizer only learns which character sequences are frequent).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

CORPUS_SEED = 10_007
# Every prompt starts with the same tool section: weighting it makes BPE merge its words into few tokens,
# which shortens every prompt of the tiny model (its context is small and its CPU time precious).
TOOL_SECTION_WEIGHT = 200


def default_tiny_corpus(num_rows: int = 600, seed: int = CORPUS_SEED) -> Iterator[str]:
    from env_sim.agent import expert_turns, run_episode, scripted_model
    from env_sim.formats import get_format
    from env_sim.formats.compact import SIGNATURES
    from env_sim.formats.responses import tool_to_chat
    from env_sim.workplace_assistant.tasks.generator import generate_rows
    from env_sim.workplace_assistant.tasks.rows import SYSTEM_PROMPT
    from env_sim.workplace_assistant.tools import TOOL_SCHEMAS

    for tool in TOOL_SCHEMAS:
        yield json.dumps(tool_to_chat(tool), ensure_ascii=False)
    for name in ("hermes", "nemotron"):
        fmt = get_format(name)
        for _ in range(TOOL_SECTION_WEIGHT):
            yield fmt.render_tools(TOOL_SCHEMAS, compact=True)
            yield fmt.render_tools(TOOL_SCHEMAS, compact=SIGNATURES)
        yield fmt.render_tools(TOOL_SCHEMAS, compact=False)
    for index, row in enumerate(generate_rows(num_rows, seed)):
        fmt_name = "nemotron" if index % 4 == 3 else "hermes"
        episode = run_episode(scripted_model(expert_turns(row, fmt_name)), row, fmt_name, compact_tools=True)
        # the system message repeats the tool list (yielded once above): the conversation after it
        yield episode.fmt.render_prompt(episode.messages[1:], add_generation_prompt=False)
    yield SYSTEM_PROMPT
