"""Load OmegaConf recipes from `configs/` and apply dotlist overrides.

Only omegaconf is imported: this runs on login nodes at submit time.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _resolve_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config '{name_or_path}' not found (neither a YAML file nor one of {known})")


def _load_with_defaults(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Load a YAML file; `defaults: [base, ...]` are merged first, this file on top."""
    if path in seen:
        raise ValueError(f"config defaults cycle: {' -> '.join(str(p) for p in seen + (path,))}")
    cfg = OmegaConf.load(path)
    defaults = cfg.pop("defaults", []) or []
    if isinstance(defaults, str):
        defaults = [defaults]
    merged = OmegaConf.create()
    for parent in defaults:
        parent_path = (path.parent / parent) if str(parent).endswith(".yaml") else _resolve_path(parent)
        merged = OmegaConf.merge(merged, _load_with_defaults(parent_path, seen + (path,)))
    return OmegaConf.merge(merged, cfg)


def load_config(name_or_path: str | Path = "tiny_cpu", overrides: Iterable[str] = ()) -> DictConfig:
    """Return the recipe with `overrides` (e.g. ``grpo.num_prompts_per_step=32``) applied.

    An override of a key the recipe does not have is an error (a typo would otherwise be silently ignored);
    prefix it with ``+`` to add a new key on purpose.
    """
    cfg = _load_with_defaults(_resolve_path(name_or_path))
    OmegaConf.set_struct(cfg, True)
    strict, additions = [], []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not of the form key=value")
        (additions if item.startswith("+") else strict).append(item.lstrip("+"))
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(strict))
    except Exception as err:  # omegaconf raises ConfigKeyError etc.; name the override
        raise ValueError(f"bad override in {strict}: {err}") from err
    if additions:
        OmegaConf.set_struct(cfg, False)
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(additions))
        OmegaConf.set_struct(cfg, True)
    return cfg


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
