"""A multi-stage pipeline recipe (``grpo pipeline RECIPE.yaml``): schema and up-front checks.

DeepSeek-R1 (arXiv:2501.12948 sec. 2.3) chains cold-start SFT -> reasoning RL -> rejection
sampling -> SFT -> all-scenario RL; its distilled models are one SFT (sec. 2.4). A recipe lists
such stages; each names where its model and data come from, and a later stage refers to an
earlier stage's output *by the stage's name*::

    output_dir: runs/r1_tiny
    model: path/or/hub-id                     # the starting model, referred to as {from: base}
    stages:
      - {name: cold_start, type: sft, data: {builder: tiny_arithmetic}, sft: {learning_rate: 1.0e-3}}
      - name: reasoning_rl
        type: grpo                            # model omitted: the previous stage's model
        data: {builder: tiny_arithmetic, limit: 256}
        rewards: [{name: math}, {name: format, weight: 0.1}]
        trainer: {max_steps: 20, num_generations: 8}
      - {name: rejection, type: sample, data: {builder: tiny_arithmetic}, rewards: [{name: math}],
         n: 8, rl_pass_rate: [0.2, 0.8]}
      - {name: sft_2, type: sft, model: {from: base}, data: {from: rejection}}   # output "sft"
      - {name: final_rl, type: grpo, data: {from: rejection, output: rl_prompts}, rewards: [{name: math}]}
      - {name: student_opd, type: grpo, model: path/of/a/small/model, teacher: {from: final_rl},
         data: {builder: tiny_arithmetic}, rewards: [{name: math, weight: 0.0}]}   # on-policy distillation

A ``grpo`` stage's ``teacher`` (a path or ``{from: stage}``) makes it on-policy distillation
(:mod:`grpo.distill`). Outputs: ``sft`` and ``grpo`` stages produce a ``model``; ``sample``
stages produce the dataset ``sft`` (kept rows) and, with ``rl_pass_rate``, ``rl_prompts``. :func:`check_recipe`
rejects, before anything runs, a reference to an output that no earlier stage produces, an
unknown reward name, and settings their config classes refuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from grpo.pipeline.keep import KeepRule, check_verifiers
from grpo.recipes.schema import RewardSpec

BASE = "base"
OUTPUTS = {"sft": {"model"}, "grpo": {"model"}, "sample": {"sft", "rl_prompts"}}


class Ref(BaseModel):
    """An earlier stage's output: ``{from: stage_name, output: name}``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    stage: str = Field(alias="from", description="Name of an earlier stage, or 'base' for the recipe's model.")
    output: str | None = Field(None, description="Which output (default: 'model', or a sample stage's 'sft').")


