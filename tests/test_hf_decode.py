"""HFGenerator's own decode loop (grpo.rollout.hf_decode) against transformers' generate: the same
rollouts for every sampling setting, finished rows really leave the batch, and the cache is
written in place."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.rollout import HFGenerator, SamplingConfig
from grpo.rollout.hf_decode import _PreallocatedLayer
from grpo.tiny import save_tiny_model

PROMPTS = ["2+2=", [{"role": "user", "content": "What is 3*7?"}], "a much longer prompt, ok?"]
ATOL = 1e-5  # float32 rounding of differently shaped batches (see test_rollout_hf.py)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def both_paths(model, tok, prompts, n, sampling, **kw):
    own = HFGenerator(model, tok, **kw).generate(prompts, n, sampling)
    hf = HFGenerator(model, tok, use_generate=True, **kw).generate(prompts, n, sampling)
    return own, hf


def assert_same(own, hf):
    assert [r.completion_ids for r in own] == [r.completion_ids for r in hf]
    assert [(r.finish_reason, r.text) for r in own] == [(r.finish_reason, r.text) for r in hf]
    for a, b in zip(own, hf, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs),
                                   rtol=0, atol=ATOL)


@pytest.mark.parametrize("sampling", [
    SamplingConfig(max_tokens=16, seed=3),
    SamplingConfig(max_tokens=16, seed=1, temperature=0.7, top_k=5, top_p=0.9, min_p=0.05),
    SamplingConfig(max_tokens=16, temperature=0.0),
    SamplingConfig(max_tokens=16, seed=2, temperature=0.8, repetition_penalty=1.5),
    SamplingConfig(max_tokens=24, seed=5, stop=("a", "e", "1")),  # rows end at different steps
], ids=["plain", "truncated", "greedy", "penalty", "stop"])
@pytest.mark.parametrize("share", [True, False], ids=["shared-prefill", "row-prefill"])
def test_own_loop_gives_generates_rollouts(tiny, sampling, share):
    own, hf = both_paths(*tiny, PROMPTS, 3, sampling, share_prompt_prefill=share)
    assert_same(own, hf)
    if sampling.stop:
        reasons = [r.finish_reason for r in own]
        # a real test of early ends: rows stop at different steps
        assert "stop" in reasons and len({len(r.completion_ids) for r in own}) > 2
    if not sampling.greedy:
        assert len({tuple(r.completion_ids) for r in own[:3]}) > 1


def test_cache_that_grows_during_decoding(tiny, monkeypatch):
    """Room for 2 completion columns at first: the cache is regrown while rows are also being
    dropped, and the rollouts are still generate's."""
    from grpo.rollout import hf_decode

    model, tok = tiny
    monkeypatch.setattr(hf_decode, "_FIRST_RESERVE", 2)
    grown, rows = [], []
    real = hf_decode._PreallocatedLayer._reserve
    monkeypatch.setattr(hf_decode._PreallocatedLayer, "_reserve",
                        lambda self, length, cap: (grown.append(cap), real(self, length, cap)))
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    sampling = SamplingConfig(max_tokens=60, seed=3, stop=("1",))
    try:
        own = HFGenerator(model, tok).generate(PROMPTS, 3, sampling)
    finally:
        hook.remove()
    assert_same(own, HFGenerator(model, tok, use_generate=True).generate(PROMPTS, 3, sampling))
    assert sorted(set(grown)) == [27, 54, 85]  # 25 prompt columns + 2, doubled, then the limit
    assert rows[1] == 9 and min(rows[1:]) < 9  # and rows were dropped on the way


@pytest.mark.parametrize("use_generate", [False, True])
def test_a_stop_string_inside_a_special_tokens_name_does_not_stop(tiny, use_generate):
    """The rollout's text skips special tokens, so a sampled ``<pad>`` or ``<|user|>`` does not
    complete the stop strings "a" or "e": the row goes on. (transformers' own ``stop_strings``
    criterion matches token names: with it, generate stopped such a row there and padded it, and
    the rollout read as a 'length' finish shorter than max_tokens.)"""
    model, tok = tiny
    sampling = SamplingConfig(max_tokens=24, seed=5, stop=("a", "e", "1"))
    out = HFGenerator(model, tok, use_generate=use_generate).generate(PROMPTS, 3, sampling)
    special = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    special |= set(tok.all_special_ids)
    names = [tok.convert_ids_to_tokens(i) for r in out for i in r.completion_ids[:-1]
             if i in special]
    assert any("a" in name or "e" in name for name in names)  # the case under test did occur
    for r in out:
        if r.finish_reason == "length":
            assert len(r.completion_ids) == 24 and not any(s in r.text for s in sampling.stop)
        else:
            assert r.text.endswith(sampling.stop) and r.completion_ids[-1] not in special


