"""Turn `policy.model_name` into a local Hugging Face model directory.

Three kinds of names: an existing local directory (used as is), `tiny-qwen3` or `tiny-nemotron-h` (the
project-built models, made once under the run's shared cache dir), or a hub id such as
`Qwen/Qwen3-4B-Instruct-2507` (downloaded with `huggingface_hub.snapshot_download` into `HF_HOME`, which must be
on the shared filesystem on a cluster).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

TINY_MODEL_NAME = "tiny-qwen3"
TINY_NEMOTRON_H_NAME = "tiny-nemotron-h"  # the hybrid Mamba-2 / attention model at toy size (same tokenizer)


def resolve_model(
    model_name: str | os.PathLike,
    cache_dir: str | os.PathLike,
    corpus_fn: Callable[[], Iterable[str]] | None = None,
    tiny_cfg: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Local HF model directory for `model_name`.

    Parameters
    ----------
    cache_dir: where `tiny-qwen3` is built (a folder on the shared filesystem, e.g. `<run.root>/models`).
    corpus_fn: texts the tiny tokenizer is trained on; default `trainer.models.corpus.default_tiny_corpus`.
    tiny_cfg, seed: sizes (`policy.tiny`) and init seed of the tiny model.
    """
    name = str(model_name)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise FileNotFoundError(f"model dir {local} has no config.json (not a Hugging Face model directory)")
        return local.resolve()
    if name in (TINY_MODEL_NAME, TINY_NEMOTRON_H_NAME):
        from trainer.models.tiny import build_tiny_model, build_tiny_nemotron_h

        if corpus_fn is None:
            from trainer.models.corpus import default_tiny_corpus

            corpus_fn = default_tiny_corpus
        build = build_tiny_model if name == TINY_MODEL_NAME else build_tiny_nemotron_h
        return build(Path(cache_dir), tiny_cfg, corpus_fn(), seed)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise FileNotFoundError(
            f"model '{name}' is neither an existing directory, '{TINY_MODEL_NAME}', nor a hub id of the form owner/name"
        )
    return _download(name)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    try:
        path = snapshot_download(
            repo_id,
            local_files_only=offline,
            etag_timeout=10,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.py"],
        )
    except Exception as err:  # network errors, missing repo, offline without a cached copy
        home = os.environ.get("HF_HOME", "~/.cache/huggingface (HF_HOME unset)")
        raise RuntimeError(
            f"could not get model '{repo_id}' from the Hugging Face hub ({type(err).__name__}: {err}). "
            f"HF_HOME={home}, HF_HUB_OFFLINE={'1' if offline else '0'}. On a cluster without internet on compute "
            "nodes, download it once on a login node into a shared HF_HOME and set HF_HUB_OFFLINE=1, or set "
            "policy.model_name to a local model directory (or 'tiny-qwen3' for the project-built model)."
        ) from err
    return Path(path)
