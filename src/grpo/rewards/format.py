"""Format reward: the DeepSeek-R1-Zero template ``<think>...</think><answer>...</answer>``.

DeepSeek-R1 (arXiv:2501.12948, §2.2.2): "a format reward model that enforces the model to put
its thinking process between '<think>' and '</think>' tags", with the training template of
Table 1 asking for "<think> reasoning process here </think> <answer> answer here </answer>".

* strict (default): 1.0 iff the whole completion is exactly one think block followed by one
  non-empty answer block (whitespace allowed around and between them; no other text, no
  nested or repeated tags), else 0.0.
* ``partial=True``: 0.25 for each of the four tags that occurs exactly once, so a policy that
  gets the template partly right is told so (the tag-count shaping popularised by open-r1).

Many prompts end with ``<think>`` already (R1's template puts it in the assistant turn); pass
``think_in_prompt=True`` and the completion is checked as if it began with ``<think>``.
"""

from __future__ import annotations

from typing import Any

from grpo.rewards.base import Reward

TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def follows_template(text: str) -> bool:
    """Exactly ``<think>...</think><answer>...</answer>`` with a non-empty answer, whitespace
    allowed only around the blocks. Linear time (a backtracking regex is quadratic on
    adversarial tag soup)."""
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    t0, t1, a0, a1 = (text.index(tag) for tag in TAGS)
    if not t0 < t1 < a0 < a1:
        return False
    between = (text[:t0], text[t1 + len("</think>") : a0], text[a1 + len("</answer>") :])
    return all(not s.strip() for s in between) and bool(text[a0 + len("<answer>") : a1].strip())


class FormatReward(Reward):
    """R1-Zero template reward: strict 0/1, or 0.25 per well-formed tag with ``partial=True``.

    >>> FormatReward().score("<think>2+2=4</think>\\n<answer>4</answer>")
    1.0
    >>> FormatReward().score("<think>2+2=4</think> so <answer>4</answer>")
    0.0
    >>> FormatReward(partial=True).score("<think>2+2=4</think> so 4")
    0.5
    """

    def __init__(self, *, partial: bool = False, think_in_prompt: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.partial = partial
        self.think_in_prompt = think_in_prompt

    def score(self, completion: str, **example: Any) -> float:
        if self.think_in_prompt:
            completion = "<think>" + completion
        if self.partial:
            return sum(0.25 for tag in TAGS if completion.count(tag) == 1)
        return 1.0 if follows_template(completion) else 0.0
