"""Dataset builders for recipes. Every row: ``prompt`` (chat messages) + reward columns.

The R1-Zero template (DeepSeek-R1 arXiv:2501.12948, Table 1) is the system instruction; the
question goes in the user turn, so the tokenizer's own chat template formats it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

R1_ZERO_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>."
)


def r1_zero_prompt(question: str, system: str = R1_ZERO_SYSTEM) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def gsm8k(split: str = "train", **_: Any) -> list[dict]:
    """GSM8K (Cobbe et al. 2021) from the HF hub; gold answer = the number after '####'."""
    from datasets import load_dataset

    ds = load_dataset("openai/gsm8k", "main", split=split)
    return [{"prompt": r1_zero_prompt(r["question"]),
             "answer": re.sub(r"[,\s]", "", r["answer"].split("####")[-1])} for r in ds]


def countdown(split: str = "train", size: int = 10_000, seed: int = 0, **kw: Any) -> list[dict]:
    """Countdown (TinyZero's task) from reasoning-gym's generator; scored by CountdownReward."""
    import reasoning_gym

    data = reasoning_gym.create_dataset("countdown", size=size, seed=seed + (0 if split == "train" else 1), **kw)
    return [{"prompt": r1_zero_prompt(x["question"] + " Give the expression in <answer> </answer> tags."),
             "numbers": list(x["metadata"]["numbers"]), "target": int(x["metadata"]["target"])} for x in data]


def tiny_arithmetic(split: str = "train", size: int | None = None, seed: int = 0, **_: Any) -> list[dict]:
    """The CPU demo's synthetic task (see grpo.recipes.tiny_task); "test" = the held-out problems."""
    from grpo.recipes.tiny_task import make_problems

    return make_problems(size=size, seed=seed, split=split)


DATASETS: dict[str, Callable[..., list[dict]]] = {
    "gsm8k": gsm8k, "countdown": countdown, "tiny_arithmetic": tiny_arithmetic,
}


def build_dataset(name: str, split: str = "train", limit: int | None = None, **kwargs: Any) -> list[dict]:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    rows = DATASETS[name](split=split, **kwargs)
    return rows[:limit] if limit else rows
