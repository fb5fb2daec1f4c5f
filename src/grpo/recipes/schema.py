"""A recipe: model + data + rewards + GRPOConfig in one YAML file, for ``grpo train``.

```yaml
model: Qwen/Qwen2.5-0.5B                  # path or hub id
dataset: {name: gsm8k, split: train}      # a builder from grpo.recipes.datasets
eval_dataset: {name: gsm8k, split: test, limit: 500}
rewards:                                  # names from grpo.recipes.REWARDS, with weights and kwargs
  - {name: math, weight: 1.0}
  - {name: format, weight: 0.5}
lora: {r: 16, lora_alpha: 32, target_modules: all-linear}   # optional (peft LoraConfig kwargs)
trainer: {num_generations: 8, beta: 0.001, ...}              # GRPOConfig fields
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from grpo.config import GRPOConfig, apply_overrides


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Builder name in grpo.recipes.datasets.DATASETS.")
    split: str = Field("train", description="Split to build.")
    limit: int | None = Field(None, ge=1, description="Keep the first N rows.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra builder arguments.")


class RewardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Reward name in grpo.recipes.REWARDS.")
    weight: float = Field(1.0, description="Weight in the total reward.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Constructor arguments.")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="Model path or hub id.")
    dataset: DatasetSpec
    eval_dataset: DatasetSpec | None = None
    rewards: list[RewardSpec] = Field(min_length=1)
    lora: dict[str, Any] | None = Field(None, description="peft LoraConfig arguments (None: full fine-tuning).")
    trainer: GRPOConfig = Field(default_factory=GRPOConfig)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Recipe:
        """Load a recipe; overrides are ``key=value`` with dotted keys (``trainer.beta=0``)."""
        import yaml

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"recipe {path} not found")
        data = yaml.safe_load(path.read_text()) or {}
        return cls(**apply_overrides(data, overrides or []))
