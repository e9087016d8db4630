"""WorkBench `queries_and_answers/*.csv` -> dataset rows.

WorkBench stores each task's answer as the text of a Python list of call strings, e.g.
`['email.delete_email.func(email_id="00000479")']`. Those strings are parsed with `ast` (never evaluated): the list
with `ast.literal_eval`, each call with `ast.parse` and its keyword values with `ast.literal_eval`. Dotted tool paths
become the Gym's underscore names (`email.delete_email` -> `email_delete_email`).

Category of a multi-domain task (the dataset has only the five single-domain categories): the domain of its first
ground-truth call, i.e. the first domain the task changes. A multi-domain task whose ground truth is empty (its
condition is false) takes the domain most often acted on first by the other tasks of the same WorkBench template
(its would-be action); when no task of the template acts, the last domain the row lists.
"""

from __future__ import annotations

import ast
import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

from env_sim.workplace_assistant.tasks.rows import DOMAINS, make_row

QA_DIR = Path(__file__).resolve().parent / "workbench_data" / "queries_and_answers"
QA_FILES = (
    "analytics_queries_and_answers.csv",
    "calendar_queries_and_answers.csv",
    "customer_relationship_manager_queries_and_answers.csv",
    "email_queries_and_answers.csv",
    "multi_domain_queries_and_answers.csv",
    "project_management_queries_and_answers.csv",
)
DOMAIN_ALIASES = {"crm": "customer_relationship_manager"}
REQUIRED_COLUMNS = ("query", "answer", "base_template", "domains")


class WorkBenchFormatError(ValueError):
    """A WorkBench answer or row that cannot be read; the message names the file, line and what is wrong."""


def parse_call(text: str) -> dict[str, str]:
    """`email.delete_email.func(email_id="1")` -> {"name": "email_delete_email", "arguments": '{"email_id": "1"}'}."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        raise WorkBenchFormatError(f"call {text!r} is not a Python call expression: {error.msg}") from None
    if not isinstance(node, ast.Call):
        raise WorkBenchFormatError(f"call {text!r} is not a function call")
    parts: list[str] = []
    target = node.func
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    if not isinstance(target, ast.Name):
        raise WorkBenchFormatError(f"call {text!r}: the called object is not a dotted name")
    parts.append(target.id)
    path = list(reversed(parts))
    if path[-1] == "func":
        path = path[:-1]
    if len(path) != 2:
        raise WorkBenchFormatError(f"call {text!r}: expected <domain>.<tool>.func, got {'.'.join(parts[::-1])}")
    if node.args:
        raise WorkBenchFormatError(f"call {text!r}: positional arguments are not supported, only keywords")
    arguments: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise WorkBenchFormatError(f"call {text!r}: **kwargs expansion is not supported")
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            raise WorkBenchFormatError(f"call {text!r}: argument {keyword.arg} is not a literal") from None
    domain = DOMAIN_ALIASES.get(path[0], path[0])
    return {"name": f"{domain}_{path[1]}", "arguments": json.dumps(arguments)}


def parse_answer(answer: str) -> list[dict[str, str]]:
    """A WorkBench answer cell (the text of a Python list of call strings) -> ground-truth calls."""
    try:
        calls = ast.literal_eval(answer.strip())
    except (ValueError, SyntaxError):
        raise WorkBenchFormatError(f"answer {answer[:120]!r} is not a Python list literal") from None
    if not isinstance(calls, list) or not all(isinstance(call, str) for call in calls):
        raise WorkBenchFormatError(f"answer {answer[:120]!r} is not a list of call strings")
    return [parse_call(call) for call in calls]


def _row_domains(cell: str) -> list[str]:
    try:
        domains = ast.literal_eval(cell)
    except (ValueError, SyntaxError):
        raise WorkBenchFormatError(f"domains {cell!r} is not a Python list literal") from None
    if isinstance(domains, str):
        domains = [domains]
    return [DOMAIN_ALIASES.get(domain, domain) for domain in domains]


def call_domain(tool_name: str) -> str | None:
    """The dataset domain a tool belongs to (None for the company directory)."""
    for domain in DOMAINS:
        if tool_name.startswith(domain + "_"):
            return domain
    return None


def read_workbench(qa_dir: str | Path = QA_DIR) -> list[dict[str, Any]]:
    """Every task of the Q&A files, in file order: {query, ground_truth, domains, base_template, source}."""
    qa_dir = Path(qa_dir)
    tasks = []
    for file_name in QA_FILES:
        path = qa_dir / file_name
        if not path.is_file():
            raise FileNotFoundError(f"WorkBench file missing: {path}")
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise WorkBenchFormatError(f"{path}: missing columns {missing}")
            for line_number, record in enumerate(reader, start=2):
                try:
                    ground_truth = parse_answer(record["answer"])
                    domains = _row_domains(record["domains"])
                except WorkBenchFormatError as error:
                    raise WorkBenchFormatError(f"{path}:{line_number}: {error}") from None
                unknown = [domain for domain in domains if domain not in DOMAINS]
                if unknown:
                    raise WorkBenchFormatError(f"{path}:{line_number}: unknown domains {unknown}")
                tasks.append(
                    {
                        "query": record["query"],
                        "ground_truth": ground_truth,
                        "domains": domains,
                        "base_template": record["base_template"],
                        "source": f"{path.name}:{line_number}",
                    }
                )
    return tasks


def _categorise(tasks: list[dict[str, Any]]) -> list[str]:
    """One domain per task (see the module docstring for multi-domain tasks)."""
    acted_first: dict[str, Counter] = {}
    for task in tasks:
        if task["ground_truth"]:
            domain = call_domain(task["ground_truth"][0]["name"])
            acted_first.setdefault(task["base_template"], Counter())[domain] += 1
    domains = []
    for task in tasks:
        if len(task["domains"]) == 1:
            domains.append(task["domains"][0])
        elif task["ground_truth"]:
            domains.append(call_domain(task["ground_truth"][0]["name"]))
        elif task["base_template"] in acted_first:
            domains.append(acted_first[task["base_template"]].most_common(1)[0][0])
        else:
            domains.append(task["domains"][-1])
    return domains


def convert_workbench(qa_dir: str | Path = QA_DIR, start_id: int = 0) -> list[dict[str, Any]]:
    """All WorkBench tasks as dataset rows with ids start_id, start_id+1, ... in file order."""
    tasks = read_workbench(qa_dir)
    return [
        make_row(start_id + index, task["query"], task["ground_truth"], domain)
        for index, (task, domain) in enumerate(zip(tasks, _categorise(tasks)))
    ]
