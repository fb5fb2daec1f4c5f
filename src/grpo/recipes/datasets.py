"""Dataset builders for recipes. Every row: ``prompt`` (chat messages) + reward columns.

The R1-Zero template (DeepSeek-R1 arXiv:2501.12948, Table 1) is the system instruction; the
question goes in the user turn, so the tokenizer's own chat template formats it.

A recipe's ``kwargs`` for a builder are checked against its parameters (:func:`build_dataset`):
a misspelt option is an error naming the closest one, never silently ignored.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from grpo.recipes.errors import RecipeError, did_you_mean

R1_ZERO_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves "
    "it. The assistant first thinks about the reasoning process in the mind and then provides the "
    "user with the answer. The reasoning process and answer are enclosed within <think> </think> "
    "and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)


def r1_zero_prompt(question: str, system: str = R1_ZERO_SYSTEM) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def gsm8k(split: str = "train") -> list[dict]:
    """GSM8K (Cobbe et al. 2021) from the HF hub; gold answer = the number after '####'."""
    from datasets import load_dataset

    ds = load_dataset("openai/gsm8k", "main", split=split)
    return [
        {
            "prompt": r1_zero_prompt(r["question"]),
            "answer": re.sub(r"[,\s]", "", r["answer"].split("####")[-1]),
        }
        for r in ds
    ]


def _countdown_options() -> set[str]:
    import dataclasses

    try:
        from reasoning_gym.factory import DATASETS as RG
    except ImportError as e:
        raise RecipeError(
            "dataset 'countdown' needs reasoning-gym: pip install 'grpo-r1[recipes]' "
            "(or pip install reasoning-gym)"
        ) from e

    return {f.name for f in dataclasses.fields(RG["countdown"][1])} - {"size", "seed"}


def countdown(
    split: str = "train", size: int = 10_000, seed: int = 0, **options: Any
) -> list[dict]:
    """Countdown (TinyZero's task) from reasoning-gym's generator; scored by CountdownReward.
    ``options``: reasoning-gym's ``CountdownConfig`` fields (``min_numbers``, ``max_target``,
    ...)."""
    import reasoning_gym

    data = reasoning_gym.create_dataset(
        "countdown", size=size, seed=seed + (0 if split == "train" else 1), **options
    )
    return [
        {
            "prompt": r1_zero_prompt(
                x["question"] + " Give the expression in <answer> </answer> tags."
            ),
            "numbers": list(x["metadata"]["numbers"]),
            "target": int(x["metadata"]["target"]),
        }
        for x in data
    ]


def tiny_arithmetic(split: str = "train", size: int | None = None, seed: int = 0) -> list[dict]:
    """The CPU demo's synthetic task (see grpo.recipes.tiny_task); "test" = the held-out
    problems."""
    from grpo.recipes.tiny_task import make_problems

    return make_problems(size=size, seed=seed, split=split)


DATASETS: dict[str, Callable[..., list[dict]]] = {
    "gsm8k": gsm8k,
    "countdown": countdown,
    "tiny_arithmetic": tiny_arithmetic,
}
HUB_DATASETS: dict[str, str] = {"gsm8k": "openai/gsm8k"}
"""Builders that download from the Hugging Face Hub, and the dataset repo they need."""


EXTRA_OPTIONS: dict[str, Callable[[], set[str]]] = {"countdown": _countdown_options}
"""Options a builder passes on through ``**options`` (checked like its own parameters)."""


def check_dataset(name: str, kwargs: dict[str, Any]) -> None:
    """Raise :class:`RecipeError` for an unknown builder or an option it does not take."""
    if name not in DATASETS:
        raise RecipeError(
            f"unknown dataset {name!r}{did_you_mean(name, DATASETS)}; known: {', '.join(DATASETS)}"
        )
    params = inspect.signature(DATASETS[name]).parameters.values()
    options = [p.name for p in params if p.name != "split" and p.kind != p.VAR_KEYWORD]
    options += sorted(EXTRA_OPTIONS[name]()) if name in EXTRA_OPTIONS else []
    for key in kwargs:
        if key not in options:
            raise RecipeError(
                f"dataset {name!r} has no option {key!r}{did_you_mean(key, options)} "
                f"(options: {', '.join(options) or 'none'})"
            )


def build_dataset(
    name: str, split: str = "train", limit: int | None = None, **kwargs: Any
) -> list[dict]:
    """Rows of builder ``name``; ``kwargs`` are checked first (:func:`check_dataset`)."""
    check_dataset(name, kwargs)
    try:
        rows = DATASETS[name](split=split, **kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, RecipeError):
            raise
        raise RecipeError(f"dataset {name!r} (split {split!r}, kwargs {kwargs}): {e}") from e
    return rows[:limit] if limit else rows
