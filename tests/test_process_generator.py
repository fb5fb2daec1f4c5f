"""ProcessGenerator: the child samples on its device, a peft model syncs its adapter alone (and
the child follows it), and its token engine makes a MultiTurnGenerator sample every turn in
the child with exactly the trajectories of the in-process one. Real child processes (spawn),
real peft, tiny models. Death, stalls and the missing __main__ guard: tests/test_async.py."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from grpo.rollout import HFGenerator, ProcessGenerator, SamplingConfig
from grpo.rollout.multiturn import MultiTurnGenerator
from grpo.rollout.process import device_check
from grpo.rollout.tools import CodeBlockParser

from test_multiturn_hf import PROMPTS, make, python, taught  # noqa: F401 -- `taught` is a fixture


@pytest.fixture
def tiny(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


def lora(model, **kw):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], **kw))


def reference_logprobs(model, rollout) -> torch.Tensor:
    """log pi(token | prefix) of the rollout's completion under ``model`` (one forward)."""
    ids = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(rollout.prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(rollout.completion_ids)[:, None])[:, 0]


def test_lora_syncs_only_the_adapter_and_the_child_follows_it(tiny):
    """The buffers hold the active adapter's lora_A / lora_B and nothing else: r=4 on q_proj and
    v_proj (64 -> 64 each) of 2 layers is 2 layers x 2 modules x (4*64 + 64*4) = 2048 float32
    = 8192 bytes. After a sync that changed the adapter, the child's sampling log-probs are the
    trainer-side peft model's, and its seeded samples are the in-process HFGenerator's."""
    model, tok = tiny
    peft_model = lora(model)
    gen = ProcessGenerator(peft_model, tok, share_prompt_prefill=False)
    try:
        assert sorted(gen.buffer_names) == sorted(
            f"base_model.model.model.layers.{i}.self_attn.{m}.lora_{ab}.default.weight"
            for i in range(2) for m in ("q_proj", "v_proj") for ab in "AB")
        assert gen.sync_bytes == 2 * 2 * (4 * 64 + 64 * 4) * 4 == 8192
        sampling = SamplingConfig(temperature=1.0, max_tokens=12, seed=3)
        before = gen.generate(["Say 1", "Say 2"], 2, sampling)
        with torch.no_grad():  # a trained adapter: lora_B starts at zero, make it count
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
        gen.sync_weights(peft_model, version=4)
        assert gen.last_sync_seconds is not None and gen.last_sync_seconds >= 0
        after = gen.generate(["Say 1", "Say 2"], 2, sampling)
        local = HFGenerator(peft_model, tok, share_prompt_prefill=False).generate(["Say 1", "Say 2"], 2, sampling)
    finally:
        gen.close()
    assert {r.policy_version for r in before} == {0} and {r.policy_version for r in after} == {4}
    assert [r.completion_ids for r in after] == [r.completion_ids for r in local]
    assert [r.completion_ids for r in after] != [r.completion_ids for r in before]  # the adapter moved them
    for r in after:
        torch.testing.assert_close(torch.tensor(r.logprobs), reference_logprobs(peft_model, r), atol=1e-5, rtol=0)


