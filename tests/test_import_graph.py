"""The layering of the packages, checked on the source: data flows configs -> jobs -> stages -> trainer -> env_sim.

Every `import` counts, including the ones inside functions (a lazy import is still a dependency; it only moves
its cost to the call). Ranks: a module may import its own package and packages of lower rank, never higher.

    env_sim 0   the environment, stdlib only, standalone
    infra   1   login-safe config, files, manifests, signals
    trainer 2   policy, generation, models, rollouts, GRPO
    pipeline 3  the stages; a stage never imports another stage
    jobs    4   submitit definitions and the chain
    bench   5   benchmarks (may use anything above)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RANKS = {"env_sim": 0, "infra": 1, "trainer": 2, "pipeline": 3, "jobs": 4, "bench": 5}
STAGES = {"data", "prepare", "sanity", "sft", "train", "eval"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in RANKS for p in (REPO_ROOT / package).rglob("*.py")}


def imported_names(path: Path, module: str) -> set[str]:
    """Dotted names this file imports (absolute; relative imports resolved against `module`)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (names that are attributes, not modules, drop out)."""
    modules = project_modules()
    return {
        name: {n for n in imported_names(path, name) if n in modules and n != name} for name, path in modules.items()
    }


def test_the_graph_sees_the_known_edges():
    graph = import_graph()
    assert "trainer.grpo.loop" in graph["pipeline.train"]
    assert "env_sim" in {m.split(".")[0] for m in graph["trainer.rollout"]}
    assert "pipeline.data" in graph["jobs.stages"] or any(m.startswith("infra") for m in graph["jobs.stages"])


def test_no_module_imports_a_package_of_higher_rank():
    bad = [
        f"{src} imports {dst}"
        for src, dsts in import_graph().items()
        for dst in dsts
        if RANKS[dst.split(".")[0]] > RANKS[src.split(".")[0]]
    ]
    assert not bad, "imports against the data flow:\n" + "\n".join(sorted(bad))


def test_no_stage_imports_another_stage():
    stage_modules = {f"pipeline.{s}" for s in STAGES}
    bad = [
        f"{src} imports {dst}"
        for src, dsts in import_graph().items()
        if src in stage_modules
        for dst in dsts
        if dst in stage_modules
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph: any component of two or more is a cycle."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_a_cycle_is_found_when_there_is_one(tmp_path, monkeypatch):
    """The checker itself: two modules importing each other lazily form a component of two."""
    pkg = tmp_path / "infra"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from infra import b\n")
    (pkg / "b.py").write_text("from infra.a import f\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    graph = import_graph()
    assert "infra.b" in graph["infra.a"] and "infra.a" in graph["infra.b"]
    try:
        test_no_import_cycles()
    except AssertionError as err:
        assert "infra.a <-> infra.b" in str(err)
    else:
        raise AssertionError("the cycle was not reported")


# --- login node ----------------------------------------------------------------------------------------------

# omegaconf brings yaml (whose C extension registers cython_runtime) and attr; submitit brings cloudpickle
LOGIN_ALLOWED = {"submitit", "omegaconf", "yaml", "cython_runtime", "attr", "cloudpickle", "typing_extensions", *RANKS}


def test_submitting_imports_only_submitit_and_omegaconf():
    """What a login node loads to submit, check status, resume or sweep: no torch, ray, vllm, datasets, megatron."""
    code = (
        "import sys, jobs, jobs.__main__, jobs.chain, jobs.stages, jobs.status, jobs.sweep, jobs.ray_cluster, "
        "jobs.demo, infra.config, infra.manifest, infra.io, infra.signals; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    third_party = {m for m in out.stdout.split() if m not in sys.stdlib_module_names and not m.startswith("_")}
    assert third_party <= LOGIN_ALLOWED, f"a login node would import {sorted(third_party - LOGIN_ALLOWED)}"
    assert "jobs" in third_party and "omegaconf" in third_party
