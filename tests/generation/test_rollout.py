"""Multi-turn rollouts: token bookkeeping against the chat template, loss masks, truncation, reproducibility."""

from __future__ import annotations

import pytest
import torch
from tiny_fixtures import tiny_cfg

from env_sim.agent import expert_turns
from env_sim.workplace_assistant.tasks.generator import generate_rows
from trainer.interfaces import SamplingParams
from trainer.rollout import collect_rollouts, episode_options

SCRIPTED_LOGPROB = -0.25


class ScriptedGeneration:
    """A stand-in policy that answers each row with the expert's texts (or given texts), as token ids.

    It finds the row of each prompt by its query text, so it is independent of batch order.
    """

    def __init__(self, tokenizer, rows, turns_by_row, finish_with_stop=True):
        self.tokenizer, self.rows, self.turns = tokenizer, rows, {r["id"]: list(turns_by_row[r["id"]]) for r in rows}
        self.finish_with_stop = finish_with_stop
        self.calls = []
        self.samplings: list[SamplingParams] = []

    def generate(self, prompt_token_ids, sampling: SamplingParams):
        self.calls.append(len(prompt_token_ids))
        self.samplings.append(sampling)
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        outputs = []
        for ids, limit in zip(prompt_token_ids, sampling.max_tokens_for(len(prompt_token_ids))):
            text = self.tokenizer.decode(ids)
            row = next(r for r in self.rows if r["responses_create_params"]["input"][-1]["content"] in text)
            reply = self.turns[row["id"]].pop(0) if self.turns[row["id"]] else "Done."
            tokens = self.tokenizer.encode(reply, add_special_tokens=False)
            if len(tokens) + 1 > limit:
                tokens, reason = tokens[:limit], "length"
            else:
                tokens, reason = tokens + [end] if self.finish_with_stop else tokens, "stop"
            outputs.append({"token_ids": tokens, "logprobs": [SCRIPTED_LOGPROB] * len(tokens), "finish_reason": reason})
        return outputs

    def update_weights(self, blob):
        raise NotImplementedError("scripted texts have no weights")

    def sleep(self):
        return [False]

    def wake_up(self):
        return [False]

    def shutdown(self):
        pass


@pytest.fixture(scope="module")
def rows():
    return generate_rows(6, seed=5)


def _expert_script(rows, calls_per_turn=1):
    return {r["id"]: expert_turns(r, "hermes", calls_per_turn=calls_per_turn) for r in rows}


def test_expert_rollouts_match_the_template_and_score_one(tiny_tokenizer, rows):
    from env_sim.agent import Episode

    cfg = tiny_cfg()
    gen = ScriptedGeneration(tiny_tokenizer, rows, _expert_script(rows))
    rollouts = collect_rollouts(rows, gen, tiny_tokenizer, cfg, seed=0)
    assert [r.row_id for r in rollouts] == [r["id"] for r in rows]
    assert gen.calls[0] == len(rows)  # one batched call per turn over all live episodes
    assert gen.calls == sorted(gen.calls, reverse=True)
    for row, ro in zip(rows, rollouts):
        assert ro.reward == 1.0, (row["id"], ro.verdict)
        assert ro.num_turns == min(len(row["ground_truth"]) + 1, cfg.env.max_steps)
        assert not ro.truncated and ro.template_fallbacks == 0
        assert len(ro.token_ids) == len(ro.loss_mask) == len(ro.generation_logprobs) <= 1536
        # the incremental token sequence is exactly the template's rendering of the finished conversation
        episode = Episode(row, "hermes", **episode_options(cfg.env))
        for text in expert_turns(row, "hermes", calls_per_turn=1)[: ro.num_turns]:
            if not episode.done:
                episode.step(text)
        rendered = tiny_tokenizer.apply_chat_template(episode.messages, tokenize=False)
        # (the rollout ends with the model's last token: the template's newline after it is never generated)
        assert tiny_tokenizer.decode(ro.token_ids) == rendered.removesuffix("\n")
        # mask 1 exactly on the generated tokens, which carry the generation log-probs
        generated = [t for t, m in zip(ro.token_ids, ro.loss_mask) if m]
        expected = []
        for text in expert_turns(row, "hermes", calls_per_turn=1)[: ro.num_turns]:
            expected += tiny_tokenizer.encode(text, add_special_tokens=False) + [tiny_tokenizer.eos_token_id]
        assert generated == expected
        assert all(lp == (SCRIPTED_LOGPROB if m else 0.0) for lp, m in zip(ro.generation_logprobs, ro.loss_mask))
        assert ro.prompt_length == ro.loss_mask.index(1)


