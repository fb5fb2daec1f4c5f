"""benchmarks/gpu_check.py: what a CPU can check of the GPU check, and the real run where CUDA is.

The real run needs a GPU; here: argument checks, the Qwen2.5-shaped builder against the model
cards' parameter counts (built on the meta device, no memory), the padded tokenizer, the report
table, the loud failure without CUDA, and the ``--cpu-dry-run`` rehearsal end to end (same
subprocesses, trainers, generators and log-prob paths as the GPU run, at tiny sizes).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


def _run(*argv, timeout=600, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


# ---------------------------------------------------------------------------------- arguments
def test_arguments_defaults_and_dry_run_shrinks_the_work():
    a = gpu_check.parse_args([])
    assert (a.prompts_per_step, a.num_generations, a.max_completion_length) == (8, 8, 256)
    assert a.logprob_sizes == ["8x1024"] and not a.cpu_dry_run and a.skip == set()
    d = gpu_check.parse_args(["--cpu-dry-run"])
    assert d.cpu_dry_run and d.max_completion_length == 16 and d.prompts_per_step * d.num_generations == 8
    assert (d.prompts_per_step * d.num_generations) % d.micro_batch_size == 0
    assert d.logprob_sizes == ["2x16"]
    s = gpu_check.parse_args(["--skip", "trl-hf, logprobs", "--logprob-sizes", "4x512", "16x2048"])
    assert s.skip == {"trl-hf", "logprobs"} and s.logprob_sizes == ["4x512", "16x2048"]


@pytest.mark.parametrize("argv, message", [
    (["--warmup", "0"], "--warmup"),
    (["--micro-batch-size", "5"], "must divide"),
    (["--skip", "grpo-tpu"], "unknown --skip"),
    (["--logprob-sizes", "8by1024"], "BxT"),
])
def test_bad_arguments_stop_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------------------------- model
@pytest.mark.parametrize("name, exact, non_embedding", [
    # Model cards: 0.5B "0.49B, non-embedding 0.36B"; 1.5B "1.54B, non-embedding 1.31B".
    # 0.5B by hand: embedding 151,936 x 896 = 136,134,656; per layer q 896*896+896, k and v
    # 896*128+128 each, o 896*896, MLP 3*896*4864, two norms 2*896 = 14,912,384; x 24 layers
    # + final norm 896 = 357,898,112; total 494,032,768 (LM head tied to the embedding).
    ("0.5b", 494_032_768, 357_898_112),
    ("1.5b", 1_543_714_304, 1_310_340_608),
])
def test_qwen25_shapes_match_the_published_models(name, exact, non_embedding):
    from transformers import Qwen2ForCausalLM

    shape = gpu_check.QWEN25_SHAPES[name]
    with torch.device("meta"):
        model = Qwen2ForCausalLM(gpu_check.qwen2_config(shape))
    n = gpu_check.count_params(model)
    assert n == exact
    assert abs(n - shape["published_params"]) / shape["published_params"] < 0.01
    assert n - model.model.embed_tokens.weight.numel() == non_embedding
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in Qwen2.5 <= 3B
    attn = model.model.layers[0].self_attn
    h = shape["hidden_size"]
    kv = shape["num_key_value_heads"] * h // shape["num_attention_heads"]  # head_dim 896/14 = 64, 1536/12 = 128
    assert attn.q_proj.weight.shape == (h, h) and attn.q_proj.bias is not None
    assert attn.k_proj.weight.shape == (kv, h) and attn.v_proj.weight.shape == (kv, h)
    assert model.model.layers[0].mlp.up_proj.weight.shape == (shape["intermediate_size"], h)
    assert len(model.model.layers) == shape["num_hidden_layers"]


def test_build_qwen2_runs_and_its_tokenizer_covers_every_id():
    model, tok = gpu_check.build_qwen2(gpu_check.DRY_SHAPES["0.5b"])
    assert next(model.parameters()).dtype == torch.bfloat16 and type(model).__name__ == "Qwen2ForCausalLM"
    assert len(tok) == model.config.vocab_size == 1024
    text = "What is 3 + 4?\n <think>x</think>"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and max(ids) < 120  # characters only, never a filler
    assert tok.decode([1023, 40]) == "<unused_1023>" + tok.decode([40])
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert tok.decode(ids) == "<|user|>hi<|assistant|>"
    with pytest.raises(ValueError, match="smaller than"):
        gpu_check.padded_char_tokenizer(50)


def test_padded_tokenizer_at_qwen_vocab_size():
    tok = gpu_check.padded_char_tokenizer(151_936)
    assert len(tok) == 151_936 and tok.decode([151_935]) == "<unused_151935>"


def test_reward_varies_within_a_group():
    reward = gpu_check._digit_share_class()()
    assert reward(completions=["<unused_123>", "abcd", ""]) == [3 / 12, 0.0, 0.0]


def test_a_model_off_the_gpu_stops_the_real_run():
    model = torch.nn.Linear(2, 2)  # on the CPU
    gpu_check.expect_device(model, gpu_check.parse_args(["--cpu-dry-run"]))  # the rehearsal wants the CPU
    with pytest.raises(RuntimeError, match="silent CPU fallback"):
        gpu_check.expect_device(model, gpu_check.parse_args([]))


# ---------------------------------------------------------------------------------- report
def test_report_table_rows_ratios_and_errors():
    args = gpu_check.parse_args([])
    split = dict.fromkeys(gpu_check.SPLIT, 0.5)
    ok = {"step_s": 2.0, "split": split, "gen_tokens_per_s": 12345.6, "peak_alloc_gib": 10.0, "peak_reserved_gib": 12.0}
    rows = {("grpo", "hf"): ok, ("grpo", "vllm"): {"skipped": "skipped: vllm not importable"},
            ("trl", "hf"): {**ok, "step_s": 4.0, "peak_alloc_gib": 20.0}, ("trl", "vllm"): {"error": "exit 1: boom"}}
    logprobs = {"logprobs": [
        {"shape": "0.5b", "hidden": 896, "vocab": 151936, "size": "8x1024", "method": "chunked", "seconds": 0.1,
         "extra_peak_gib": 1.0, "error": None},
        {"shape": "0.5b", "hidden": 896, "vocab": 151936, "size": "8x1024", "method": "naive", "seconds": 0.2,
         "extra_peak_gib": 8.0, "error": None}]}
    text = gpu_check.format_report(args, {"gpu": "H200", "torch": "2.x", "params": 494_032_768}, rows, logprobs)
    lines = text.splitlines()
    assert "494.0 M parameters" in lines[0] and "DRY RUN" not in lines[0]
    header = next(ln for ln in lines if ln.startswith("| trainer"))
    table = [ln for ln in lines if ln.startswith(("| grpo", "| trl"))]
    assert all(ln.count("|") == header.count("|") for ln in table)  # every row has every column
    assert "| grpo | hf | 2.000 | 0.500 |" in table[0] and "12,346" in table[0] and "10.00" in table[0]
    assert "skipped: vllm not importable" in table[1] and "ERROR: exit 1: boom" in table[3]
    assert "grpo/trl (hf): step time 0.50x, peak memory 0.50x" in text
    assert "grpo/trl (vllm)" not in text
    assert "| 0.5b | 896 | 151936 | 8x1024 | chunked | 0.100 | 1.00 | 0.125 |" in text


# ---------------------------------------------------------------------------------- runs
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure without CUDA")
def test_without_cuda_it_fails_loudly_instead_of_using_the_cpu(tmp_path):
    out = _run("--workdir", str(tmp_path), timeout=120)
    assert out.returncode == gpu_check.NO_CUDA_EXIT
    assert "needs a CUDA GPU" in out.stderr and "--cpu-dry-run" in out.stderr
    assert "| trainer" not in out.stdout and not any(tmp_path.iterdir())  # nothing ran


def test_cpu_dry_run_end_to_end(tmp_path):
    """Every GPU code path but vLLM's, at tiny sizes: build, grpo and trl rows, both log-prob methods."""
    out = _run("--cpu-dry-run", "--skip", "grpo-vllm,trl-vllm,grpo-async-vllm_server", "--workdir",
               str(tmp_path / "w"), "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "DRY RUN" in out.stdout and "grpo/trl (hf): step time" in out.stdout
    assert "grpo packed/padded (hf, padding_free=True/False): step time" in out.stdout
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["build"]["params"] == 128 * 1024 + 2 * (  # embedding (tied) + 2 layers
        (128 * 128 + 128) + 2 * (128 * 64 + 64) + 128 * 128 + 3 * 128 * 256 + 2 * 128) + 128
    for row in ("grpo-hf", "trl-hf", "grpo-padded-hf"):
        res = r["rows"][row]
        assert "error" not in res, res
        assert len(res["steps"]) == 3 and all(s > 0 for s in res["steps"])
        assert res["gen_tokens_per_s"] > 0 and 0 < res["completion_tokens"] <= 8 * 16
        assert res["split"]["generate"] > 0 and res["split"]["train"] > 0 and res["peak_alloc_gib"] > 0
    assert r["rows"]["grpo-vllm"] == {"skipped": "skipped (--skip)"}
    full, lora = r["rows"]["grpo-async-hf"], r["rows"]["grpo-async-lora-hf"]
    for res in (full, lora):  # the generator process samples where the trainer does, one step behind
        assert "error" not in res, res
        assert res["generator"] == "ProcessGenerator" and res["child_device"] == "cpu"
        assert 0 < res["staleness_mean"] <= 1 and res["push_s"] > 0
    # a push copies every weight (bf16) without LoRA, the float32 adapter alone with it (at the
    # dry run's hidden size 128, an r=16 adapter on every linear layer is a third of the model)
    assert full["push_mb"] * 2**20 == 2 * r["build"]["params"]
    assert 0 < lora["push_mb"] < full["push_mb"] / 2
    assert "| grpo-async-lora | hf | ProcessGenerator | cpu |" in out.stdout
    cases = r["logprobs"]["logprobs"]
    assert {(c["shape"], c["method"]) for c in cases} == {(s, m) for s in ("0.5b", "1.5b")
                                                           for m in ("chunked", "naive")}
    assert all(c["error"] is None and c["seconds"] > 0 for c in cases)


@pytest.mark.vllm
@pytest.mark.slow
def test_cpu_dry_run_vllm_rows(tmp_path):
    out = _run("--cpu-dry-run", "--skip", "grpo-hf,trl-hf,grpo-padded-hf,grpo-async-hf,grpo-async-lora-hf,logprobs",
               "--workdir", str(tmp_path / "w"), "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    server = rows["grpo-async-vllm_server"]  # a trl vllm-serve server, weights through files
    assert "error" not in server, server
    assert server["generator"] == "VLLMServerGenerator" and server["transport"] == "filesystem"
    assert server["push_mb"] > 0 and 0 < server["staleness_mean"] <= 1
    for row in ("grpo-vllm", "trl-vllm"):
        assert "error" not in rows[row] and rows[row]["gen_tokens_per_s"] > 0, rows[row]
    assert rows["grpo-vllm"]["split"]["sync"] > 0  # vLLM gets the new weights each step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_check_on_a_gpu(tmp_path):
    out = _run("--workdir", str(tmp_path / "w"), "--json", str(tmp_path / "r.json"), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["build"]["params"] == 494_032_768
    assert r["rows"]["grpo-hf"]["peak_alloc_gib"] > 0.9  # bf16 weights alone are 0.92 GiB
    chunked = {c["shape"]: c for c in r["logprobs"]["logprobs"] if c["method"] == "chunked"}
    naive = {c["shape"]: c for c in r["logprobs"]["logprobs"] if c["method"] == "naive"}
    for shape in ("0.5b", "1.5b"):
        assert chunked[shape]["extra_peak_gib"] < naive[shape]["extra_peak_gib"]
