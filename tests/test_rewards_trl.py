"""Interop with the real trl: grpo rewards inside trl.GRPOTrainer, trl-style functions in grpo.

One GRPOTrainer step on a tiny random Llama (offline, built by grpo.tiny) with a conversational
dataset: trl calls our rewards with its own keyword arguments (prompts, completions as chat
messages, completion_ids, dataset columns, trainer_state, log_extra, log_metric).
"""

from __future__ import annotations

import pytest
import trl  # a required dependency (pyproject): a broken install fails here, it is not skipped

from grpo.rewards import (
    OK,
    CombinedReward,
    FormatReward,
    MathReward,
    OverlongPenalty,
    as_reward,
)

MAX_COMPLETION = 12
CAPTURED: list[dict] = []


def spy(completions, completion_ids, **kwargs):
    """A plain trl-style reward function (open-r1 shape) that records what trl passed."""
    CAPTURED.append({"completions": completions, "completion_ids": completion_ids, **kwargs})
    return [float(len(ids)) for ids in completion_ids]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.tiny import save_tiny_model

    path = save_tiny_model(tmp_path_factory.mktemp("tiny"))
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": f"{i}+1="}], "answer": str(i + 1)}
            for i in range(4)
        ]
    )
    rewards = {
        "format": FormatReward(),
        "math": MathReward(),
        "overlong": OverlongPenalty(max_length=MAX_COMPLETION, cache_length=6),
    }
    args = trl.GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("out")),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=MAX_COMPLETION,
        max_steps=1,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    trainer = trl.GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=data,
        reward_funcs=[*rewards.values(), spy],
        args=args,
    )
    trainer.train()
    return trainer, rewards


def test_trl_names_our_rewards_by_their_metric_key():
    from trl.trainer.utils import get_callable_name

    assert get_callable_name(MathReward()) == "math_reward"
    assert get_callable_name(FormatReward(name="fmt")) == "fmt"


def test_grpo_rewards_run_inside_trl_and_are_logged(trained):
    trainer, rewards = trained
    logs = trainer.state.log_history[0]
    for name in ("format_reward", "math_reward", "overlong_penalty", "spy"):
        assert f"rewards/{name}/mean" in logs
    assert logs["math_reward/unscorable_frac"] == 0.0  # our log_metric hook went through trl
    math_results = rewards["math"].last_results
    assert len(math_results) == 4 and all(r.status == OK for r in math_results)  # pool in trl


def test_trl_passes_chat_completions_ids_and_columns(trained):
    call = CAPTURED[-1]
    assert isinstance(call["completions"][0], list)  # conversational: chat messages
    # one prompt x 4 generations per step: trl repeats the prompt's column for each completion
    assert len(call["answer"]) == 4 and len(set(call["answer"])) == 1
    assert call["answer"][0] in {"1", "2", "3", "4"}
    assert {"prompts", "trainer_state", "log_metric", "log_extra"} <= set(call)
    assert all(len(ids) <= MAX_COMPLETION for ids in call["completion_ids"])


def test_overlong_penalty_used_trls_token_ids(trained):
    _, rewards = trained
    lengths = [len(ids) for ids in CAPTURED[-1]["completion_ids"]]
    expected = [0.0 if n <= 6 else (6 - n) / 6 for n in lengths]  # DAPO Eq. 13, L=12, cache 6
    assert [r.value for r in rewards["overlong"].last_results] == pytest.approx(expected)


def test_trl_style_function_in_a_grpo_combination():
    combo = CombinedReward([FormatReward(), as_reward(spy)], weights=[1.0, 0.1])
    chat = [[{"role": "assistant", "content": "<think>a</think><answer>1</answer>"}]]
    out = combo.breakdown(
        prompts=[[{"role": "user", "content": "q"}]], completions=chat, completion_ids=[[1, 2, 3]]
    )
    assert out.values == [pytest.approx(1.0 + 0.1 * 3)]