def test_modules_to_save_and_trainable_base_weights_are_synced_too(tiny):
    """LoRA with modules_to_save=["lm_head"] and a base weight left trainable (the final norm):
    both are in the buffers and reach the child (greedy output follows the new lm_head). A
    weight unfrozen after the generator was built would never be synced: refused by name."""
    model, tok = tiny
    peft_model = lora(model, modules_to_save=["lm_head"])
    norm = peft_model.base_model.model.model.norm.weight
    norm.requires_grad_(True)
    gen = ProcessGenerator(peft_model, tok)
    try:
        names = set(gen.buffer_names)
        assert "base_model.model.lm_head.modules_to_save.default.weight" in names
        assert "base_model.model.model.norm.weight" in names
        assert not any("original_module" in n or "embed_tokens" in n for n in names)
        seven = tok.convert_tokens_to_ids("7")
        with torch.no_grad():
            head = peft_model.base_model.model.lm_head.modules_to_save["default"].weight
            head.zero_()
            head[seven] = 1.0
            norm.fill_(1.0)
        gen.sync_weights(peft_model)
        out = gen.generate(["Say 1"], 1, SamplingConfig(temperature=0, max_tokens=4))
        assert out[0].completion_ids == [seven] * 4
        peft_model.base_model.model.model.embed_tokens.weight.requires_grad_(True)
        with pytest.raises(ValueError, match=r"synced tensors changed .*embed_tokens.*before building it"):
            gen.sync_weights(peft_model)
    finally:
        gen.close()


