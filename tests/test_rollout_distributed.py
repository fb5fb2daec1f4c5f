"""VLLMGenerator under torchrun: one colocated engine per data-parallel rank (as trl's colocate
mode), weight sync from a real DDP model, and ``close()`` leaving the trainer's process group
alive (vLLM's in-process shutdown would otherwise destroy it)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from grpo.rollout.server import free_port
from grpo.tiny import save_tiny_model

pytestmark = [pytest.mark.vllm, pytest.mark.distributed, pytest.mark.slow]

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from grpo.rollout import SamplingConfig, VLLMGenerator

    if __name__ == "__main__":
        model_dir, out_dir = sys.argv[1], sys.argv[2]
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        gen = VLLMGenerator(model_dir, dtype="float32", enforce_eager=True, max_model_len=128)
        before = gen.generate([f"rank {rank}"], 2, SamplingConfig(max_tokens=4, seed=rank))
        with torch.no_grad():  # zero logits: the sampler becomes uniform over the vocabulary
            ddp.module.lm_head.weight.zero_()
        gen.sync_weights(ddp)
        after = gen.generate([f"rank {rank}"], 2, SamplingConfig(max_tokens=3, seed=rank))
        gen.close()
        total = torch.tensor([1.0])
        dist.all_reduce(total)  # the trainer's group still works after close()
        json.dump({"before": [r.logprobs for r in before], "after": [r.logprobs for r in after],
                   "world": total.item()}, open(os.path.join(out_dir, f"rank{rank}.json"), "w"))
        dist.destroy_process_group()
""")


def run_torchrun(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """torchrun puts its workers in their own sessions: on timeout, SIGTERM torchrun itself
    (it then terminates its workers) instead of SIGKILL, which would orphan them."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"torchrun did not finish within {timeout:.0f} s: {err[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def test_one_engine_per_rank_with_ddp_sync(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), str(script), str(model_dir), str(tmp_path)]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CACHE_ROOT=str(tmp_path / "cache"))
    proc = run_torchrun(command, env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    for rank in (0, 1):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert out["world"] == 2.0
        assert any(abs(lp + math.log(vocab)) > 0.01 for lps in out["before"] for lp in lps)
        for lps in out["after"]:  # uniform: log(1/V) for every token
            assert all(abs(lp + math.log(vocab)) < 1e-4 for lp in lps)
