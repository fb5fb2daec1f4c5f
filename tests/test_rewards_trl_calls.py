"""The real ``trl.rewards`` functions and grpo rewards, called through CombinedReward exactly the
way trl's ``GRPOTrainer._calculate_rewards`` calls reward functions.

trl (1.16) calls every reward function with ``prompts``, ``completions`` (chat messages
``[{"role": "assistant", "content": text}]`` for chat prompts, plain strings for text prompts),
``completion_ids`` (token-id lists), every dataset column but the prompt (aligned per
completion), ``trainer_state``, ``log_extra`` and ``log_metric``. grpo adds ``truncated``.

The reference for the totals is trl's own combination, computed here by calling the same trl
functions directly: ``nansum_k(w_k * r_k)`` with None as NaN, NaN where every r_k is None.
"""

from __future__ import annotations

import math

import pytest
import transformers  # required dependencies (pyproject): a broken install fails, never skips
import trl.rewards as trl_rewards

from grpo.rewards import (
    ERROR,
    NOT_APPLICABLE,
    OK,
    CombinedReward,
    CosineLengthReward,
    MathReward,
    OverlongPenalty,
    Reward,
)


SOLUTIONS = [r"\frac{1}{3}", r"\frac{1}{3}", "not latex at all {", "7"]  # row 2: unparseable gold
TEXTS = [
    r"<think>easy</think> so \boxed{\frac{1}{3}}",  # correct, formatted
    r"\boxed{\frac{1}{2}}",  # wrong, no think block
    r"<think>hm</think> \boxed{3}",  # gold unparseable: accuracy_reward returns None
    r"<think>a</think><think>b</think> \boxed{7}",  # correct, two think blocks: bad format
]
IDS = [[5] * 3, [1, 2, 1, 2, 1, 2, 1, 2], [9] * 12, [4, 5, 6, 7, 8, 9]]
TRUNCATED = [False, False, True, False]


def trl_call(chat: bool, **extra):
    """The keyword arguments trl passes a reward function, for chat or text prompts."""
    if chat:
        prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(len(TEXTS))]
        completions = [[{"role": "assistant", "content": t}] for t in TEXTS]
    else:
        prompts = [f"q{i}" for i in range(len(TEXTS))]
        completions = list(TEXTS)
    logged_extra, logged_metric = {}, {}
    return dict(
        prompts=prompts, completions=completions, completion_ids=[list(i) for i in IDS],
        solution=list(SOLUTIONS), trainer_state=transformers.TrainerState(global_step=3),
        log_extra=lambda col, vals: logged_extra.setdefault(col, []).extend(vals),
        log_metric=lambda name, v: logged_metric.__setitem__(name, v), **extra,
    )


def trl_nansum(funcs, weights, kwargs):
    """trl's combination of the same functions, called directly (the reference)."""
    columns = [[math.nan if v is None else v for v in f(**kwargs)] for f in funcs]
    totals = []
    for row in zip(*columns, strict=True):
        if all(math.isnan(v) for v in row):
            totals.append(None)
        else:
            pairs = zip(weights, row, strict=True)
            totals.append(sum(w * v for w, v in pairs if not math.isnan(v)))
    return totals


def trl_functions():
    return [
        trl_rewards.accuracy_reward,
        trl_rewards.think_format_reward,
        trl_rewards.reasoning_accuracy_reward,
        trl_rewards.get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4),
        trl_rewards.get_repetition_penalty_reward(ngram_size=2, max_penalty=-1.0),
        trl_rewards.get_cosine_scaled_reward(max_len=20),
    ]


def test_real_trl_functions_with_chat_completions_match_trls_own_sum():
    funcs, weights = trl_functions(), [1.0, 0.5, 0.25, 1.0, 0.3, 2.0]
    combo = CombinedReward(funcs, weights=weights)
    out = combo.breakdown(**trl_call(chat=True, truncated=list(TRUNCATED)))
    expected = trl_nansum(funcs, weights, trl_call(chat=True))
    assert out.values == pytest.approx(expected)
    # accuracy_reward's None on the unparseable gold: "does not apply", left out of the sum
    acc = out.components["accuracy_reward"]
    assert [r.status for r in acc] == [OK, OK, NOT_APPLICABLE, OK]
    assert [r.value for r in acc] == [1.0, 0.0, None, 1.0]
    assert out.total[2].status == OK
    assert out.component_values("think_format_reward") == [1.0, 0.0, 1.0, 0.0]
    assert out.component_values("soft_overlong_punishment_reward") == [0.0, -0.5, -1.0, 0.0]
    # accuracy_reward logs its columns through log_extra: kept per item for completions.jsonl
    assert out.extra["solution"] == SOLUTIONS
    assert out.item_record(2)["extra"]["gold_parsed"] == "[unparseable]"


