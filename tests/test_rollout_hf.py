"""HFGenerator on the tiny Llama: records, grouping, endings, seeds and log-prob semantics."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.logprobs import token_logprobs
from grpo.rollout import Generator, HFGenerator, SamplingConfig
from grpo.rollout.tokens import encode_prompt
from grpo.tiny import save_tiny_model

PROMPTS = ["2+2=", [{"role": "user", "content": "What is 3*7?"}], "a much longer prompt, ok?"]

# Float32 on both sides, same kernels, but the sampler sees left-padded batched rows while the
# reference runs one unpadded row: masked positions change summation order only, so the two
# agree to a few float32 ulps (|log p| ~ 5: ~1e-6). 1e-5 leaves 10x margin and is 1e4 times
# smaller than what a wrong temperature or an off-by-one position changes (checked below).
ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def sft_constant(model, token_id: int, steps: int = 12, lr: float = 3e-2) -> None:
    """A few Adam steps that make ``token_id`` near-certain after any context."""
    g = torch.Generator().manual_seed(0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    vocab = model.config.vocab_size
    for _ in range(steps):
        x_BT = torch.randint(0, vocab, (4, 24), generator=g)
        logits_BTV = model(x_BT).logits
        loss = torch.nn.functional.cross_entropy(
            logits_BTV.reshape(-1, vocab), torch.full((x_BT.numel(),), token_id))
        opt.zero_grad()
        loss.backward()
        opt.step()


def reference_logprobs(model, rollout, temperature: float) -> torch.Tensor:
    """What the trainer computes: hidden states of prompt+completion, chunked log-softmax of
    ``hidden @ W^T / T`` at the completion tokens (grpo.logprobs.token_logprobs). With a peft
    layer as lm_head (LoRA on it), ``lm_head.weight`` is the bare base weight, so the model's
    own logits are used instead."""
    ids_1T = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
    p = len(rollout.prompt_ids)
    targets_1C = torch.tensor([rollout.completion_ids])
    with torch.no_grad():
        out = model(ids_1T, output_hidden_states=True)
        if type(model.get_output_embeddings()) is not torch.nn.Linear:
            logits_CV = out.logits[0, p - 1:-1].float() / temperature
            return logits_CV.log_softmax(-1).gather(-1, targets_1C.T)[:, 0]
        h_1CH = out.hidden_states[-1][:, p - 1:-1]  # position t predicts token t+1
        return token_logprobs(h_1CH, model.lm_head.weight, targets_1C,
                              temperature=temperature)[0]


def test_is_a_generator(tiny):
    assert isinstance(HFGenerator(*tiny), Generator)


def test_grouping_and_records(tiny):
    model, tok = tiny
    gen = HFGenerator(model, tok)
    out = gen.generate(PROMPTS, n=3, sampling=SamplingConfig(max_tokens=6, seed=0))
    assert len(out) == 9
    assert [(r.prompt_index, r.sample_index) for r in out] == [(p, k) for p in range(3)
                                                               for k in range(3)]
    for r in out:
        assert r.prompt_ids == encode_prompt(tok, PROMPTS[r.prompt_index])
        assert 1 <= len(r.completion_ids) <= 6 and len(r.logprobs) == len(r.completion_ids)
        assert r.text == tok.decode(r.completion_ids, skip_special_tokens=True)
        ended_by_eos = r.completion_ids[-1] == tok.eos_token_id
        assert r.truncated == (len(r.completion_ids) == 6 and not ended_by_eos)
    assert len({tuple(r.completion_ids) for r in out}) > 1  # samples differ inside a group


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.6])
def test_logprobs_match_training_forward(tiny, temperature):
    model, tok = tiny
    gen = HFGenerator(model, tok)
    out = gen.generate(PROMPTS, n=2, sampling=SamplingConfig(temperature=temperature,
                                                             max_tokens=10, seed=1))
    for r in out:
        ref = reference_logprobs(model, r, temperature)
        torch.testing.assert_close(torch.tensor(r.logprobs), ref, rtol=0, atol=ATOL)
        # The tolerance discriminates: the log-probs at temperature 1 are far away.
        if temperature != 1.0:
            assert (reference_logprobs(model, r, 1.0) - ref).abs().max() > 1e3 * ATOL


def truncated_reference(model, rollout, temperature: float, top_k: int, top_p: float):
    """log softmax of ``logits / T`` after top-k then top-p masking (vLLM's order), at the
    sampled tokens: the distribution actually sampled from, renormalised (types.py)."""
    ids_1T = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
    with torch.no_grad():
        z_CV = model(ids_1T).logits[0, len(rollout.prompt_ids) - 1:-1] / temperature
    kth = z_CV.topk(top_k, dim=-1).values[:, -1:]
    z_CV = z_CV.masked_fill(z_CV < kth, float("-inf"))  # top-k
    p_sorted, order = z_CV.softmax(-1).sort(dim=-1, descending=True)
    drop_sorted = (p_sorted.cumsum(-1) - p_sorted) >= top_p  # the mass before it already >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    want = z_CV.masked_fill(drop, float("-inf")).log_softmax(-1)
    return want.gather(-1, torch.tensor(rollout.completion_ids)[:, None])[:, 0]


def test_model_generation_config_does_not_leak_into_sampling(tiny):
    # A checkpoint's generation_config.json (Qwen2.5 ships some) must not add processors that
    # the SamplingConfig did not ask for: the log-probs stay those of softmax(logits / T).
    model, tok = tiny
    opinionated = copy.deepcopy(model)
    opinionated.generation_config.update(repetition_penalty=1.5, temperature=0.3, top_p=0.5,
                                         top_k=3, min_p=0.2, no_repeat_ngram_size=1)
    out = HFGenerator(opinionated, tok).generate(PROMPTS, 2, SamplingConfig(max_tokens=8, seed=0))
    for r in out:
        torch.testing.assert_close(torch.tensor(r.logprobs), reference_logprobs(model, r, 1.0),
                                   rtol=0, atol=ATOL)
    assert opinionated.generation_config.repetition_penalty == 1.5  # restored afterwards


def test_truncated_sampling_logprobs_are_renormalised(tiny):
    model, tok = tiny
    sampling = SamplingConfig(temperature=0.8, top_k=5, top_p=0.5, max_tokens=8, seed=2)
    out = HFGenerator(model, tok).generate(PROMPTS[:2], n=2, sampling=sampling)
    for r in out:
        want = truncated_reference(model, r, 0.8, 5, 0.5)
        torch.testing.assert_close(torch.tensor(r.logprobs), want, rtol=0, atol=ATOL)
        assert torch.isfinite(want).all()  # every sampled token was inside the kept set
        assert (want - reference_logprobs(model, r, 0.8)).min() > 1e3 * ATOL  # renormalised


def test_seeded_sampling_is_reproducible(tiny):
    gen = HFGenerator(*tiny)
    s = SamplingConfig(max_tokens=8, seed=5)
    a, b = gen.generate(PROMPTS, 2, s), gen.generate(PROMPTS, 2, s)
    assert a == b
    c = gen.generate(PROMPTS, 2, SamplingConfig(max_tokens=8, seed=6))
    assert [r.completion_ids for r in a] != [r.completion_ids for r in c]
    # Seeding forks the RNG: the global stream is left where it was.
    torch.manual_seed(0)
    x = torch.rand(1)
    torch.manual_seed(0)
    gen.generate(PROMPTS, 1, s)
    assert torch.equal(torch.rand(1), x)


def test_row_sampler_draws_from_the_softmax():
    """The exponential race picks token v with probability softmax(s)_v: chi-square of 20,000
    seeded draws against the exact probabilities (a masked token is never drawn)."""
    from grpo.rollout.sampling import RowSampler

    scores_V = torch.tensor([2.0, 1.0, 0.0, -1.0, -math.inf, 0.5])
    probs_V = torch.softmax(scores_V, -1)
    rows = 20_000
    gens = [torch.Generator().manual_seed(i) for i in range(rows)]
    out_BV = RowSampler(gens)(torch.zeros(rows, 1, dtype=torch.long),
                              scores_V.expand(rows, -1).clone())
    assert ((out_BV == 0).sum(-1) == 1).all() and torch.isinf(out_BV).sum() == rows * 5
    counts_V = torch.bincount(out_BV.argmax(-1), minlength=6).double()
    assert counts_V[4] == 0
    keep = probs_V > 0
    expected = probs_V[keep].double() * rows
    chi2 = (((counts_V[keep] - expected) ** 2) / expected).sum().item()
    assert chi2 < 20.5  # 4 degrees of freedom: P(chi2 > 20.5) < 0.0005 for a correct sampler
    # and not merely some distribution over the kept set: argmax of the scores alone is far off
    assert counts_V[0] / rows == pytest.approx(probs_V[0].item(), abs=0.02)


def test_seeded_rows_do_not_depend_on_their_batch(tiny):
    """Sample k of prompt p draws from seed + p*n + k (vLLM's scheme): the same prompt alone, with
    the seed shifted to its position, or in chunks of another size, gives the same tokens."""
    gen = HFGenerator(*tiny)
    s = SamplingConfig(max_tokens=8, seed=11)
    together = gen.generate(PROMPTS, 3, s)
    alone = gen.generate(PROMPTS[1:2], 3, SamplingConfig(max_tokens=8, seed=11 + 1 * 3))
    assert [r.completion_ids for r in together[3:6]] == [r.completion_ids for r in alone]
    chunked = HFGenerator(*tiny, max_batch_size=2).generate(PROMPTS, 3, s)
    assert [r.completion_ids for r in together] == [r.completion_ids for r in chunked]
    assert len({tuple(r.completion_ids) for r in together[:3]}) > 1  # a group's samples differ


@pytest.mark.parametrize("use_generate", [False, True])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_shared_prompt_prefill_gives_the_same_rollouts(tiny, temperature, use_generate):
    """Each distinct prompt prefilled once, its cache copied to its n rows: the same tokens and
    log-probs as prefilling every row, and the model's first call really sees 3 rows, not 9."""
    model, tok = tiny
    s = SamplingConfig(max_tokens=8, seed=4, temperature=temperature)
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        shared = HFGenerator(model, tok, use_generate=use_generate).generate(PROMPTS, 3, s)
        first_shared = calls[0]
        calls.clear()
        plain = HFGenerator(model, tok, share_prompt_prefill=False, use_generate=use_generate).generate(PROMPTS, 3, s)
        first_plain = calls[0]
    finally:
        hook.remove()
    assert first_shared[0] == 3 and first_plain[0] == 9
    # generate runs the last prompt column itself; the own loop prefills whole prompts
    assert first_shared[1] == first_plain[1] - int(use_generate)
    assert [r.completion_ids for r in shared] == [r.completion_ids for r in plain]
    for a, b in zip(shared, plain):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=ATOL)


def test_max_batch_size_chunks_the_same_rows(tiny):
    s = SamplingConfig(max_tokens=5, seed=3, temperature=0)  # greedy: batching cannot matter
    whole = HFGenerator(*tiny).generate(PROMPTS, 2, s)
    chunked = HFGenerator(*tiny, max_batch_size=4).generate(PROMPTS, 2, s)
    assert [r.completion_ids for r in whole] == [r.completion_ids for r in chunked]
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs),
                                   rtol=0, atol=ATOL)


