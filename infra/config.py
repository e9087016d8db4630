"""Load OmegaConf recipes from `configs/`, apply dotlist overrides, check both against the schema.

Only omegaconf is imported: this runs on login nodes at submit time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, Node, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from infra.schema import Config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema (infra/schema.py): names the key and where it came from."""


def _resolve_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config '{name_or_path}' not found (neither a YAML file nor one of {known})")


def _as_mapping(cfg: object, source: str) -> DictConfig:
    """`cfg` (what OmegaConf.load/merge returned) as a DictConfig; a recipe is a mapping, never a list."""
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{source}: a config must be a mapping of keys, got {type(cfg).__name__}")
    return cfg


def _recipe_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """(file, contents) in merge order: `defaults: [base, ...]` first (recursively), this file last."""
    if path in seen:
        raise ValueError(f"config defaults cycle: {' -> '.join(str(p) for p in seen + (path,))}")
    cfg = _as_mapping(OmegaConf.load(path), str(path))
    defaults = cfg.pop("defaults", []) or []
    if isinstance(defaults, str):
        defaults = [defaults]
    layers: list[tuple[str, DictConfig]] = []
    for parent in defaults:
        parent_path = (path.parent / parent) if str(parent).endswith(".yaml") else _resolve_path(parent)
        layers += _recipe_layers(parent_path, seen + (path,))
    return layers + [(str(path), cfg)]


def _merge(cfg: DictConfig, layers: list[tuple[str, DictConfig]]) -> DictConfig:
    """`layers` (source, contents) merged onto the typed `cfg` in order; an unknown key or a wrong type is a
    ConfigError naming the key and its source. One merge for all (merges copy the tree), one per layer on error."""
    try:
        return _as_mapping(OmegaConf.merge(cfg, *(layer for _, layer in layers)), "the merged config")
    except OmegaConfBaseException:
        pass
    for source, layer in layers:
        try:
            cfg = _as_mapping(OmegaConf.merge(cfg, layer), source)
        except ConfigKeyError as err:
            raise ConfigError(
                f"{source}: {err.full_key} is not in the config schema (infra/schema.py; base.yaml lists every key)"
            ) from None
        except OmegaConfBaseException as err:  # ValidationError (a wrong type) and the like
            reason = str(getattr(err, "msg", None) or err).splitlines()[0]
            raise ConfigError(f"{source}: {getattr(err, 'full_key', '')}: {reason}") from None
    return cfg


def _node(cfg: DictConfig, dotted: str) -> Node | None:
    """The node at `dotted` in `cfg`, or None where there is none (no interpolation is resolved)."""
    node: Node | None = cfg
    for part in dotted.split(".") if dotted else ():
        if not isinstance(node, DictConfig) or part not in node.keys():
            return None
        node = node._get_node(part)
    return node


def load_config(name_or_path: str | Path = "tiny_cpu", overrides: Iterable[str] = ()) -> DictConfig:
    """Return the recipe with `overrides` (e.g. ``grpo.num_prompts_per_step=32``) applied, typed by the schema.

    Every layer (base.yaml, the recipes, each override) is merged onto `OmegaConf.structured(Config)`: a key not
    in the schema or a value of the wrong type raises ConfigError (a ValueError) naming the key and the file or
    override. An override of a key the config does not have is an error; prefix it with ``+`` to add a key under
    a free-form map (``+slurm.additional_parameters.exclusive=true``), which is the only place new keys may go.
    """
    cfg = _merge(OmegaConf.structured(Config), _recipe_layers(_resolve_path(name_or_path)))
    layers = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0].lstrip("+")
        if not item.startswith("+") and _node(cfg, key) is None:
            # a schema key set for the first time (under a null section) is fine; a new one in a free-form map
            # may be a typo: it needs the +
            trial = _merge(cfg, [(f"override '{item}'", OmegaConf.from_dotlist([item]))])
            if OmegaConf.get_type(_node(trial, key.rpartition(".")[0])) is dict:
                raise ConfigError(f"override '{item}': {key} is a new key (a typo?); prefix it with + to add it")
        layers.append((f"override '{item}'", OmegaConf.from_dotlist([item.lstrip("+")])))
    cfg = _merge(cfg, layers)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{name_or_path}: no value for {', '.join(missing)} (set it; base.yaml gives every key its default)"
        )
    return cfg


def with_values(cfg: DictConfig, values: dict) -> DictConfig:
    """A copy of `cfg` with the nested `values` set (checked against the schema when `cfg` is typed), e.g. the
    optimizer settings the sft stage trains with."""
    return _as_mapping(OmegaConf.merge(cfg, OmegaConf.create(values)), "the run config with new values")


def config_hash(cfg: DictConfig, keys: Iterable[str]) -> str:
    """Short stable hash of the config sections a stage depends on (resolved values)."""
    parts = {}
    for key in keys:
        node = OmegaConf.select(cfg, key)
        parts[key] = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_root(cfg: DictConfig) -> Path:
    return Path(cfg.run.root).resolve()