class DataSpec(BaseModel):
    """Where a stage's rows come from: exactly one of ``from``, ``builder``, ``hub``, ``path``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    stage: str | None = Field(None, alias="from", description="An earlier stage's dataset output.")
    output: str | None = Field(None, description="Which dataset of that stage (default 'sft').")
    builder: str | None = Field(None, description="A builder of grpo.recipes.datasets (e.g. tiny_arithmetic, gsm8k).")
    hub: str | None = Field(None, description="A Hugging Face hub dataset id.")
    path: str | None = Field(None, description="A local JSONL file.")
    config: str | None = Field(None, description="Hub dataset configuration name.")
    split: str = Field("train", description="Split (builder, hub).")
    limit: int | None = Field(None, ge=1, description="Keep the first N rows.")
    columns: list[str] | None = Field(
        None, description="Keep only these columns (before anything is loaded into memory, for hub data).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra builder / load_dataset arguments.")
    prompt_column: str | None = Field(
        None, description="Build each row's 'prompt' from this column: the user turn, after `system`.")
    system: str | None = Field(
        None, description="System message of built prompts (default: the R1-Zero template instruction; '' none).")

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [k for k in ("stage", "builder", "hub", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"data needs exactly one of from / builder / hub / path, got {given or 'none'}")
        if self.output is not None and self.stage is None:
            raise ValueError("data.output only goes with data.from")
        return self


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$", description="Unique stage name (a folder name).")
    model: str | Ref | None = Field(None, description="Path / hub id, or {from: stage}; default: the last "
                                                      "model produced before this stage (else the recipe's).")
    data: DataSpec


class SFTStage(_Stage):
    """Cold start / distillation / SFT on rejection-sampled rows (:func:`grpo.pipeline.sft`)."""

    type: Literal["sft"]
    sft: dict[str, Any] = Field(default_factory=dict, description="trl.SFTConfig fields.")


class GRPOStage(_Stage):
    """Reasoning / all-scenario RL with ``grpo.GRPOTrainer``."""

    type: Literal["grpo"]
    eval_data: DataSpec | None = None
    rewards: list[RewardSpec] = Field(min_length=1)
    teacher: str | Ref | None = Field(
        None, description="On-policy distillation: the teacher model (path / hub id, or {from: stage}); "
                          "sets trainer.teacher_model (grpo.distill).")
    lora: dict[str, Any] | None = Field(None, description="peft LoraConfig arguments.")
    trainer: dict[str, Any] = Field(default_factory=dict, description="GRPOConfig fields (output_dir is set).")


class SampleStage(_Stage):
    """Rejection sampling (:func:`grpo.pipeline.rejection_sample`)."""

    type: Literal["sample"]
    rewards: list[RewardSpec] = Field(min_length=1)
    n: int = Field(8, ge=1, description="Samples per prompt.")
    sampling: dict[str, Any] = Field(default_factory=dict, description="grpo.rollout.SamplingConfig fields.")
    keep: KeepRule = Field(default_factory=KeepRule)
    rl_pass_rate: tuple[float, float] | None = Field(
        None, description="Also output the prompts with low < pass rate < high.")
    batch_size: int = Field(16, ge=1, description="Prompts per generate call (the resume unit).")
    seed: int = 0
    rollout: Literal["hf", "vllm"] = Field("hf", description="Generator: transformers or a vLLM engine.")
    vllm: dict[str, Any] = Field(default_factory=dict, description="grpo.rollout.VLLMGenerator arguments.")

    @model_validator(mode="after")
    def _band(self) -> SampleStage:
        if self.rl_pass_rate is not None and not 0 <= self.rl_pass_rate[0] < self.rl_pass_rate[1] <= 1:
            raise ValueError(f"rl_pass_rate must be [low, high] with 0 <= low < high <= 1, got {self.rl_pass_rate}")
        return self


Stage = Annotated[SFTStage | GRPOStage | SampleStage, Field(discriminator="type")]


class PipelineRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    output_dir: str = Field("runs/pipeline", description="Run folder.")
    model: str = Field(description="The starting model (path or hub id), referred to as {from: base}.")
    stages: list[Stage] = Field(min_length=1)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> PipelineRecipe:
        import yaml

        from grpo.config import apply_overrides

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"pipeline recipe {path} not found")
        return cls(**apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides or []))


def model_source(recipe: PipelineRecipe, index: int) -> str | Ref:
    """Stage ``index``'s model: as written, or the last model produced before it, or the base."""
    stage = recipe.stages[index]
    if stage.model is not None:
        return stage.model
    for earlier in reversed(recipe.stages[:index]):
        if "model" in OUTPUTS[earlier.type]:
            return Ref(**{"from": earlier.name})
    return Ref(**{"from": BASE})


def build_rewards(specs: list[RewardSpec]) -> tuple[list[Any], list[float]]:
    """Reward objects (a ``grpo.recipes.reward_registry`` name or ``package.module:Name``, as in
    ``grpo train`` recipes) and their weights."""
    from grpo.recipes import resolve_reward

    rewards = []
    for spec in specs:
        make = resolve_reward(spec.name)
        try:
            rewards.append(make(**spec.kwargs) if isinstance(make, type) else make)
        except TypeError as e:
            raise ValueError(f"reward {spec.name!r}: bad kwargs {spec.kwargs}: {e}") from None
    return rewards, [spec.weight for spec in specs]


