"""A multi-stage pipeline recipe (``grpo pipeline RECIPE.yaml``): schema and up-front checks.

DeepSeek-R1 (arXiv:2501.12948 sec. 2.3) chains cold-start SFT -> reasoning RL -> rejection
sampling -> SFT -> all-scenario RL; its distilled models are one SFT (sec. 2.4). A recipe lists
such stages; each names where its model and data come from, and a later stage refers to an
earlier stage's output *by the stage's name*::

    output_dir: runs/r1_tiny
    model: path/or/hub-id                     # the starting model, referred to as {from: base}
    stages:
      - {name: cold_start, type: sft, data: {builder: tiny_arithmetic},
         sft: {learning_rate: 1.0e-3}}
      - name: reasoning_rl
        type: grpo                            # model omitted: the previous stage's model
        data: {builder: tiny_arithmetic, limit: 256}
        rewards: [{name: math}, {name: format, weight: 0.1}]
        trainer: {max_steps: 20, rollout: {num_generations: 8}}
      - {name: rejection, type: sample, data: {builder: tiny_arithmetic}, rewards: [{name: math}],
         n: 8, rl_pass_rate: [0.2, 0.8]}
      - {name: sft_2, type: sft, model: {from: base}, data: {from: rejection}}   # output "sft"
      - {name: final_rl, type: grpo, data: {from: rejection, output: rl_prompts},
         rewards: [{name: math}]}
      # on-policy distillation
      - {name: student_opd, type: grpo, model: path/of/a/small/model, teacher: {from: final_rl},
         data: {builder: tiny_arithmetic}, rewards: [{name: math, weight: 0.0}]}

A ``grpo`` stage is a :class:`grpo.recipes.schema.Recipe` (:class:`GRPOStage`): every key of a
``grpo train`` recipe works in it (``lora``, ``multiturn``, ``dataset``, ...), and it is built
by the same :func:`grpo.recipes.assemble.build_trainer`. Its ``teacher`` (a path or
``{from: stage}``) makes it on-policy distillation (:mod:`grpo.distill`). Outputs: ``sft`` and
``grpo`` stages produce a ``model``; ``sample`` stages produce the dataset ``sft`` (kept rows)
and, with ``rl_pass_rate``, ``rl_prompts``. Loading validates every stage's settings (its
GRPOConfig, SamplingConfig, ...); :func:`check_recipe` then rejects, before anything runs, a
reference to an output that no earlier stage produces, and what ``grpo train`` / ``grpo sample``
/ ``grpo sft`` would refuse (reward names, options and kwargs; dataset options; SFT settings),
with the same messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from grpo.config import VLLMConfig
from grpo.pipeline.keep import KeepRule, check_verifiers
from grpo.recipes import RecipeError
from grpo.recipes.schema import DatasetSpec, Recipe, RewardSpec
from grpo.rollout.types import SamplingConfig

BASE = "base"
OUTPUTS = {"sft": {"model"}, "grpo": {"model"}, "sample": {"sft", "rl_prompts"}}


class Ref(BaseModel):
    """An earlier stage's output: ``{from: stage_name, output: name}``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    stage: str = Field(
        alias="from", description="Name of an earlier stage, or 'base' for the recipe's model."
    )
    output: str | None = Field(
        None, description="Which output (default: 'model', or a sample stage's 'sft')."
    )