def test_finished_rows_leave_the_batch(tiny):
    """A context of 40 positions: the 25-token prompt's rows must stop after 15 tokens, the
    4-token prompt's after 36. Every decode forward carries exactly the rows still running (with
    8 rows or fewer one finished row is already an eighth, so it is dropped at once); generate
    keeps all 8 to the end. Same rollouts either way."""
    model, tok = tiny
    small = copy.deepcopy(model)
    small.config.max_position_embeddings = 40
    sampling = SamplingConfig(max_tokens=100, seed=7)
    sizes, caches = [], []

    def record(module, args, kw):
        sizes.append(tuple(kw["input_ids"].shape))
        caches.append({type(layer) for layer in getattr(kw.get("past_key_values"), "layers", [])})
    hook = small.register_forward_pre_hook(record, with_kwargs=True)
    try:
        own = HFGenerator(small, tok).generate([PROMPTS[0], PROMPTS[2]], 4, sampling)
        own_sizes, own_caches = list(sizes), list(caches)
        sizes.clear()
        hf = HFGenerator(small, tok, use_generate=True).generate([PROMPTS[0], PROMPTS[2]], 4,
                                                                 sampling)
    finally:
        hook.remove()
    assert_same(own, hf)
    lengths = [len(r.completion_ids) for r in own]
    assert max(lengths[4:]) <= 15 < max(lengths[:4])
    assert own_sizes[0] == (2, 25)  # one prefill per distinct prompt
    assert all(kinds == {_PreallocatedLayer} for kinds in own_caches[1:])  # decode: in place
    decode_rows = [b for b, cols in own_sizes[1:]]
    assert all(cols == 1 for _, cols in own_sizes[1:])
    # the forward after token t feeds the rows that go on to a token t+1
    assert decode_rows == [sum(n > t + 1 for n in lengths) for t in range(max(lengths) - 1)]
    assert sum(b for b, _ in sizes[1:]) == 8 * (len(sizes) - 1)  # generate: all rows every step
    assert sum(decode_rows) < 0.8 * sum(b for b, _ in sizes[1:])


def test_lora_model(tiny):
    """A peft LoRA model (adapters away from zero, so they matter): the own loop samples from the
    adapted model, as generate does, and its log-probs are the adapted model's."""
    peft = pytest.importorskip("peft")
    model, tok = tiny
    torch.manual_seed(0)
    lora = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    sampling = SamplingConfig(max_tokens=10, seed=9)
    own, hf = both_paths(lora, tok, PROMPTS, 2, sampling)
    assert_same(own, hf)
    base = HFGenerator(model, tok).generate(PROMPTS, 2, sampling)
    assert [r.completion_ids for r in own] != [r.completion_ids for r in base]
    for r in own:
        ids = torch.tensor([r.prompt_ids + r.completion_ids])
        with torch.no_grad():
            logits_CV = lora(input_ids=ids).logits[0, len(r.prompt_ids) - 1:-1]
        want = logits_CV.log_softmax(-1).gather(-1, torch.tensor(r.completion_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(r.logprobs), want, rtol=0, atol=ATOL)


def test_synced_gpus_keeps_generate(tiny):
    # A sharded forward is a collective: every process must run the same forwards, so FSDP
    # generation keeps transformers' synced loop rather than dropping rows per process.
    assert HFGenerator(*tiny, synced_gpus=True).use_generate
    assert not HFGenerator(*tiny).use_generate


def test_preallocated_layer_writes_in_place_and_grows_by_doubling():
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(3, 2, 5, 4, generator=g), torch.randn(3, 2, 5, 4, generator=g)
    layer = _PreallocatedLayer(k, v, capacity=6, limit=14)
    want_k, want_v, buffers = k, v, []
    for _ in range(9):  # 5 -> 14 columns: room for 6, then 12, then 14 (the limit)
        nk, nv = torch.randn(3, 2, 1, 4, generator=g), torch.randn(3, 2, 1, 4, generator=g)
        keys, values = layer.update(nk, nv)
        want_k, want_v = torch.cat([want_k, nk], -2), torch.cat([want_v, nv], -2)
        assert torch.equal(keys, want_k) and torch.equal(values, want_v)
        buffers.append((keys.data_ptr(), layer._keys.shape[-2]))
    # a view of one buffer until it is full: only 2 copies for 9 new columns
    assert [cap for _, cap in buffers] == [6] + [12] * 6 + [14] * 2
    assert len({ptr for ptr, _ in buffers}) == 3
    assert layer.get_seq_length() == 14 and layer.get_mask_sizes(1) == (15, 0)
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys, want_k[[2, 0]]) and torch.equal(layer.values, want_v[[2, 0]])
    with pytest.raises(RuntimeError, match="holds 14 columns"):
        layer.update(nk[:2], nv[:2])


def test_sliding_window_layers(tiny):
    """A Qwen2 whose first layer attends to a window of 6 tokens and whose second is full
    attention: the sliding layer keeps transformers' own cache update, the full one is
    preallocated; the rollouts are generate's, and the window really changes them."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _, tok = tiny
    config = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    windowed = Qwen2ForCausalLM(Qwen2Config(
        **config, use_sliding_window=True, sliding_window=6,
        layer_types=["sliding_attention", "full_attention"])).eval()
    full = Qwen2ForCausalLM(Qwen2Config(**config)).eval()
    full.load_state_dict(windowed.state_dict())
    sampling = SamplingConfig(max_tokens=12, seed=4)
    own, hf = both_paths(windowed, tok, PROMPTS, 2, sampling)
    assert_same(own, hf)
    unwindowed = HFGenerator(full, tok).generate(PROMPTS, 2, sampling)
    assert [r.logprobs for r in own] != [r.logprobs for r in unwindowed]
