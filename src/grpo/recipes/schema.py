"""A recipe: model + data + rewards + GRPOConfig in one YAML file, for ``grpo train``.

```yaml
model: Qwen/Qwen2.5-0.5B                  # local folder, hub id, or "tiny" (built offline, see
                                          # below)
dataset: {name: gsm8k, split: train}      # a builder in grpo.recipes.datasets.DATASETS
eval_dataset: {name: gsm8k, split: test, limit: 500}
rewards:                                  # a name (math, format, code, language, countdown) or a
  - {name: math, weight: 1.0}             # dotted path to your own: mypkg.rewards:Brevity
  - {name: format, weight: 0.5}
lora: {r: 16, lora_alpha: 32, target_modules: all-linear}   # optional (peft LoraConfig kwargs)
trainer: {rollout: {num_generations: 8}, loss: {beta: 0.001}, ...}   # GRPOConfig sections
multiturn: {tools: [python], max_turns: 4}                  # optional: tool use (recipes.multiturn)
```

``model: tiny`` builds a tiny Llama with a character tokenizer (``grpo.tiny``) into
``<trainer.output_dir>/tiny_model``, warmed up on the CPU demo's task; its size and warm-up are
the optional ``tiny:`` section (:class:`TinyModelSpec`). Unknown keys are errors that name the
closest known key. A ``grpo`` stage of a pipeline (:mod:`grpo.pipeline.recipe`) is a
:class:`Recipe` too, with a name and the pipeline's data references. docs/recipes.md has it all.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from grpo.config import FLAT_KEYS, GRPOConfig, apply_overrides
from grpo.recipes.errors import RecipeError, did_you_mean
from grpo.recipes.multiturn import MultiTurnSettings


class DatasetSpec(BaseModel):
    """Where a recipe's rows come from: exactly one of ``name`` (a builder), ``path`` (your own
    file) or ``hub`` (a Hugging Face dataset); read by :func:`grpo.recipes.datasets.load_rows`,
    the pipeline's loader too."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="Builder name in grpo.recipes.datasets.DATASETS.")
    path: str | None = Field(
        None, description="Your own rows: a .jsonl, .json, .parquet or .csv file."
    )
    hub: str | None = Field(None, description="A Hugging Face Hub dataset id (owner/name).")
    config: str | None = Field(None, description="The hub dataset's configuration name.")
    split: str = Field("train", description="Split to build or load (builder, hub).")
    limit: int | None = Field(None, ge=1, description="Keep the first N rows.")
    columns: dict[str, str] | list[str] | None = Field(
        None,
        description="{old: new} renames columns (e.g. {answer: solution} for trl's "
        "accuracy_reward); a list keeps only those columns.",
    )
    prompt_column: str | None = Field(
        None, description="Build each row's chat 'prompt' from this column (the user turn)."
    )
    system: str | None = Field(
        None,
        description="System message of prompts built from prompt_column (default: the R1-Zero "
        "instruction; '' none).",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra builder arguments (checked), or datasets.load_dataset arguments.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        given = [k for k in ("name", "path", "hub") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"a dataset needs exactly one of name (a builder), path (your file) or hub "
                f"(a Hugging Face dataset), got {given or 'none'}"
            )
        if self.config is not None and self.hub is None:
            raise ValueError(f"config={self.config!r} is a hub dataset's; it needs hub:")
        if self.path is not None and "split" in self.model_fields_set:
            raise ValueError(
                f"split={self.split!r} does not apply to a file (path: {self.path}); "
                "a file is one split"
            )
        if self.system is not None and self.prompt_column is None:
            raise ValueError("system applies to prompts built from prompt_column; set both")
        return self

    def source(self) -> dict[str, Any]:
        """The spec as :func:`grpo.recipes.datasets.load_rows` reads it."""
        return {**self.model_dump(exclude={"name"}), "builder": self.name}


class RewardSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(
        description="A registry name (grpo.recipes.reward_registry) or 'package.module:Name'."
    )
    weight: float = Field(1.0, description="Weight in the total reward.")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Constructor arguments (checked)."
    )