class DataSpec(BaseModel):
    """Where a stage's rows come from: exactly one of ``from``, ``builder``, ``hub``, ``path``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    stage: str | None = Field(None, alias="from", description="An earlier stage's dataset output.")
    output: str | None = Field(None, description="Which dataset of that stage (default 'sft').")
    builder: str | None = Field(
        None, description="A builder of grpo.recipes.datasets (e.g. tiny_arithmetic, gsm8k)."
    )
    hub: str | None = Field(None, description="A Hugging Face hub dataset id.")
    path: str | None = Field(None, description="A local .jsonl, .json, .parquet or .csv file.")
    config: str | None = Field(None, description="Hub dataset configuration name.")
    split: str = Field("train", description="Split (builder, hub).")
    limit: int | None = Field(None, ge=1, description="Keep the first N rows.")
    columns: list[str] | dict[str, str] | None = Field(
        None,
        description="Keep only these columns (before anything is loaded into memory, for hub "
        "data); a mapping {old: new} renames columns instead.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra builder / load_dataset arguments."
    )
    prompt_column: str | None = Field(
        None,
        description="Build each row's 'prompt' from this column: the user turn, after `system`.",
    )
    system: str | None = Field(
        None,
        description="System message of built prompts (default: the R1-Zero template instruction; "
        "'' none).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [k for k in ("stage", "builder", "hub", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"data needs exactly one of from / builder / hub / path, got {given or 'none'}"
            )
        if self.output is not None and self.stage is None:
            raise ValueError("data.output only goes with data.from")
        return self


_NAME = {"pattern": r"^[A-Za-z0-9_\-]+$", "description": "Unique stage name (a folder name)."}
_MODEL = {
    "description": "Path / hub id, or {from: stage}; default: the last model produced "
    "before this stage (else the recipe's)."
}


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(**_NAME)
    model: str | Ref | None = Field(None, **_MODEL)
    data: DataSpec


class SFTStage(_Stage):
    """Cold start / distillation / SFT on rejection-sampled rows (:func:`grpo.pipeline.sft`)."""

    type: Literal["sft"]
    sft: dict[str, Any] = Field(default_factory=dict, description="trl.SFTConfig fields.")


class GRPOStage(Recipe):
    """Reasoning / all-scenario RL: a :class:`grpo.recipes.schema.Recipe` (every key of a
    ``grpo train`` recipe works: model, tiny, dataset, eval_dataset, rewards, lora, trainer,
    multiturn), plus a name, the pipeline's data references and an optional teacher. Its
    ``trainer.output_dir`` is set to the stage's folder."""

    type: Literal["grpo"]
    name: str = Field(**_NAME)
    model: str | Ref | None = Field(None, **_MODEL)  # type: ignore[assignment]
    dataset: DatasetSpec | None = Field(  # type: ignore[assignment]
        None,
        description="Training prompts as in grpo train ({name, split, limit, kwargs}); or data.",
    )
    data: DataSpec | None = Field(
        None, description="Training prompts: {from | builder | hub | path}; or dataset."
    )
    eval_data: DataSpec | None = Field(
        None, description="Held-out prompts, as data; or eval_dataset."
    )
    teacher: str | Ref | None = Field(
        None,
        description="On-policy distillation: the teacher model (path / hub id, or "
        "{from: stage}); sets trainer.distill.teacher (grpo.distill).",
    )

    @model_validator(mode="after")
    def _one_dataset(self) -> GRPOStage:
        if (self.data is None) == (self.dataset is None):
            raise ValueError(
                "a grpo stage needs exactly one of data (from / builder / hub / "
                "path) or dataset (as in grpo train)"
            )
        if self.eval_data is not None and self.eval_dataset is not None:
            raise ValueError("give eval_data or eval_dataset, not both")
        if self.quick:
            raise ValueError(
                "quick: is grpo train --quick's smoke form; a pipeline stage has none: put "
                "those settings in the stage (trainer: ..., tiny: ...)"
            )
        return self


class SampleStage(_Stage):
    """Rejection sampling (:func:`grpo.pipeline.rejection_sample`)."""

    type: Literal["sample"]
    rewards: list[RewardSpec] = Field(min_length=1)
    n: int = Field(8, ge=1, description="Samples per prompt.")
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="grpo.rollout.SamplingConfig fields."
    )
    keep: KeepRule = Field(default_factory=KeepRule)
    rl_pass_rate: tuple[float, float] | None = Field(
        None, description="Also output the prompts with low < pass rate < high."
    )
    batch_size: int = Field(16, ge=1, description="Prompts per generate call (the resume unit).")
    seed: int = 0
    rollout: Literal["hf", "vllm", "vllm_server"] = Field(
        "hf",
        description="The generator's backend (grpo.models.build_generator): transformers, "
        "a vLLM engine, or a vLLM server.",
    )
    vllm: VLLMConfig = Field(
        default_factory=VLLMConfig,
        description="The vLLM engine or server: GRPOConfig's vllm section.",
    )

    @model_validator(mode="after")
    def _band(self) -> SampleStage:
        if (
            self.rl_pass_rate is not None
            and not 0 <= self.rl_pass_rate[0] < self.rl_pass_rate[1] <= 1
        ):
            raise ValueError(
                "rl_pass_rate must be [low, high] with 0 <= low < high <= 1, "
                f"got {self.rl_pass_rate}"
            )
        return self


Stage = Annotated[SFTStage | GRPOStage | SampleStage, Field(discriminator="type")]


class PipelineRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    output_dir: str = Field("runs/pipeline", description="Run folder.")
    model: str = Field(
        description="The starting model (path or hub id), referred to as {from: base}."
    )
    stages: list[Stage] = Field(min_length=1)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> PipelineRecipe:
        import yaml

        from grpo.config import apply_overrides
        from grpo.recipes.schema import explain

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"pipeline recipe {path} not found")
        try:
            data = apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides or [])
        except ValueError as e:
            raise RecipeError(str(e)) from e
        try:
            return cls(**data)
        except ValidationError as e:
            raise RecipeError(f"{path}: {explain(e, cls)}") from e


