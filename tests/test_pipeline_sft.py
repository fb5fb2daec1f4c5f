"""The SFT stage through trl's real SFTTrainer, with the tiny offline model on CPU."""

import math

import pytest
import torch

from grpo.pipeline import sft
from grpo.sft import to_sft_rows
from grpo.tiny import build_char_tokenizer, build_tiny_llama, save_tiny_model

PROMPT = [{"role": "user", "content": "qqqqqqqqqqqqqqqqqqqq"}]
COMPLETION = [{"role": "assistant", "content": "<think>z</think><answer>7</answer>"}]


def _mean_logp(model, tok, ids, start, end):
    """Mean log-prob of tokens ids[start:end] given what precedes each."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return logp[start - 1:end - 1].mean().item()


def test_loss_on_completion_tokens_only(tmp_path):
    """After SFT on one repeated row, the completion (and its eos) is learned, the prompt is not:
    with the loss on every token, p(q | <|user|>qq..q) would go to 1 as well."""
    tok = build_char_tokenizer()
    model = build_tiny_llama(tok, hidden_size=64, num_heads=2, head_dim=32)
    result = sft(model, [{"prompt": PROMPT, "completion": COMPLETION}] * 64, tmp_path, tokenizer=tok,
                 per_device_train_batch_size=8, num_train_epochs=5, learning_rate=1e-2, logging_steps=8,
                 disable_tqdm=True, gradient_checkpointing=False)
    prompt_ids = tok(tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]
    full = tok(tok.apply_chat_template(PROMPT + COMPLETION, tokenize=False), add_special_tokens=False)["input_ids"]
    assert full[:len(prompt_ids)] == prompt_ids and full[-1] == tok.eos_token_id
    completion_logp = _mean_logp(model, tok, full, len(prompt_ids), len(full))
    prompt_logp = _mean_logp(model, tok, full, 3, len(prompt_ids) - 1)  # the q's after the first two
    assert completion_logp > math.log(0.9)  # learned, eos included
    assert prompt_logp < math.log(0.2)  # never a target: far from the 1.0 a full-sequence loss would give
    losses = [r["loss"] for r in result.log_history if "loss" in r]
    assert losses[-1] < losses[0] / 5
    # saved like any HF model, and it generates the completion greedily
    from transformers import AutoModelForCausalLM

    from grpo.rollout import HFGenerator, SamplingConfig

    reloaded = AutoModelForCausalLM.from_pretrained(result.model_dir)
    (ro,) = HFGenerator(reloaded, tok).generate([PROMPT], 1, SamplingConfig(temperature=0, max_tokens=20))
    assert ro.text == COMPLETION[0]["content"] and ro.finish_reason == "stop"


def test_from_a_saved_model_with_messages_rows(tmp_path):
    path = save_tiny_model(tmp_path / "base", hidden_size=64, num_heads=2, head_dim=32)
    rows = [{"messages": PROMPT + COMPLETION, "source": "x"}] * 8
    result = sft(str(path), rows, tmp_path / "out", max_steps=2, per_device_train_batch_size=4, logging_steps=1,
                 disable_tqdm=True)
    assert (result.model_dir / "config.json").exists() and (result.model_dir / "tokenizer.json").exists()
    assert len([r for r in result.log_history if "loss" in r]) == 2


def test_rows_without_completion_are_named():
    good = {"prompt": PROMPT, "completion": COMPLETION}
    with pytest.raises(ValueError, match=r"SFT row 2 has no completion \(completion=None\); prompt: .*qqqq"):
        to_sft_rows([good, good, {"prompt": PROMPT}])
    with pytest.raises(ValueError, match=r"SFT row 1 has no completion \(completion=''\)"):
        to_sft_rows([{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": ""}])
    with pytest.raises(ValueError, match="SFT row 0 has no completion"):
        to_sft_rows([{"prompt": PROMPT, "completion": [{"role": "assistant", "content": ""}]}])
    with pytest.raises(ValueError, match="SFT row 0: its 'messages' must end with a non-empty assistant turn"):
        to_sft_rows([{"messages": PROMPT}])
    with pytest.raises(ValueError, match="SFT row 0 has no 'prompt'"):
        to_sft_rows([{"text": "hello"}])
    assert to_sft_rows([{"messages": PROMPT + COMPLETION}]) == [{"prompt": PROMPT, "completion": COMPLETION}]


def test_settings_are_checked(tmp_path):
    from grpo.sft import sft_config

    with pytest.raises(ValueError, match="completion tokens only"):
        sft_config(tmp_path, completion_only_loss=False)
    with pytest.raises(ValueError, match="bad SFT setting.*learning_rat"):
        sft_config(tmp_path, learning_rat=1e-5)
    cfg = sft_config(tmp_path, learning_rate=1e-5)
    assert cfg.completion_only_loss is True and cfg.learning_rate == 1e-5
    if not torch.cuda.is_available():
        assert cfg.use_cpu and not cfg.bf16
