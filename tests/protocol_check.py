"""A structural check of `trainer.interfaces` Protocols on classes and functions, without instances.

`isinstance` with a runtime-checkable Protocol needs an instance (a policy or an engine takes seconds to start)
and only checks that the methods exist; this compares signatures: every call the Protocol allows must be one the
implementation accepts. (A uniquely named module rather than conftest.py: several test folders are on sys.path.)
"""

from __future__ import annotations

import inspect
from typing import Any

_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def protocol_methods(protocol: type) -> list[str]:
    return [
        name
        for name, value in vars(protocol).items()
        if callable(value) and (not name.startswith("_") or name == "__call__")
    ]


def protocol_problems(impl: Any, protocol: type) -> list[str]:
    """What keeps `impl` (a class, or a function for a `__call__` Protocol) from satisfying `protocol`."""
    problems = []
    for name in protocol_methods(protocol):
        wanted = list(inspect.signature(getattr(protocol, name)).parameters.values())
        if name == "__call__" and inspect.isfunction(impl):
            target, wanted = impl, wanted[1:]  # a function has no `self`
        else:
            target = getattr(impl, name, None)
        if target is None:
            problems.append(f"{name}: missing")
            continue
        have = inspect.signature(target).parameters
        names = list(have)
        for position, want in enumerate(wanted):
            got = have.get(want.name)
            if got is None:
                problems.append(f"{name}: no parameter {want.name!r}")
            elif want.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and names.index(want.name) != position:
                problems.append(f"{name}: {want.name!r} at position {names.index(want.name)}, not {position}")
            elif want.default is not inspect.Parameter.empty and got.default is inspect.Parameter.empty:
                problems.append(f"{name}: {want.name!r} needs a default")
        extra = [p for p in have.values() if p.name not in {w.name for w in wanted}]
        problems += [
            f"{name}: extra parameter {p.name!r} without a default"
            for p in extra
            if p.kind not in _VARIADIC and p.default is inspect.Parameter.empty
        ]
    return problems
