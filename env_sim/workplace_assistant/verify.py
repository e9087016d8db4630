"""The reward: replay predicted and ground-truth calls on fresh states and compare the outcome.

Same rule as the reference's ``is_correct`` (and WorkBench's): each list of calls is replayed on
its own fresh database with ``tool(**json.loads(arguments))`` -- no None-dropping here, a failing
call is skipped -- then the five mutable tables are compared after lower-casing every column but
status/list_name/board, with row order and index labels mattering. Reward 1.0 iff all five match.
Reads never matter; any extra or wrong write gives 0.0; an empty ground truth rewards leaving
the state untouched.
"""

from __future__ import annotations

import json
from typing import Any

from env_sim.environment import Verdict
from env_sim.workplace_assistant.database import COMPARED_TABLES, Database
from env_sim.workplace_assistant.tools import REGISTRY


def replay(calls) -> tuple[Database, list[str]]:
    """Run ``calls`` ([{"name", "arguments": JSON str}]) on a fresh database.

    Returns the final state and, for each call that raised (and was skipped, as in the reference), why.
    """
    db = Database.fresh()
    errors = []
    for index, call in enumerate(calls):
        try:
            entry = REGISTRY[call["name"]]
            getattr(entry.toolkit(db), entry.method)(**json.loads(call["arguments"]))
        except KeyError as e:
            errors.append(f"call {index}: unknown tool or missing key {e}")
        except Exception as e:
            errors.append(f"call {index} ({call.get('name')}): {type(e).__name__}: {e}")
    return db, errors


def _as_calls(value, what: str) -> list:
    if isinstance(value, str):  # the reference accepts a JSON-encoded list too
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} is a string but not JSON: {e}") from None
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list of {{'name', 'arguments'}} calls, got {type(value).__name__}")
    return value


def verify(predicted, ground_truth) -> Verdict:
    """Binary state-match reward plus diagnostics.

    Diagnostics: ``tables_differ`` (compared tables whose final states differ), ``predicted_changed_state``
    and ``ground_truth_changes_state`` (against the initial snapshot), ``num_predicted_calls``,
    ``num_predicted_errors`` (predicted calls the replay skipped because they raised), and where ground-truth
    calls raised, ``ground_truth_errors`` (why each; the reward is still the reference's, but such a row is broken:
    `python -m env_sim verify` reports it instead of scoring it).
    """
    predicted = _as_calls(predicted, "predicted")
    ground_truth = _as_calls(ground_truth, "ground_truth")
    pred_db, pred_errors = replay(predicted)
    gt_db, gt_errors = replay(ground_truth)
    initial = Database.fresh()
    diagnostics: dict[str, Any] = {"num_predicted_calls": len(predicted), "num_predicted_errors": len(pred_errors)}
    if gt_errors:
        diagnostics["ground_truth_errors"] = gt_errors
    try:
        differ = pred_db.differing_tables(gt_db)
        diagnostics["predicted_changed_state"] = bool(pred_db.differing_tables(initial))
        diagnostics["ground_truth_changes_state"] = bool(gt_db.differing_tables(initial))
    except AttributeError as e:
        # pandas refuses .str on a column without strings; the reference's /verify then fails.
        diagnostics.update(tables_differ=list(COMPARED_TABLES), comparison_error=str(e))
        return Verdict(0.0, diagnostics)
    diagnostics["tables_differ"] = differ
    return Verdict(0.0 if differ else 1.0, diagnostics)
