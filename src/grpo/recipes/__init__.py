"""Recipes: R1-Zero / R1 configurations as YAML, their datasets and reward names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

RECIPE_DIR = Path(__file__).parent


def reward_registry() -> dict[str, Callable[..., Any]]:
    """Reward names usable in recipes."""
    from grpo import rewards
    from grpo.recipes.countdown import CountdownReward

    return {"math": rewards.MathReward, "format": rewards.FormatReward, "code": rewards.CodeReward,
            "language": rewards.LanguageReward, "countdown": CountdownReward}


def find_recipe(name_or_path: str) -> Path:
    """A YAML path, or the name of a packaged recipe (``r1_zero_gsm8k``)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    packaged = RECIPE_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if packaged.exists():
        return packaged
    known = sorted(x.stem for x in RECIPE_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"no recipe file {name_or_path!r}; packaged recipes: {known}")
