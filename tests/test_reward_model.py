"""RewardModelReward with a tiny sequence-classification model built offline."""

import pytest
import torch

from grpo.rewards import CombinedReward, FormatReward, ScoreResult
from grpo.rewards.reward_model import RewardModelReward
from grpo.tiny import build_char_tokenizer


def _tiny_classifier(path, num_labels=1):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = build_char_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=64,
                         pad_token_id=tok.pad_token_id, num_labels=num_labels)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    return _tiny_classifier(tmp_path_factory.mktemp("rm"))


PROMPT = [{"role": "user", "content": "2+2=?"}]
COMPLETIONS = ["<think>2+2=4</think><answer>4</answer>", "4", "<answer>5</answer>", "no idea at all, sorry"]


def test_batched_scores_equal_one_at_a_time(rm_path):
    rm = RewardModelReward(rm_path, batch_size=3)
    batched = rm.score_batch(COMPLETIONS, [{"prompt": PROMPT}] * 4)
    single = [rm.score_batch([c], [{"prompt": PROMPT}])[0] for c in COMPLETIONS]
    assert all(r.scored for r in batched)
    assert [r.value for r in batched] == pytest.approx([r.value for r in single], abs=1e-5)
    assert len({round(r.value, 6) for r in batched}) == 4  # a real model: different inputs, different scores


def test_score_is_the_model_logit_at_the_last_token(rm_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = RewardModelReward(rm_path)
    tok = AutoTokenizer.from_pretrained(rm_path)
    model = AutoModelForSequenceClassification.from_pretrained(rm_path)
    text = tok.apply_chat_template(PROMPT + [{"role": "assistant", "content": COMPLETIONS[0]}], tokenize=False)
    with torch.no_grad():
        expected = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    assert rm.score(COMPLETIONS[0], prompt=PROMPT) == pytest.approx(expected, abs=1e-5)


def test_beside_rule_rewards_in_combined_reward(rm_path):
    rm = RewardModelReward(rm_path)
    combo = CombinedReward([FormatReward(), rm], weights=[1.0, 0.5])
    out = combo.breakdown(prompts=[PROMPT] * 2, completions=COMPLETIONS[:2])
    fmt, rm_values = out.component_values("format_reward"), out.component_values("reward_model")
    assert fmt == [1.0, 0.0]
    assert out.values == pytest.approx([f + 0.5 * r for f, r in zip(fmt, rm_values)])
    # trl's calling convention works too
    assert rm(prompts=[PROMPT], completions=[[{"role": "assistant", "content": "4"}]]) == \
        pytest.approx([rm_values[1]], abs=1e-5)


def test_unscorable_items_say_why(rm_path):
    rm = RewardModelReward(rm_path, max_length=30)
    results = rm.score_batch(["4", "x" * 100, "4"], [{"prompt": PROMPT}, {"prompt": PROMPT}, {}])
    assert results[0].scored
    assert results[1] == ScoreResult.unscorable(results[1].reason) and "max_length=30" in results[1].reason
    assert "no prompt" in results[2].reason


def test_text_prompts_and_label_choice(tmp_path):
    path = _tiny_classifier(tmp_path / "rm2", num_labels=2)
    with pytest.raises(ValueError, match="2 output labels"):
        RewardModelReward(path)
    rm0, rm1 = RewardModelReward(path, label=0), RewardModelReward(path, label=1)
    a, b = rm0.score("4", prompt="2+2="), rm1.score("4", prompt="2+2=")
    assert a != b
