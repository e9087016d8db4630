"""The config schema (infra/schema.py): recipes load strictly, and every key the code reads is in it.

`test_every_key_the_code_reads_is_in_the_schema` reads the code's config accesses statically (AST). What it sees:
- chains of attributes, constant subscripts and `.get("key", ...)` calls rooted at a config: a parameter named
  `cfg` (unless annotated with a non-config type), a name assigned from such a chain or from a call of a function
  whose name ends in `config`/`cfg` (`load_config`, `resolve_config`, `sft_config`, `trainer_cfg`), `self.<attr>`
  assigned from one anywhere in the class, and `<anything>.cfg` (`ctx.cfg`);
- sub-configs passed under a well-known parameter name (SUB_CONFIG_PARAMS: `policy_cfg` is `policy`, `opt_cfg` is
  `policy.megatron_cfg.optimizer`, ...), the same way;
- `OmegaConf.select(cfg, "a.b")`, `OmegaConf.to_container(chain)`, `dict(chain)` and `chain or {}`.
Its limits: it is flow-insensitive per function (a name is a config if every assignment to it in the function is
one), it does not follow a config through a function's return value, a container, or a parameter of another name,
and a key chosen at run time (`s[key]`, `LossConfig.from_cfg`'s loop over its fields) is not checked; nor is
`trainer.models.megatron_bridge`'s `parallel` mapping (callers without a config pass their own). A chain that
reaches a typed leaf may go on only with an attribute of that type (`cfg.run.root.endswith`); anything goes below
a free-form map (`Dict[str, Any]`).
"""

from __future__ import annotations

import ast
import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from infra import schema
from infra.config import CONFIG_DIR, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("infra", "pipeline", "trainer", "jobs", "bench")

# parameter names that hold a sub-config wherever they appear (callers pass that section)
SUB_CONFIG_PARAMS: dict[str, tuple[str, ...]] = {
    "cfg": (),
    "policy_cfg": ("policy",),
    "loss_cfg": ("loss_fn",),
    "env_cfg": ("env",),
    "check_cfg": ("sft", "copy_check"),
    "mcfg": ("policy", "megatron_cfg"),
    "opt_cfg": ("policy", "megatron_cfg", "optimizer"),
    "sched_cfg": ("policy", "megatron_cfg", "scheduler"),
    "gen_cfg": ("policy", "generation"),
    "vllm_cfg": ("policy", "generation", "vllm_cfg"),
    "wandb_cfg": ("logger", "wandb"),
    "tiny_cfg": ("policy", "tiny"),
    "cfg_tiny": ("policy", "tiny"),
}
CONFIG_ANNOTATIONS = ("DictConfig", "Mapping", "dict", "Any")
DICT_METHODS = {"get", "items", "keys", "values", "pop", "copy", "update", "setdefault"}
CONFIG_FACTORY = re.compile(r"(^|_)(config|cfg)$")

Path_ = tuple[str, ...]


# ---- recipes and overrides -------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_recipe_loads_strictly_and_resolves(recipe):
    cfg = load_config(recipe)
    assert not OmegaConf.missing_keys(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves, to a value of its key's type


def test_base_yaml_sets_every_schema_key_and_nothing_else():
    base = OmegaConf.load(CONFIG_DIR / "base.yaml")
    merged = OmegaConf.merge(OmegaConf.structured(schema.Config), base)  # raises on a key outside the schema
    assert not OmegaConf.missing_keys(merged)


def test_a_typo_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"grpo\.num_prompts_per_stepp is not in the config schema"):
        load_config("tiny_cpu", ["grpo.num_prompts_per_stepp=3"])
    with pytest.raises(ConfigError, match=r"grpo\.num_prompts_per_stepp is not in the config schema"):
        load_config("tiny_cpu", ["+grpo.num_prompts_per_stepp=3"])  # + does not add to a typed section


def test_a_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"override 'grpo\.max_num_steps=abc': grpo\.max_num_steps: .*abc"):
        load_config("tiny_cpu", ["grpo.max_num_steps=abc"])
    with pytest.raises(ConfigError, match=r"env\.compact_tools"):
        load_config("tiny_cpu", ["env.compact_tools=[1,2]"])


