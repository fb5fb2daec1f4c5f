"""The repetition penalty, applied identically by the HF and vLLM generators: each sampled
token's log-prob equals the penalised distribution computed by hand from the model's logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.rollout import HFGenerator, SamplingConfig
from grpo.tiny import save_tiny_model

PROMPTS = ["2+2=", "abab", "a much longer prompt, ok?"]
SAMPLING = SamplingConfig(temperature=0.8, repetition_penalty=1.7, max_tokens=12, seed=5)


def penalized_reference(model, rollout, temperature: float, penalty: float) -> torch.Tensor:
    """log softmax(penalise(logits) / T) at every sampled token, with 'seen' = the prompt and
    the completion before that token (CTRL / vLLM semantics)."""
    ids = rollout.prompt_ids + rollout.completion_ids
    p = len(rollout.prompt_ids)
    with torch.no_grad():
        logits_CV = model(torch.tensor([ids])).logits[0, p - 1:-1].float()
    out = []
    for t, tok in enumerate(rollout.completion_ids):
        z = logits_CV[t].clone()
        seen = torch.tensor(sorted(set(ids[:p + t])))
        z[seen] = torch.where(z[seen] > 0, z[seen] / penalty, z[seen] * penalty)
        out.append(torch.log_softmax(z / temperature, -1)[tok])
    return torch.stack(out)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def check(rollouts, model):
    changed = False
    for r in rollouts:
        want = penalized_reference(model, r, SAMPLING.temperature, SAMPLING.repetition_penalty)
        torch.testing.assert_close(torch.tensor(r.logprobs), want, rtol=0, atol=1e-4)
        plain = penalized_reference(model, r, SAMPLING.temperature, 1.0)
        changed |= (plain - want).abs().max().item() > 1e-3
    assert changed  # the penalty did change the distribution


def test_hf_generator_applies_the_repetition_penalty(model_dir):
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    check(HFGenerator(model, tok).generate(PROMPTS, 2, SAMPLING), model)


@pytest.mark.vllm
def test_vllm_generator_applies_the_same_penalty(model_dir, tmp_path, monkeypatch):
    from grpo.rollout import VLLMGenerator

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "cache"))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    gen = VLLMGenerator(model_dir, dtype="float32", enforce_eager=True, max_model_len=128)
    try:
        check(gen.generate(PROMPTS, 2, SAMPLING), model)
    finally:
        gen.close()


def test_penalty_must_be_positive():
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingConfig(repetition_penalty=0.0)