def test_eos_stop_strings_and_length_per_row(tiny):
    model, tok = tiny
    seven, eos = tok.convert_tokens_to_ids("7"), tok.eos_token_id
    sevens = copy.deepcopy(model)
    sft_constant(sevens, seven)
    gen = HFGenerator(sevens, tok)
    out = gen.generate(PROMPTS, 2, SamplingConfig(max_tokens=5))
    for r in out:
        assert r.completion_ids == [seven] * 5 and r.text == "77777"
        assert r.truncated and r.finish_reason == "length"
        assert max(r.logprobs) <= 0 and min(r.logprobs) > -0.05  # near-certain
    out = gen.generate(PROMPTS, 2, SamplingConfig(max_tokens=9, stop=("777",)))
    assert all((r.text, r.finish_reason, len(r.completion_ids)) == ("777", "stop", 3) for r in out)

    eoses = copy.deepcopy(model)
    sft_constant(eoses, eos)
    out = HFGenerator(eoses, tok).generate(PROMPTS, 2, SamplingConfig(max_tokens=9))
    assert all((r.completion_ids, r.text, r.finish_reason) == ([eos], "", "stop") for r in out)


def test_context_limit_cuts_each_row(tiny):
    model, tok = tiny
    small = copy.deepcopy(model)
    small.config.max_position_embeddings = 40
    out = HFGenerator(small, tok).generate([PROMPTS[0], PROMPTS[2]], 1,
                                           SamplingConfig(max_tokens=100, seed=0))
    assert [len(r.prompt_ids) for r in out] == [4, 25]
    for r in out:  # each row runs to the context's end (40 tokens) unless eos came first
        if r.finish_reason == "length":
            assert len(r.prompt_ids) + len(r.completion_ids) == 40
        else:
            assert r.completion_ids[-1] == tok.eos_token_id
    assert out[1].finish_reason == "length"  # (seeded: this row does reach the limit)
    with pytest.raises(ValueError, match="no room"):
        HFGenerator(small, tok).generate(["x" * 40], 1, SamplingConfig())


def test_bad_input(tiny):
    gen = HFGenerator(*tiny)
    with pytest.raises(ValueError, match="at least one prompt"):
        gen.generate([], 2, SamplingConfig())
    with pytest.raises(ValueError, match="n "):
        gen.generate(["hi"], 0, SamplingConfig())
    with pytest.raises(ValueError, match="no room"):
        gen.generate(["x" * 2000], 1, SamplingConfig())


def test_sync_is_a_noop_for_the_same_model_and_mode_is_restored(tiny):
    model, tok = tiny
    with HFGenerator(model, tok) as gen:
        gen.sync_weights(torch.nn.DataParallel(model))  # same model, wrapped: fine
        with pytest.raises(ValueError, match="samples from the model"):
            gen.sync_weights(copy.deepcopy(model))
        model.train()
        gen.generate(PROMPTS[:1], 1, SamplingConfig(max_tokens=2))
        assert model.training
        model.eval()
    with pytest.raises(RuntimeError, match="closed"):
        gen.generate(PROMPTS[:1], 1, SamplingConfig(max_tokens=2))