def test_a_groups_rows_are_tokenised_once_and_get_the_same_prompt(tiny_tokenizer, rows, monkeypatch):
    """GRPO repeats each row G times: its prompt is encoded once per distinct prompt, and every copy starts with
    exactly the tokens a lone row gets."""
    cfg = tiny_cfg()
    group = [row for row in rows[:2] for _ in range(4)]
    alone = collect_rollouts(
        rows[:2], ScriptedGeneration(tiny_tokenizer, rows, _expert_script(rows)), tiny_tokenizer, cfg, 0
    )
    encoded = []
    original = type(tiny_tokenizer).encode

    def counting(self, text, *args, **kwargs):
        encoded.append(text)
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tiny_tokenizer), "encode", counting)
    grouped = collect_rollouts(
        group, ScriptedGeneration(tiny_tokenizer, rows, _expert_script(rows)), tiny_tokenizer, cfg, 0
    )
    prompts = [r.token_ids[: r.prompt_length] for r in grouped]
    assert prompts == [alone[i // 4].token_ids[: alone[i // 4].prompt_length] for i in range(8)]
    first_turn_prompts = [t for t in encoded if t.startswith("<|im_start|>system")]
    assert len(first_turn_prompts) == len(set(first_turn_prompts)) == 2


def test_each_turn_samples_with_the_configs_params_and_per_episode_seeds_and_limits(tiny_tokenizer, rows):
    from tests.protocol_check import protocol_problems
    from trainer.generation import stop_token_ids
    from trainer.interfaces import Generation
    from trainer.rollout import request_seed

    assert protocol_problems(ScriptedGeneration, Generation) == []
    cfg = tiny_cfg(
        **{
            "policy.generation.temperature": 0.7,
            "policy.generation.top_p": 0.9,
            "policy.generation.top_k": 20,
            "policy.generation.max_new_tokens": 64,
        }
    )
    gen = ScriptedGeneration(tiny_tokenizer, rows[:3], _expert_script(rows[:3]))
    rollouts = collect_rollouts(rows[:3], gen, tiny_tokenizer, cfg, seed=4)
    first = gen.samplings[0]
    assert (first.temperature, first.top_p, first.top_k) == (0.7, 0.9, 20)
    assert first.stop_token_ids == tuple(stop_token_ids(tiny_tokenizer, tiny_tokenizer.name_or_path))
    assert first.seeds == tuple(request_seed(4, i, 0) for i in range(3))
    limit = int(cfg.policy.max_total_sequence_length)
    assert first.max_tokens == tuple(min(64, limit - r.prompt_length) for r in rollouts)
    # the next turn: the live episodes' own seeds for turn 1, whichever episodes are still running
    assert set(gen.samplings[1].seeds) <= {request_seed(4, i, 1) for i in range(3)}
    assert len(gen.samplings[1].seeds) == len(gen.samplings[1].max_tokens) == gen.calls[1]


def test_per_request_seeds_off_sends_unseeded_requests(tiny_tokenizer, rows):
    cfg = tiny_cfg(**{"policy.generation.per_request_seeds": False})
    gen = ScriptedGeneration(tiny_tokenizer, rows[:3], _expert_script(rows[:3]))
    collect_rollouts(rows[:3], gen, tiny_tokenizer, cfg, seed=4)
    assert [s.seeds for s in gen.samplings] == [(None,) * n for n in gen.calls]


def test_wrong_calls_score_zero(tiny_tokenizer, rows):
    wrong = {
        r["id"]: [
            '<tool_call>\n{"name": "email_delete_email", "arguments": {"email_id": "00000001"}}\n</tool_call>',
            "Done.",
        ]
        for r in rows[:2]
    }
    rollouts = collect_rollouts(
        rows[:2], ScriptedGeneration(tiny_tokenizer, rows[:2], wrong), tiny_tokenizer, tiny_cfg(), seed=0
    )
    assert [r.reward for r in rollouts] == [0.0, 0.0]
    assert all(r.function_calls[0]["name"] == "email_delete_email" for r in rollouts)


def test_sequence_limit_truncates_and_scores_what_ran(tiny_tokenizer, rows):
    row = max(rows, key=lambda r: len(r["ground_truth"]))
    script = _expert_script([row])
    cfg = tiny_cfg(**{"env.max_steps": 6})
    full = collect_rollouts([row], ScriptedGeneration(tiny_tokenizer, [row], script), tiny_tokenizer, cfg, 0)[0]
    first_turn_end = full.loss_mask.index(0, full.prompt_length)  # end of the first generation
    limit = first_turn_end + 8  # no room for the tool output + next turn
    cfg = tiny_cfg(**{"env.max_steps": 6, "policy.max_total_sequence_length": limit})
    cut = collect_rollouts(
        [row], ScriptedGeneration(tiny_tokenizer, [row], _expert_script([row])), tiny_tokenizer, cfg, 0
    )[0]
    assert cut.truncated and cut.stop_reason == "max_total_sequence_length"
    assert len(cut.token_ids) <= limit
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]
    assert cut.num_turns == 1 and len(cut.function_calls) == 1  # the first call ran; the verifier judged it
    assert cut.reward == (1.0 if len(row["ground_truth"]) == 1 else 0.0)


def test_generation_cut_by_max_new_tokens_ends_the_episode(tiny_tokenizer, rows):
    cfg = tiny_cfg(**{"policy.generation.max_new_tokens": 5})
    row = next(r for r in rows if r["ground_truth"])
    ro = collect_rollouts(
        [row], ScriptedGeneration(tiny_tokenizer, [row], _expert_script([row])), tiny_tokenizer, cfg, 0
    )[0]
    assert ro.truncated and ro.stop_reason == "max_new_tokens"
    assert ro.num_turns == 1 and sum(ro.loss_mask) == 5 and len(ro.token_ids) == ro.prompt_length + 5


def test_template_that_rewrites_old_turns_uses_the_stub_fallback(tiny_model_dir, rows):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # like reasoning templates: earlier assistant turns are rendered without their <think> block
    tok.chat_template = tok.chat_template.replace(
        "{{- '<|im_start|>assistant\\n' + (m['content'] or '') -}}",
        "{{- '<|im_start|>assistant\\n' + ((m['content'] or '') if loop.last else "
        "(m['content'] or '').split('</think>')[-1]) -}}",
    )
    row = next(r for r in rows if r["ground_truth"])
    script = {row["id"]: ["<think>plan</think>" + t for t in expert_turns(row, "hermes", calls_per_turn=1)]}
    ro = collect_rollouts([row], ScriptedGeneration(tok, [row], script), tok, tiny_cfg(), 0)[0]
    assert ro.template_fallbacks == ro.num_turns - 1 >= 1
    assert ro.reward == 1.0
    # a template whose rendering is never append-only (it starts with the message count) cannot be used at all
    tok.chat_template = "{{- messages | length -}}" + tok.chat_template
    with pytest.raises(RuntimeError, match="append-only"):
        collect_rollouts([row], ScriptedGeneration(tok, [row], _expert_script([row])), tok, tiny_cfg(), 0)


def test_torch_backend_rollouts_have_aligned_logprobs_and_are_seeded(tiny_model_dir, tiny_tokenizer, rows):
    """A real (random) model through the torch backend: generation log-probs equal teacher-forced log-probs."""
    from transformers import AutoModelForCausalLM

    from trainer.generation import make_generation

    cfg = tiny_cfg(**{"policy.generation.backend": "torch", "policy.generation.max_new_tokens": 8})
    gen = make_generation(cfg, str(tiny_model_dir))
    first = collect_rollouts(rows[:2], gen, tiny_tokenizer, cfg, seed=11)
    again = collect_rollouts(rows[:2], gen, tiny_tokenizer, cfg, seed=11)
    other = collect_rollouts(rows[:2], gen, tiny_tokenizer, cfg, seed=12)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    assert [r.token_ids for r in first] != [r.token_ids for r in other]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for ro in first:
        assert sum(ro.loss_mask) > 0
        ids = torch.tensor([ro.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        teacher = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        mask = torch.tensor(ro.loss_mask[1:], dtype=torch.bool)
        got = torch.tensor(ro.generation_logprobs[1:])[mask]
        assert (got - teacher[mask]).abs().max().item() < 1e-4


@pytest.mark.slow
def test_vllm_rollouts_are_seeded_and_carry_the_models_logprobs(vllm_group, tiny_model_dir, tiny_tokenizer, rows):
    """The same rollout path through the real vLLM engine (shared session engine)."""
    import time

    from transformers import AutoModelForCausalLM

    cfg = tiny_cfg(**{"policy.generation.max_new_tokens": 16})
    started = time.perf_counter()
    first = collect_rollouts(rows, vllm_group, tiny_tokenizer, cfg, seed=21)
    seconds = time.perf_counter() - started
    generated = sum(r.num_generated_tokens for r in first)
    print(f"\nvLLM rollouts: {len(rows)} episodes, {generated} generated tokens in {seconds:.2f} s")
    again = collect_rollouts(rows, vllm_group, tiny_tokenizer, cfg, seed=21)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for ro in first:
        assert 0 < ro.num_generated_tokens <= 16 * ro.num_turns
        assert all(lp == 0.0 for lp, m in zip(ro.generation_logprobs, ro.loss_mask) if not m)
        ids = torch.tensor([ro.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        teacher = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        mask = torch.tensor(ro.loss_mask[1:], dtype=torch.bool)
        assert (torch.tensor(ro.generation_logprobs[1:])[mask] - teacher[mask]).abs().max().item() < 1e-3
