"""Weight sync for a model with tied input/output embeddings (Qwen2.5-0.5B..3B, Llama-3.2-1B).

The checkpoint stores only ``embed_tokens``; vLLM's layer-wise reload never re-processes the
tied ``lm_head``, which on CPU keeps a pre-packed copy of the old weights unless VLLMGenerator
re-processes it (``grpo.rollout.vllm_support.reprocess_tied_layers``). Without that, this test
fails with the engine still sampling from the old weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open
from test_rollout_hf import PROMPTS, reference_logprobs, sft_constant
from transformers import AutoTokenizer, LlamaForCausalLM

from grpo.rollout import SamplingConfig, VLLMGenerator
from grpo.tiny import build_char_tokenizer, build_tiny_llama

pytestmark = pytest.mark.vllm

ATOL = 1e-4  # float32 engine vs float32 training forward, as in test_rollout_vllm.py


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    path = tmp_path_factory.mktemp("tied") / "model"
    tok = build_char_tokenizer()
    config = build_tiny_llama(tok).config
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(path)
    tok.save_pretrained(path)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.setenv("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm_cache")))
        gen = VLLMGenerator(path, dtype="float32", enforce_eager=True, max_model_len=128)
        yield gen, model, AutoTokenizer.from_pretrained(path)
        gen.close()


def test_tied_lm_head_follows_the_sync(tied):
    gen, model, tok = tied
    for r in gen.generate(PROMPTS, 2, SamplingConfig(max_tokens=5, seed=0)):
        torch.testing.assert_close(torch.tensor(r.logprobs), reference_logprobs(model, r, 1.0),
                                   rtol=0, atol=ATOL)
    sevens = copy.deepcopy(model)
    sft_constant(sevens, tok.convert_tokens_to_ids("7"))
    assert sevens.lm_head.weight is sevens.model.embed_tokens.weight  # still tied
    gen.sync_weights(sevens)
    for r in gen.generate(PROMPTS, 2, SamplingConfig(max_tokens=5, seed=0)):
        assert r.text == "77777"
        torch.testing.assert_close(torch.tensor(r.logprobs), reference_logprobs(sevens, r, 1.0),
                                   rtol=0, atol=ATOL)