class TinyModelSpec(BaseModel):
    """``model: tiny``: the CPU demo's model (examples/r1_zero_cpu.py), built offline."""

    model_config = ConfigDict(extra="forbid")
    hidden_size: int = Field(128, ge=8, description="Hidden size of the tiny Llama.")
    num_layers: int = Field(2, ge=1, description="Transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads.")
    head_dim: int = Field(
        32, ge=8, description="Head dimension (vLLM's CPU attention needs >= 32)."
    )
    seed: int = Field(0, description="Seed of the initial weights and of the warm-up.")
    warmup_steps: int = Field(
        800,
        ge=0,
        description="Supervised warm-up steps on the sloppy teacher of grpo.recipes.tiny_task "
        "(R1's cold start in miniature; 0 = random weights).",
    )


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(
        description="Model folder, hub id, or 'tiny' (built offline into the run folder)."
    )
    tiny: TinyModelSpec | None = Field(None, description="Size and warm-up of model: tiny.")
    dataset: DatasetSpec = Field(
        description="Training prompts: {name | path | hub, split, limit, columns, kwargs}."
    )
    eval_dataset: DatasetSpec | None = Field(
        None, description="Held-out prompts for evaluation (optional)."
    )
    rewards: list[RewardSpec] = Field(
        min_length=1, description="Reward functions: [{name, weight, kwargs}, ...]."
    )
    lora: dict[str, Any] | None = Field(
        None, description="peft LoraConfig arguments (None: full fine-tuning)."
    )
    trainer: GRPOConfig = Field(default_factory=GRPOConfig)
    multiturn: MultiTurnSettings | None = Field(
        None, description="Tool use during rollouts (grpo.recipes.multiturn; None: single turn)."
    )
    quick: dict[str, Any] = Field(
        default_factory=dict,
        description="The recipe's smoke form: dotted overrides ({trainer.max_steps: 2, ...}) "
        "that --quick applies before the command line's.",
    )

    @model_validator(mode="after")
    def _tiny_only_with_tiny(self) -> Recipe:
        if self.tiny is not None and self.model != "tiny":
            raise ValueError(
                f"the 'tiny' section applies to model: tiny, but model is "
                f"{self.model!r}; remove one of them"
            )
        return self

    @model_validator(mode="after")
    def _multiturn_fits_the_trainer(self) -> Recipe:
        mt, cfg = self.multiturn, self.trainer
        if mt is None:
            return self
        if mt.max_turn_tokens is not None and mt.max_turn_tokens > cfg.sampling.max_tokens:
            raise ValueError(
                f"multiturn.max_turn_tokens={mt.max_turn_tokens} exceeds "
                f"trainer.sampling.max_tokens={cfg.sampling.max_tokens}, the budget "
                "of a whole trajectory"
            )
        if cfg.rollout.backend not in ("hf", "vllm"):
            raise ValueError(
                f"multiturn runs on the trainer's own engine: trainer.rollout.backend"
                f"={cfg.rollout.backend!r} is not supported; use 'hf' or 'vllm'"
            )
        return self

    @classmethod
    def from_yaml(
        cls, path: str | Path, overrides: list[str] | None = None, quick: bool = False
    ) -> Recipe:
        """Load a recipe; overrides are ``key=value`` with dotted keys (``trainer.beta=0``,
        ``rewards.1.weight=0.5``). ``quick``: apply the recipe's own ``quick:`` overrides first
        (its smoke form; ``overrides`` still win). Mistakes raise :class:`RecipeError` naming
        the key."""
        import yaml

        path = Path(path)
        if not path.exists():
            raise RecipeError(f"recipe {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise RecipeError(f"recipe {path} is not valid YAML: {e}".replace("\n", " ")) from e
        if not isinstance(data, dict):
            raise RecipeError(
                f"recipe {path} must be a mapping (model:, dataset:, rewards:, trainer:)"
            )
        if quick:
            preset = data.get("quick") or {}
            if not isinstance(preset, dict) or not preset:
                raise RecipeError(
                    f"--quick: recipe {path} has no quick: section (a mapping of dotted "
                    "overrides, e.g. quick: {trainer.max_steps: 2}); give the overrides "
                    "on the command line instead"
                )
            quick_overrides = [f"{key}={json.dumps(value)}" for key, value in preset.items()]
        try:
            if quick:
                data = apply_overrides(data, quick_overrides)
            data = apply_overrides(data, overrides or [])
        except ValueError as e:
            where = " (in its quick: section)" if quick else ""
            raise RecipeError(f"{e}{where}") from e
        try:
            return cls(**data)
        except ValidationError as e:
            raise RecipeError(f"{path}: {explain(e, cls)}") from e


def _models_in(annotation: Any) -> list[type]:
    """The pydantic models (or stdlib dataclasses, like GRPOConfig's ``sampling``) in
    ``annotation``: one, or the members of a union (a pipeline's stages)."""
    if isinstance(annotation, type) and (
        issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
    ):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _model_in(annotation: Any) -> type | None:
    """The first of :func:`_models_in`, or None."""
    return next(iter(_models_in(annotation)), None)


def _field_names(model: type) -> list[str]:
    if dataclasses.is_dataclass(model):
        return [f.name for f in dataclasses.fields(model)]
    return [field.alias or name for name, field in model.model_fields.items()]


def _tag(model: type) -> Any:
    """The ``type`` a member of a tagged union is chosen by (``Literal["grpo"]``), or None."""
    field = getattr(model, "model_fields", {}).get("type")
    args = get_args(field.annotation) if field is not None else ()
    return args[0] if len(args) == 1 else None


def _model_at(root: type[BaseModel], loc: tuple) -> tuple[type | None, tuple]:
    """(The pydantic model (or dataclass) that holds the field at ``loc``, ``loc`` without the
    tags pydantic puts in it for tagged unions). List indices are skipped."""
    models: list[type] = [root]
    path = []
    for part in loc:
        if isinstance(part, int):
            path.append(part)
            continue
        tagged = [m for m in models if _tag(m) == part]
        if tagged:  # pydantic's loc names the union member: ('stages', 1, 'grpo', 'trainer')
            models = tagged
            continue
        path.append(part)
        found: list[type] = []
        for model in models:
            fields = model.model_fields if issubclass(model, BaseModel) else {}
            field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
            if field is not None:
                found = _models_in(field.annotation)
                break
        models = found
    return (models[0] if models else None), tuple(path)


_SECTION_TYPES = {_model_in(f.annotation) for f in GRPOConfig.model_fields.values()} - {None}


def explain(error: ValidationError, root: type[BaseModel] = Recipe) -> str:
    """A pydantic error as one line per problem (joined by '; '), with "did you mean" for unknown
    keys."""
    parts = []
    for e in error.errors():
        parent, loc = _model_at(root, e["loc"][:-1])
        loc += e["loc"][-1:]
        where = ".".join(str(p) for p in loc)
        if e["type"] in (
            "extra_forbidden",
            "unexpected_keyword_argument",
        ):  # the latter: a dataclass section
            key = str(e["loc"][-1])
            options = _field_names(parent) if parent is not None else []
            prefix = where[: -len(key)]
            hint = did_you_mean(key, options, prefix)
            if (
                parent is GRPOConfig and not hint
            ):  # a section's key at the root: name it with its section
                leaves = {name: f"{section}.{name}" for section, name in FLAT_KEYS.values()} | {
                    k: f"{section}.{name}" for k, (section, name) in FLAT_KEYS.items()
                }
                close = did_you_mean(key, leaves)
                hint = close and f"; did you mean '{prefix}{leaves[close.split(chr(39))[1]]}'?"
            # at the top of a recipe or a pipeline's grpo stage (a Recipe too)
            at_recipe = isinstance(parent, type) and issubclass(parent, Recipe)
            if at_recipe and (key in GRPOConfig.model_fields or key in FLAT_KEYS):
                section, name = FLAT_KEYS.get(key, (key, ""))
                nested = f"{prefix}trainer.{section}.{name}" if name else f"{prefix}trainer.{key}"
                hint = f"; did you mean '{nested}'? (GRPOConfig settings go under trainer:)"
            in_config = parent is GRPOConfig or parent in _SECTION_TYPES
            listing = (
                "grpo train --help-config lists them"
                if in_config
                else f"known: {', '.join(options)}"
                if options
                else ""
            )
            parts.append(f"unknown key {where!r}{hint}" + (f" ({listing})" if listing else ""))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = (
                f" (got {got!r})"
                if isinstance(got, (str, int, float, bool)) and e["type"] != "missing"
                else ""
            )
            parts.append(f"{where}: {msg}{shown}" if where else msg)
    return "; ".join(parts)
