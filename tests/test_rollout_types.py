"""Rollout records, prompt tokenization, completion endings and weight naming (no engine)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from grpo.rollout import Rollout, SamplingConfig
from grpo.rollout.tokens import encode_prompt, encode_prompts, find_ending
from grpo.rollout.weights import inference_weights, unwrap_model, weight_metadata
from grpo.tiny import build_char_tokenizer, build_tiny_llama


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# --- records -----------------------------------------------------------------------------------


def test_import_is_light():
    # grpo.rollout must not import vLLM (or torch) until a generator is asked for.
    code = "import sys, grpo.rollout; print('vllm' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_rollout_record():
    r = Rollout([1, 2], [3, 4], [-0.5, -0.1], "ab", "length", prompt_index=2, sample_index=1)
    assert r.truncated and not Rollout([1], [3], [-1.0], "", "stop", 0, 0).truncated
    with pytest.raises(ValueError, match="same length"):
        Rollout([1], [3, 4], [-1.0], "", "stop", 0, 0)


@pytest.mark.parametrize("kwargs", [
    {"temperature": -0.1}, {"temperature": float("nan")}, {"top_p": 0.0}, {"top_p": 1.5},
    {"top_k": -2}, {"min_p": 1.0}, {"max_tokens": 0}, {"stop": ("",)}, {"seed": -1},
])
def test_sampling_config_rejects(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)


def test_sampling_config_normalises_stop():
    assert SamplingConfig(stop="\n\n").stop == ("\n\n",)
    assert SamplingConfig(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingConfig(temperature=0).greedy and not SamplingConfig(top_k=-1).top_k_enabled


# --- prompts -----------------------------------------------------------------------------------


def test_chat_template_applied_once(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    got = encode_prompt(tok, msgs)
    # Rendered by hand from tiny.CHAT_TEMPLATE: role markers, contents, generation prompt.
    want = ([tok.convert_tokens_to_ids("<|system|>")] + ids(tok, "Be brief.")
            + [tok.convert_tokens_to_ids("<|user|>")] + ids(tok, "2+2?")
            + [tok.convert_tokens_to_ids("<|assistant|>")])
    assert got == want
    assert encode_prompt(tok, "2+2?") == ids(tok, "2+2?")  # plain text: no template


def test_encode_prompts_bad_input(tok):
    with pytest.raises(ValueError, match="at least one prompt"):
        encode_prompts(tok, [], 2, 100)
    with pytest.raises(ValueError, match="n "):
        encode_prompts(tok, ["a"], 0, 100)
    with pytest.raises(ValueError, match="context holds 10"):
        encode_prompts(tok, ["x" * 10], 1, 10)  # 10 tokens leave no room in a context of 10
    assert encode_prompts(tok, ["x" * 9], 1, 10) == [ids(tok, "x" * 9)]
    with pytest.raises(ValueError, match="no tokens"):
        encode_prompts(tok, [""], 1, 10)
    with pytest.raises(TypeError, match="wrap"):
        encode_prompts(tok, "hello", 1, 10)
    with pytest.raises(TypeError, match="wrap"):
        encode_prompts(tok, [{"role": "user", "content": "hi"}], 1, 10)


# --- endings -----------------------------------------------------------------------------------


def test_ending_at_eos_keeps_eos(tok):
    eos = tok.eos_token_id
    stream = ids(tok, "ab") + [eos] + ids(tok, "cd")  # HF keeps sampling/padding after eos
    e = find_ending(tok, stream, eos_ids=[eos], stop=(), limit=10)
    assert (e.length, e.finish_reason, e.text) == (3, "stop", "ab")


def test_ending_at_length(tok):
    e = find_ending(tok, ids(tok, "abcdef"), eos_ids=[tok.eos_token_id], stop=(), limit=4)
    assert (e.length, e.finish_reason, e.text) == (4, "length", "abcd")


def test_ending_at_stop_string_keeps_it(tok):
    stream = ids(tok, "x=4\n\ny=5\n\n")
    e = find_ending(tok, stream, eos_ids=[tok.eos_token_id], stop=("\n\n",), limit=50)
    assert (e.length, e.finish_reason, e.text) == (5, "stop", "x=4\n\n")
    # Of two stop strings the one completed first wins, wherever it sits in the tuple.
    e = find_ending(tok, stream, eos_ids=[tok.eos_token_id], stop=("y", "="), limit=50)
    assert (e.length, e.text) == (2, "x=")


def test_ending_inside_a_multichar_token(tok):
    # "</answer>" is one token: a stop string ending inside it ends the completion at that token
    # (all sampled tokens are kept) and the text is cut right after the stop string.
    stream = ids(tok, "<answer>4</answer>") + ids(tok, "zz")
    assert len(stream) == 5
    e = find_ending(tok, stream, eos_ids=[tok.eos_token_id], stop=("4</ans",), limit=50)
    assert (e.length, e.finish_reason, e.text) == (3, "stop", "<answer>4</ans")


def test_stop_before_eos_and_special_tokens_skipped(tok):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    stream = [pad] + ids(tok, "ab") + [eos]
    e = find_ending(tok, stream, eos_ids=[eos], stop=("b",), limit=50)
    assert (e.length, e.text) == (3, "ab")
    e = find_ending(tok, stream, eos_ids=[eos], stop=(), limit=50)
    assert (e.length, e.text) == (4, "ab")


# --- weights for the engine --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tok):
    return build_tiny_llama(tok, seed=1)


def test_plain_model_weights_are_its_parameters(tiny):
    with inference_weights(tiny) as weights:
        got = dict(weights)
    assert got.keys() == dict(tiny.named_parameters()).keys()
    assert all(got[n].data_ptr() == p.data_ptr() for n, p in tiny.named_parameters())  # no copy
    meta = weight_metadata(tiny)
    assert [m[0] for m in meta] == list(got) and meta[0][1] == "float32"


def test_wrappers_are_unwrapped(tiny):
    assert unwrap_model(torch.nn.DataParallel(tiny)) is tiny
    assert unwrap_model(torch.compile(tiny)) is tiny  # compiles lazily: nothing runs here


def _lora(model, **config):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], **config))
    with torch.no_grad():  # lora_B starts at zero; make the adapters matter
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return peft_model


@pytest.mark.parametrize("config", [{}, {"modules_to_save": ["lm_head"]}, {"use_dora": True}],
                         ids=["lora", "lora+modules_to_save", "dora"])
def test_peft_weights_equal_peft_merge_and_base_is_untouched(tiny, config):
    peft_model = _lora(tiny, **config)
    if "modules_to_save" in config:
        with torch.no_grad():
            peft_model.base_model.model.lm_head.modules_to_save["default"].weight.mul_(2.0)
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    # Independent reference: peft's own merge_and_unload on a copy gives the base model's names.
    reference = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    with inference_weights(peft_model) as weights:
        got = {n: t.clone() for n, t in weights}
    assert got.keys() == reference.keys()
    for name, t in got.items():
        torch.testing.assert_close(t, reference[name], rtol=0, atol=1e-6, msg=name)
    assert not torch.equal(got["model.layers.0.self_attn.q_proj.weight"],
                           tiny.model.layers[0].self_attn.q_proj.weight)  # the delta is there
    assert not any(getattr(m, "merged", False) for m in peft_model.modules())
    for name, p in peft_model.named_parameters():
        if config.get("use_dora"):  # merge/unmerge in place: equal up to round-off
            torch.testing.assert_close(p, before[name], rtol=0, atol=1e-6)
        else:  # merged out of place: bit-identical
            assert torch.equal(p, before[name]), name
    assert [m[0] for m in weight_metadata(peft_model)] == list(got)