def test_a_tied_model_samples_in_the_child_as_in_process_on_its_device():
    """A Qwen2-shaped model with tied embeddings (the benchmark's shape, tiny): the child
    rebuilds it (one tensor for embeddings and head) and samples exactly what HFGenerator does,
    on the trainer's device (the CPU here)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from grpo.tiny import build_char_tokenizer

    tok = build_char_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    gen = ProcessGenerator(model, tok)
    try:
        assert gen.device == torch.device("cpu") and gen.child_device() == "cpu"
        assert "lm_head.weight" not in gen.buffer_names  # the tied head is the embedding
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(3.0)  # moves the head as well
        gen.sync_weights(model)
        sampling = SamplingConfig(temperature=1.0, max_tokens=10, seed=1)
        got = gen.generate(["Say 1"], 3, sampling)
    finally:
        gen.close()
    want = HFGenerator(model, tok).generate(["Say 1"], 3, sampling)
    assert [r.completion_ids for r in got] == [r.completion_ids for r in want]


def test_device_check_and_the_device_the_child_is_given(tiny):
    """device_check (what the GPU check calls) finds the child on the trainer's device and
    reports one sync; device= reaches the child: on a machine without CUDA, asking for cuda:0
    fails in the child (its traceback comes back), not silently on the CPU."""
    model, tok = tiny
    report = device_check(model, tok)
    assert report["trainer_device"] == report["child_device"] == "cpu"
    assert report["sync_bytes"] == sum(p.numel() * 4 for p in model.parameters())
    assert report["sync_seconds"] >= 0 and report["child_load_seconds"] >= 0
    if torch.cuda.is_available():
        return  # test_the_child_samples_on_the_trainers_cuda_device covers it
    with pytest.raises(RuntimeError, match=r"(?s)generator process failed.*(CUDA|cuda)"):
        ProcessGenerator(model, tok, device="cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_child_samples_on_the_trainers_cuda_device(tiny):
    model, tok = tiny
    report = device_check(model.cuda(), tok)
    assert report["child_device"] == report["trainer_device"] == "cuda:0"


@pytest.mark.slow  # the taught fixture trains for a while on a loaded machine
def test_multiturn_over_the_process_generator_is_the_in_process_one(taught):  # noqa: F811
    """The token engine forwards every turn's sampling to the child (HFEngine there): the
    trajectories (ids, log-probs, tool calls, masks) are those of the in-process generator with
    the same weights and seeds, tool calls included."""
    model, tok = taught
    gen = ProcessGenerator(model, tok, share_prompt_prefill=False)
    multi = MultiTurnGenerator(gen, tools=[python], parser=CodeBlockParser(), max_turns=3, render_tools=False)
    sampling = SamplingConfig(temperature=1.0, max_tokens=60, seed=5)
    try:
        # the child's device; versions are the asynchronous trainer's AsyncGenerator's to tag
        assert multi.device == torch.device("cpu") and not multi.versioned
        got = multi.generate(PROMPTS, 2, sampling)
        greedy = multi.generate(PROMPTS, 1, SamplingConfig(temperature=0.0, max_tokens=60))
        assert multi.engine.policy_version == 0
    finally:
        multi.close()
    assert not gen.pid  # closing the multi-turn generator closed the process
    want = make(model, tok).generate(PROMPTS, 2, sampling)
    assert sum(1 for t in got if t.tool_calls) >= 4, [t.text for t in got]
    for g, w in zip(got, want, strict=True):
        assert g.completion_ids == w.completion_ids and g.loss_mask == w.loss_mask
        assert [replace(c, seconds=0) for c in g.tool_calls] == [replace(c, seconds=0) for c in w.tool_calls]
        assert g.messages == w.messages and g.stop_reason == w.stop_reason
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=1e-5, rtol=0)
    want_greedy = make(model, tok).generate(PROMPTS, 1, SamplingConfig(temperature=0.0, max_tokens=60))
    assert [t.completion_ids for t in greedy] == [t.completion_ids for t in want_greedy]


def test_an_engine_session_keeps_one_weight_version(tiny):
    """Outside a session every sample loads newly synced weights; inside one only the first
    does, so the turns of one multi-turn generate share a version (policy_version says which)."""
    model, tok = tiny
    model = copy.deepcopy(model)
    gen = ProcessGenerator(model, tok)
    engine = gen.token_engine()
    context, sampling = [tok.encode("Say 1")], SamplingConfig(temperature=1.0, stop=())

    def sample():
        return engine.sample(context, [7], [8], sampling)

    def perturb():
        with torch.no_grad():
            model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight, generator=torch.Generator().manual_seed(1)))

    try:
        with engine.session():
            first = sample()
            perturb()
            gen.sync_weights(model)
            assert sample() == first and engine.policy_version == 0
        moved = sample()
        assert moved != first and engine.policy_version == 1
        with engine.session():
            assert sample() == moved and engine.policy_version == 1
    finally:
        gen.close()


@pytest.mark.slow  # two child processes
def test_the_weight_sync_benchmark_runs_quick():
    """benchmarks/weight_sync.py --quick prints its table: a full-weight row and an adapter row
    whose bytes are those of the tiny shape's tensors (all 0.1M parameters in bf16; the r=16
    adapter on every linear projection of 2 layers, in peft's float32)."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "weight_sync.py"), "--quick", "--repeats", "2"],
                          capture_output=True, text=True, timeout=300, cwd=root,
                          env={**__import__("os").environ, "PYTHONPATH": str(root / "src")})
    assert done.returncode == 0, done.stderr[-2000:]
    mb = dict(re.findall(r"^\| (full weights|LoRA r=16, all linear) \| \d+ \| ([\d.]+) \|", done.stdout, re.M))
    # full: embeddings 256*64 (tied) + 2 layers x (q 64*64+64, k 64*32+32, v 64*32+32, o 64*64,
    #   mlp 3*64*128, 2 norms 2*64) + final norm 64 = 90,688 parameters x 2 bytes = 0.181 MB
    assert float(mb["full weights"]) == pytest.approx(0.18, abs=0.005)
    # adapter: 2 layers x 16 x (q 64+64, k 64+32, v 64+32, o 64+64, gate 64+128, up 64+128,
    #   down 128+64) = 2 x 16 x 1024 = 32,768 parameters x 4 bytes = 0.131 MB
    assert float(mb["LoRA r=16, all linear"]) == pytest.approx(0.13, abs=0.005)


def test_a_peft_model_with_several_active_adapters_is_refused_before_any_child(tiny):
    from peft import LoraConfig

    model, tok = tiny
    peft_model = lora(model)
    peft_model.add_adapter("other", LoraConfig(r=4, target_modules=["q_proj"]))
    peft_model.base_model.set_adapter(["default", "other"])
    with pytest.raises(ValueError, match=r"pushes one adapter, but \['default', 'other'\] are active"):
        ProcessGenerator(peft_model, tok)