def test_real_trl_functions_with_text_completions():
    """trl's accuracy and format functions index ``completion[0]["content"]``: on plain-string
    completions they raise (in trl too). Here that is status "error" on every item, naming the
    function, and the token-id functions still score."""
    funcs = trl_functions()
    out = CombinedReward(funcs).breakdown(**trl_call(chat=False, truncated=list(TRUNCATED)))
    for name in ("accuracy_reward", "think_format_reward", "reasoning_accuracy_reward",
                 "cosine_scaled_reward"):
        res = out.components[name]
        assert all(r.status == ERROR for r in res), name
        assert f"reward function {name!r} raised TypeError" in res[0].reason
    overlong = trl_rewards.get_soft_overlong_punishment(10, 4)(completion_ids=IDS)
    assert out.component_values("soft_overlong_punishment_reward") == overlong
    assert out.values == [None] * 4  # a component that applies could not be scored
    ok = CombinedReward(funcs[3:5]).breakdown(**trl_call(chat=False))
    assert ok.values == pytest.approx(trl_nansum(funcs[3:5], [1.0, 1.0], trl_call(chat=False)))


def test_plain_functions_receive_exactly_trls_keywords():
    seen = []

    def spy(completions, **kwargs):
        seen.append(set(kwargs))
        return [0.0] * len(completions)

    def wants_truncation(completions, truncated, **kwargs):
        seen.append(list(truncated))
        return [-1.0 if t else 0.0 for t in truncated]

    combo = CombinedReward([spy, wants_truncation])
    out = combo.breakdown(**trl_call(chat=True, truncated=list(TRUNCATED)))
    assert seen[0] == {"prompts", "completion_ids", "solution", "trainer_state", "log_extra",
                       "log_metric"}  # trl's keywords; grpo's `truncated` only when asked for
    assert seen[1] == TRUNCATED and out.values == [0.0, 0.0, -1.0, 0.0]


def test_grpo_length_rewards_use_trls_token_ids_and_the_truncation_flag():
    overlong = OverlongPenalty(max_length=10, cache_length=4)
    cosine = CosineLengthReward(MathReward(answer_key="solution", parallel=False), max_length=20)
    call = trl_call(chat=True, truncated=list(TRUNCATED))
    out = CombinedReward([overlong, cosine]).breakdown(**call)
    # untruncated rows: DAPO Eq. 13 on len(completion_ids), as trl's own function computes it
    trl_overlong = trl_rewards.get_soft_overlong_punishment(10, 4)(completion_ids=IDS)
    got = out.component_values("overlong_penalty")
    assert [got[i] for i in (0, 1, 3)] == [trl_overlong[i] for i in (0, 1, 3)]
    assert got[2] == -1.0  # truncated: longer than the generation limit
    # cosine: trl's get_cosine_scaled_reward has the same schedule below max_len (rows 0, 1, 3)
    trl_cos = trl_rewards.get_cosine_scaled_reward(max_len=20)(**trl_call(chat=True))
    cos = out.components["cosine_length_reward"]
    assert [cos[i].value for i in (0, 1, 3)] == pytest.approx([trl_cos[i] for i in (0, 1, 3)])
    assert cos[2].value == cosine.r_exceed and "truncated" in cos[2].reason


class SeesTrainerFields(Reward):
    """A grpo Reward reading the per-item fields a trainer passes."""

    def score(self, completion, **example):
        assert not set(example) & {"trainer_state", "log_extra", "log_metric"}  # batch-level
        return len(example["completion_ids"]) + 100 * example["truncated"] + 0 * len(
            example["solution"] + example["prompt"][0]["content"])


def test_grpo_rewards_get_completion_ids_and_truncated_per_item():
    # (through the pool: tests/test_rewards_pool.py; a worker importing this module would
    # import trl and transformers)
    r = SeesTrainerFields()
    out = CombinedReward([r]).breakdown(**trl_call(chat=True, truncated=list(TRUNCATED)))
    assert out.values == [3.0, 8.0, 112.0, 6.0]