def test_a_bad_recipe_file_fails_naming_the_file_and_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("defaults: [base]\ngrpo:\n  val_periodd: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: grpo\.val_periodd is not in the config schema"):
        load_config(recipe)
    recipe.write_text("defaults: [tiny_cpu]\npolicy:\n  megatron_cfg:\n    optimizer:\n      lr: fast\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: policy\.megatron_cfg\.optimizer\.lr"):
        load_config(recipe)


def test_free_form_maps_take_new_keys_with_plus_only():
    cfg = load_config("tiny_cpu", ["+prepare.agent_ref.x=1", "+slurm.additional_parameters.exclusive=true"])
    assert cfg.prepare.agent_ref.x == 1 and cfg.slurm.additional_parameters.exclusive is True
    with pytest.raises(ConfigError, match=r"slurm\.additional_parameters\.reservation is a new key"):
        load_config("tiny_cpu", ["slurm.additional_parameters.reservation=r1"])


def test_policy_tiny_types_both_tiny_models_keys_and_each_builder_refuses_the_others():
    from trainer.models.tiny import tiny_nemotron_h_settings, tiny_settings

    qwen = load_config("tiny_cpu", ["policy.tiny.num_layers=2"])
    assert tiny_settings(qwen.policy.tiny)["num_layers"] == 2
    hybrid = load_config("tiny_nemotron_h")  # on top of tiny_cpu: unsets tiny-qwen3's num_layers with null
    assert tiny_nemotron_h_settings(hybrid.policy.tiny)["pattern"] == "M*-M-"
    with pytest.raises(ConfigError, match=r"policy\.tiny\.patern is not in the config schema"):
        load_config("tiny_nemotron_h", ["policy.tiny.patern=M-"])
    with pytest.raises(ConfigError, match=r"policy\.tiny\.n_groups"):
        load_config("tiny_nemotron_h", ["policy.tiny.n_groups=two"])
    with pytest.raises(ValueError, match=r"policy\.tiny\.pattern: unknown key for tiny-qwen3"):
        tiny_settings(hybrid.policy.tiny)
    with pytest.raises(ValueError, match=r"policy\.tiny\.num_layers: unknown key for tiny-nemotron-h"):
        tiny_nemotron_h_settings(qwen.policy.tiny)


def test_a_section_null_in_base_takes_its_schema_keys():
    cfg = load_config("base", ["sft.copy_check.min_exact_prob=0.5"])
    assert dict(cfg.sft.copy_check) == {"rows": 128, "min_exact_prob": 0.5, "max_extra_epochs": 0}
    with pytest.raises(ConfigError, match=r"sft\.copy_check\.min_exact_prob"):
        load_config("base", ["sft.copy_check.rows=3"])  # min_exact_prob has no default


def test_code_merges_onto_the_typed_config():
    cfg = load_config("tiny_cpu")
    merged = OmegaConf.merge(cfg, OmegaConf.create({"grpo": {"val_period": 0}, "checkpointing": {"resume_from": None}}))
    assert merged.grpo.val_period == 0 and merged.checkpointing.resume_from is None
    with pytest.raises(Exception, match="val_periodd"):
        OmegaConf.merge(cfg, OmegaConf.create({"grpo": {"val_periodd": 0}}))


# ---- the code's reads ------------------------------------------------------------------------------------------


def schema_problem(path: Path_) -> str | None:
    """Why `path` is not a key of the schema, or None where it is."""
    hint: typing.Any = schema.Config
    for index, part in enumerate(path):
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):  # Optional[X] or X | None: the non-None member types
            members = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = members[0] if len(members) == 1 else typing.Any
            origin = typing.get_origin(hint)
        if hint is typing.Any or origin in (dict, list):  # free-form below here
            return None
        if dataclasses.is_dataclass(hint):
            hints = typing.get_type_hints(hint)
            if part not in hints:
                return f"{'.'.join(path[: index + 1])} is not in the schema"
            hint = hints[part]
            continue
        # a typed leaf: what follows is an attribute of the value (`cfg.run.root.endswith`)
        return None if hasattr(hint, part) else f"{'.'.join(path[:index])} is a {hint.__name__}, not a section"
    return None