def check_recipe(recipe: PipelineRecipe) -> None:
    """Every reference names an output an earlier stage produces; every setting is valid.

    Raises ValueError listing every problem found (nothing has run yet)."""
    problems: list[str] = []
    produced: dict[str, set[str]] = {BASE: {"model"}}
    for i, stage in enumerate(recipe.stages):
        where = f"stage {i + 1} ({stage.name!r})"
        if stage.name in produced:
            problems.append(f"{where}: the name {stage.name!r} is used twice (or is reserved)")
        src = model_source(recipe, i)
        if isinstance(src, Ref):
            problems += _check_ref(where, "model", src.stage, src.output or "model", produced, recipe)
        teacher = getattr(stage, "teacher", None)
        if isinstance(teacher, Ref):
            problems += _check_ref(where, "teacher", teacher.stage, teacher.output or "model", produced, recipe)
        if teacher is not None and "teacher_model" in getattr(stage, "trainer", {}):
            problems.append(f"{where}: give the teacher once, as `teacher` (not also trainer.teacher_model)")
        for key in ("data", "eval_data"):
            spec = getattr(stage, key, None)
            if spec is not None and spec.stage is not None:
                problems += _check_ref(where, key, spec.stage, spec.output or "sft", produced, recipe)
        problems += [f"{where}: {p}" for p in _check_settings(stage)]
        outputs = set(OUTPUTS[stage.type])
        if isinstance(stage, SampleStage) and stage.rl_pass_rate is None:
            outputs.discard("rl_prompts")
        produced[stage.name] = outputs
    if problems:
        raise ValueError("pipeline recipe is invalid:\n  " + "\n  ".join(problems))


def _check_ref(where: str, key: str, stage: str, output: str, produced: dict[str, set[str]],
               recipe: PipelineRecipe) -> list[str]:
    if stage not in produced:
        later = [s.name for s in recipe.stages]
        hint = "it comes later; stages run in order" if stage in later else f"earlier stages: {sorted(produced)}"
        return [f"{where}: {key} refers to stage {stage!r}, which no earlier stage is ({hint})"]
    if output not in produced[stage]:
        return [f"{where}: {key} wants output {output!r} of stage {stage!r}, which produces only "
                f"{sorted(produced[stage]) or 'nothing'}" +
                (" (set rl_pass_rate on it to get rl_prompts)" if output == "rl_prompts" else "")]
    wants_model = key in ("model", "teacher")
    kind_ok = (output == "model") == wants_model
    return [] if kind_ok else [f"{where}: {key} needs a {'model' if wants_model else 'dataset'}, "
                               f"but {stage}.{output} is {'a model' if output == 'model' else 'a dataset'}"]


def _check_settings(stage: _Stage) -> list[str]:
    from pydantic import ValidationError

    problems = []
    if isinstance(stage, (GRPOStage, SampleStage)):
        from grpo.recipes import RecipeError, resolve_reward

        unknown = []
        for r in stage.rewards:
            try:
                resolve_reward(r.name)
            except RecipeError as e:
                unknown.append(str(e))
        problems += unknown
        if not unknown:
            try:
                names = [r.name for r in build_rewards(stage.rewards)[0]]
                if len(set(names)) != len(names):
                    problems.append(f"a reward is listed twice: {names}")
                elif isinstance(stage, SampleStage):
                    check_verifiers(stage.keep, names)
            except (ValueError, TypeError) as e:
                problems.append(str(e))
    try:
        if isinstance(stage, GRPOStage):
            from grpo.config import GRPOConfig

            GRPOConfig(**{**stage.trainer, "output_dir": "unused"})
        elif isinstance(stage, SampleStage):
            from grpo.rollout import SamplingConfig

            SamplingConfig(**{k: tuple(v) if k == "stop" else v for k, v in stage.sampling.items()})
        elif isinstance(stage, SFTStage):
            from grpo.sft import sft_config

            sft_config("unused", **stage.sft)
    except (ValidationError, ValueError, TypeError) as e:
        problems.append(f"bad settings: {str(e).splitlines()[0] if isinstance(e, ValidationError) else e}"
                        + (f" ({e.errors()[0]['loc']}: {e.errors()[0]['msg']})" if isinstance(e, ValidationError)
                           else ""))
    return problems