def model_source(recipe: PipelineRecipe, index: int) -> str | Ref:
    """Stage ``index``'s model: as written, or the last model produced before it, or the base."""
    stage = recipe.stages[index]
    if stage.model is not None:
        return stage.model
    for earlier in reversed(recipe.stages[:index]):
        if "model" in OUTPUTS[earlier.type]:
            return Ref(**{"from": earlier.name})
    return Ref(**{"from": BASE})


def check_recipe(recipe: PipelineRecipe) -> None:
    """Every reference names an output an earlier stage produces; every setting is valid.

    Raises :class:`grpo.recipes.RecipeError` listing every problem found (nothing has run yet);
    a stage's own problems are those ``grpo train`` / ``grpo sample`` / ``grpo sft`` report."""
    problems: list[str] = []
    produced: dict[str, set[str]] = {BASE: {"model"}}
    for i, stage in enumerate(recipe.stages):
        where = f"stage {i + 1} ({stage.name!r})"
        if stage.name in produced:
            problems.append(f"{where}: the name {stage.name!r} is used twice (or is reserved)")
        src = model_source(recipe, i)
        if isinstance(src, Ref):
            problems += _check_ref(
                where, "model", src.stage, src.output or "model", produced, recipe
            )
        teacher = getattr(stage, "teacher", None)
        if isinstance(teacher, Ref):
            problems += _check_ref(
                where, "teacher", teacher.stage, teacher.output or "model", produced, recipe
            )
        if teacher is not None and stage.trainer.distill.teacher is not None:
            problems.append(
                f"{where}: give the teacher once, as `teacher` (not also trainer.distill.teacher)"
            )
        for key in ("data", "eval_data"):
            spec = getattr(stage, key, None)
            if spec is not None and spec.stage is not None:
                problems += _check_ref(
                    where, key, spec.stage, spec.output or "sft", produced, recipe
                )
        problems += [f"{where}: {p}" for p in _check_settings(stage)]
        outputs = set(OUTPUTS[stage.type])
        if isinstance(stage, SampleStage) and stage.rl_pass_rate is None:
            outputs.discard("rl_prompts")
        produced[stage.name] = outputs
    if problems:
        raise RecipeError("pipeline recipe is invalid:\n  " + "\n  ".join(problems))


def _check_ref(
    where: str,
    key: str,
    stage: str,
    output: str,
    produced: dict[str, set[str]],
    recipe: PipelineRecipe,
) -> list[str]:
    if stage not in produced:
        later = [s.name for s in recipe.stages]
        hint = (
            "it comes later; stages run in order"
            if stage in later
            else f"earlier stages: {sorted(produced)}"
        )
        return [f"{where}: {key} refers to stage {stage!r}, which no earlier stage is ({hint})"]
    if output not in produced[stage]:
        return [
            f"{where}: {key} wants output {output!r} of stage {stage!r}, which produces only "
            f"{sorted(produced[stage]) or 'nothing'}"
            + (" (set rl_pass_rate on it to get rl_prompts)" if output == "rl_prompts" else "")
        ]
    wants_model = key in ("model", "teacher")
    kind_ok = (output == "model") == wants_model
    return (
        []
        if kind_ok
        else [
            f"{where}: {key} needs a {'model' if wants_model else 'dataset'}, "
            f"but {stage}.{output} is {'a model' if output == 'model' else 'a dataset'}"
        ]
    )


def _check_settings(stage: SFTStage | GRPOStage | SampleStage) -> list[str]:
    """What ``grpo train`` (a grpo stage), ``grpo sample`` or ``grpo sft`` would refuse."""
    from grpo.recipes import build_rewards
    from grpo.recipes import check_recipe as check_train_recipe
    from grpo.rewards import as_reward
    from grpo.recipes.datasets import check_dataset

    problems = []
    data = [getattr(stage, key, None) for key in ("data", "eval_data")]
    for spec in data:
        if spec is not None and spec.builder is not None:
            try:
                check_dataset(spec.builder, spec.kwargs)
            except RecipeError as e:
                problems.append(str(e))
    if isinstance(stage, (GRPOStage, SampleStage)):
        try:
            rewards = (
                check_train_recipe(stage)[0]
                if isinstance(stage, GRPOStage)
                else build_rewards(stage.rewards)[0]
            )
            # a `module:function` reward is a plain function: named as training names it
            names = [as_reward(r).name for r in rewards]
            if len(set(names)) != len(names):
                problems.append(f"a reward is listed twice: {names}")
            elif isinstance(stage, SampleStage):
                check_verifiers(stage.keep, names)
        except (ValueError, TypeError) as e:  # RecipeError, the keep rule's, as_reward's
            problems.append(str(e))
    if isinstance(stage, SFTStage):
        from grpo.sft import sft_config

        try:
            sft_config("unused", **stage.sft)
        except (ValueError, TypeError) as e:
            problems.append(f"bad settings: {e}")
    return problems