class ConfigReads(ast.NodeVisitor):
    """Collects (line, path) of every config access in one module (see the module docstring)."""

    def __init__(self) -> None:
        self.reads: list[tuple[int, Path_]] = []
        self.self_attrs: dict[str, Path_] = {}

    # ---- chains --------------------------------------------------------------------------------------------
    def chain(self, node: ast.AST, env: dict[str, Path_]) -> Path_ | None:
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in self.self_attrs:
                return self.self_attrs[node.attr]
            base = self.chain(node.value, env)
            if base is None:
                return () if node.attr == "cfg" else None
            return None if node.attr in DICT_METHODS else base + (node.attr,)
        if isinstance(node, ast.Subscript):
            base = self.chain(node.value, env)
            key = node.slice
            if base is not None and isinstance(key, ast.Constant) and isinstance(key.value, str):
                return base + (key.value,)
            return None
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            return self.chain(node.values[0], env)
        if isinstance(node, ast.Call):
            return self.call_chain(node, env)
        return None

    def call_chain(self, node: ast.Call, env: dict[str, Path_]) -> Path_ | None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        first = node.args[0] if node.args else None
        if (
            name == "get"
            and isinstance(func, ast.Attribute)
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
        ):
            base = self.chain(func.value, env)
            return None if base is None else base + (first.value,)
        if name == "select" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            base = self.chain(first, env)
            return None if base is None else base + tuple(str(node.args[1].value).split("."))
        if name in ("to_container", "create", "merge", "dict", "deepcopy") and first is not None:
            return self.chain(first, env)
        if CONFIG_FACTORY.search(name) and not name.startswith("from_"):
            return ()
        return None

    # ---- scopes --------------------------------------------------------------------------------------------
    def module(self, tree: ast.Module) -> None:
        self.scope(tree.body, {}, [])

    def scope(self, body: list[ast.stmt], outer: dict[str, Path_], params: list[ast.arg]) -> None:
        env = dict(outer)
        for arg in params:
            annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
            if arg.arg in SUB_CONFIG_PARAMS and (not annotation or any(a in annotation for a in CONFIG_ANNOTATIONS)):
                env[arg.arg] = SUB_CONFIG_PARAMS[arg.arg]
        others = set()
        for name, value in self.assignments(body):  # flow-insensitive: a name is a config if every assignment
            path = self.chain(value, env)  #   to it is one (of the same section)
            if path is None or env.get(name, path) != path:
                others.add(name)
            else:
                env[name] = path
        for name in others:
            env.pop(name, None)
        for stmt in body:
            self.statement(stmt, env)

    def assignments(self, body: list[ast.stmt]):
        for stmt in body:
            for node in ast.walk(stmt):
                if (
                    isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
                    and node is not stmt
                ):
                    continue
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        yield from self.pairs(target, node.value)
                elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
                    yield from self.pairs(node.target, node.value)

    @staticmethod
    def pairs(target: ast.expr, value: ast.expr):
        if isinstance(target, ast.Name):
            yield target.id, value
        elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
            for t, v in zip(target.elts, value.elts):
                yield from ConfigReads.pairs(t, v)

    def statement(self, stmt: ast.stmt, env: dict[str, Path_]) -> None:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = stmt.args
            self.scope(stmt.body, env, args.posonlyargs + args.args + args.kwonlyargs)
            return
        if isinstance(stmt, ast.ClassDef):
            self.klass(stmt, env)
            return
        for node in ast.walk(stmt):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.statement(node, env)
            elif isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
                path = self.chain(node, env)
                if path:
                    self.reads.append((node.lineno, path))

    def klass(self, node: ast.ClassDef, env: dict[str, Path_]) -> None:
        saved, self.self_attrs = self.self_attrs, {}
        methods = [m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for method in methods:  # self.<attr> = <config> anywhere in the class
            method_env = dict(env)
            args = method.args
            for arg in args.posonlyargs + args.args + args.kwonlyargs:
                if arg.arg in SUB_CONFIG_PARAMS:
                    method_env[arg.arg] = SUB_CONFIG_PARAMS[arg.arg]
            for stmt in ast.walk(method):
                if isinstance(stmt, ast.Assign):
                    for target in stmt.targets:
                        targets = target.elts if isinstance(target, ast.Tuple) else [target]
                        values = (
                            stmt.value.elts
                            if isinstance(stmt.value, ast.Tuple) and isinstance(target, ast.Tuple)
                            else [stmt.value] * len(targets)
                        )
                        for t, v in zip(targets, values):
                            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                                path = self.chain(v, method_env)
                                if path is not None:
                                    self.self_attrs[t.attr] = path
        for stmt in node.body:
            self.statement(stmt, env)
        self.self_attrs = saved


def code_reads() -> list[tuple[str, int, Path_]]:
    reads = []
    for folder in SCANNED:
        for file in sorted((ROOT / folder).rglob("*.py")):
            visitor = ConfigReads()
            visitor.module(ast.parse(file.read_text(), str(file)))
            reads += [(str(file.relative_to(ROOT)), line, path) for line, path in visitor.reads]
    return reads


def test_every_key_the_code_reads_is_in_the_schema():
    reads = code_reads()
    seen = {path for _, _, path in reads}
    # the checker itself sees the sections it must (a guard against it silently finding nothing)
    for expected in [
        ("grpo", "skip_zero_advantage_rollouts"),
        ("policy", "generation", "vllm_cfg", "max_num_seqs"),
        ("policy", "megatron_cfg", "scheduler", "lr_decay_iters"),
        ("sft", "copy_check", "rows"),
        ("logger", "wandb_enabled"),
        ("slurm", "signal_delay_s"),
        ("run", "root"),
    ]:
        assert expected in seen, f"the checker no longer sees {'.'.join(expected)}"
    problems = sorted(
        {f"{file}:{line}: {problem}" for file, line, path in reads if (problem := schema_problem(path)) is not None}
    )
    assert not problems, "config keys read in code but not in infra/schema.py (and base.yaml):\n" + "\n".join(problems)


def test_the_checker_follows_aliases_and_skips_what_is_not_a_config():
    source = (
        "def f(cfg, ctx):\n"
        "    g = cfg.grpo\n"
        "    return (g.num_prompts_per_stepp, cfg.policy.generation.vllm_cfg.get('max_num_seqz', 3),\n"
        "            OmegaConf.select(cfg, 'run.roott'), ctx.cfg.env.tool_scope, cfg.run.root.endswith('/'))\n"
        "class T:\n"
        "    def __init__(self, cfg, policy_cfg):\n"
        "        self.cfg, self.p = cfg, dict(policy_cfg)\n"
        "    def m(self):\n"
        "        return (self.cfg.sft.copy_check.rowz, self.p['megatron_cfg']['optimizer']['lr'],\n"
        "                self.cfg.slurm.additional_parameters['x'])\n"
        "def loss(cfg: LossConfig):\n"
        "    return cfg.uses_reference\n"
        "def rebound():\n"
        "    cfg = load_config('tiny_cpu')\n"
        "    cfg = json.loads('{}')\n"
        "    return cfg.anything\n"
    )
    visitor = ConfigReads()
    visitor.module(ast.parse(source))
    problems = sorted({problem for _, path in visitor.reads if (problem := schema_problem(path))})
    assert problems == [
        "grpo.num_prompts_per_stepp is not in the schema",
        "policy.generation.vllm_cfg.max_num_seqz is not in the schema",
        "run.roott is not in the schema",
        "sft.copy_check.rowz is not in the schema",
    ]


def test_stage_hash_keys_are_in_the_schema():
    from infra.manifest import STAGE_READS

    keys = {key for reads in STAGE_READS.values() for key in reads.keys + reads.ignores}
    assert not [key for key in keys if schema_problem(tuple(key.split(".")))]
    for stage, reads in STAGE_READS.items():  # an ignored key lies under one the stage reads; upstream are stages
        assert all(any(key.startswith(k + ".") for k in reads.keys) for key in reads.ignores), stage
        assert set(reads.upstream) <= set(STAGE_READS) - {stage}, stage
