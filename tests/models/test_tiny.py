"""The project-built tiny Qwen3 model: deterministic, cached, loadable, with a tokenizer and template that fit."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import random

import pytest
import torch

from trainer.models.hub import resolve_model
from trainer.models.tiny import MARKUP_TOKENS, SPECIAL_TOKENS, build_tiny_model, tiny_settings

SMALL = {
    "hidden_size": 128,
    "num_layers": 2,
    "num_attention_heads": 2,
    "num_kv_heads": 1,
    "head_dim": 64,
    "intermediate_size": 256,
    "vocab_size": 1024,
    "max_position_embeddings": 1024,
}


def _corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = (
        "email calendar analytics project customer send reply search create delete update meeting "
        "event visitor plot total_visits recipient subject"
    ).split()
    texts = []
    for _ in range(n):
        args = {"recipient": f"{rng.choice(words)}@atlas.com", "subject": " ".join(rng.sample(words, 4))}
        texts.append(json.dumps({"name": "email_send_email", "arguments": args}))
        texts.append(" ".join(rng.choice(words) for _ in range(25)))
    return texts


def _digest(path) -> str:
    h = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        h.update((path / name).read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), SMALL, _corpus(), seed=3)


def test_build_is_deterministic_and_cached(tmp_path, tiny_dir):
    again = build_tiny_model(tmp_path / "a", SMALL, _corpus(), seed=3)
    assert _digest(again) == _digest(tiny_dir)
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "a", SMALL, _corpus(), seed=3) == again  # reused, not rebuilt
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    other = build_tiny_model(tmp_path / "a", SMALL, _corpus(), seed=4)
    assert other != again and _digest(other) != _digest(again)


def _build_in_child(args):
    out_dir, seed = args
    return str(build_tiny_model(out_dir, SMALL, _corpus(), seed=seed))


@pytest.mark.slow
def test_parallel_builders_share_one_build(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        paths = pool.map(_build_in_child, [(str(tmp_path), 8), (str(tmp_path), 8)])
    assert paths[0] == paths[1]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert leftovers == []


def test_model_loads_with_configured_sizes(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    cfg = model.config
    assert cfg.model_type == "qwen3" and cfg.tie_word_embeddings
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim, cfg.num_key_value_heads) == (128, 2, 64, 1)
    assert len(tok) == cfg.vocab_size == 1024  # every id the model can sample decodes
    ids = torch.tensor([tok.encode("send an email")])
    assert model(ids).logits.shape == (1, ids.shape[1], 1024)


def test_tokenizer_round_trips_any_text_and_keeps_markup(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    text = 'Ünïcødé 漢字 🙂 {"a": [1, 2]}\n\ttabs'
    assert tok.decode(tok.encode(text)) == text
    for marker in SPECIAL_TOKENS + MARKUP_TOKENS:
        assert len(tok.encode(marker)) == 1, marker
    generated = tok.encode('<tool_call>\n{"name": "x"}\n</tool_call><|im_end|>')
    # special tokens vanish from decoded model text, tool-call markup stays for the parser
    assert tok.decode(generated, skip_special_tokens=True) == '<tool_call>\n{"name": "x"}\n</tool_call>'
    assert tok.eos_token == "<|im_end|>"
    gen_cfg = json.loads((tiny_dir / "generation_config.json").read_text())
    assert gen_cfg["eos_token_id"][0] == tok.convert_tokens_to_ids("<|im_end|>")


def test_every_digit_is_a_token_of_its_own(tiny_dir):
    """IDs and dates are copied from the request digit by digit (merged numbers were not learnable in budget)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    pieces = [tok.decode([i]) for i in tok.encode("task 00000242 due 2023-11-30", add_special_tokens=False)]
    assert [p for p in pieces if any(ch.isdigit() for ch in p)] == list("00000242") + list("20231130")


def test_chat_template_renders_tools_calls_and_responses(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tools = [{"type": "function", "function": {"name": "email_send_email", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Mail Bob"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "email_send_email", "arguments": {"recipient": "b@x.com"}}},
                {"type": "function", "function": {"name": "email_send_email", "arguments": '{"recipient": "c@x.com"}'}},
            ],
        },
        {"role": "tool", "content": '{"output": "sent"}'},
        {"role": "tool", "content": '{"output": "sent too"}'},
    ]
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert '<tools>\n{"type": "function", "function": {"name": "email_send_email"' in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "email_send_email", "arguments": {"recipient": '
        '"b@x.com"}}\n</tool_call>\n<tool_call>\n{"name": "email_send_email", "arguments": {"recipient": '
        '"c@x.com"}}\n</tool_call><|im_end|>\n'
    ) in text
    assert text.endswith(
        '<|im_start|>user\n<tool_response>\n{"output": "sent"}\n</tool_response>\n'
        '<tool_response>\n{"output": "sent too"}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )
    plain = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=False)
    assert plain == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nMail Bob<|im_end|>\n"


def test_chat_template_agrees_with_hermes_format(tiny_dir):
    """The episode renders prompts with env_sim's Hermes format; the tokenizer's template must say the same."""
    from transformers import AutoTokenizer

    from env_sim.formats import get_format

    fmt = get_format("hermes")
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tools = [
        {
            "type": "function",
            "name": "calendar_create_event",
            "description": "Create an event.",
            "parameters": {"type": "object", "properties": {"event_name": {"type": "string"}}},
        }
    ]
    messages = [
        {"role": "system", "content": fmt.system_prompt("Today is Thursday.", tools)},
        {"role": "user", "content": "Book it"},
        {
            "role": "assistant",
            "content": fmt.format_assistant(
                "", [{"name": "calendar_create_event", "arguments": '{"event_name": "Sync"}'}]
            ),
        },
        fmt.tool_message('{"output": "Event created"}', call_id="c1", name="calendar_create_event"),
    ]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == fmt.render_prompt(
        messages, add_generation_prompt=True
    )
    # and rendering the tools through the template (tools=...) gives the format's system prompt
    with_tools = tok.apply_chat_template(
        [{"role": "system", "content": "Today is Thursday."}],
        tools=[{"type": "function", "function": {k: v for k, v in tools[0].items() if k != "type"}}],
        tokenize=False,
    )
    assert with_tools == f"<|im_start|>system\n{messages[0]['content']}<|im_end|>\n"


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="policy.tiny.hidden"):
        tiny_settings({"hidden": 3})
    with pytest.raises(ValueError, match="head_dim"):
        tiny_settings({"head_dim": 16})
    with pytest.raises(ValueError, match="empty"):
        build_tiny_model(tmp_path, SMALL, [], seed=0)


def test_resolve_model(tmp_path, tiny_dir):
    assert resolve_model(str(tiny_dir), tmp_path) == tiny_dir.resolve()
    built = resolve_model("tiny-qwen3", tmp_path, corpus_fn=_corpus, tiny_cfg=SMALL, seed=3)
    assert _digest(built) == _digest(tiny_dir)
    with pytest.raises(FileNotFoundError, match="neither an existing directory"):
        resolve_model("./no/such/dir", tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path), tmp_path)


def test_hub_name_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(RuntimeError, match="HF_HOME=.*HF_HUB_OFFLINE=1"):
        resolve_model("Qwen/Qwen3-4B-Instruct-2507", tmp_path)
