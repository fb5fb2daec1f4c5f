"""The sweep spec (YAML), its runs, and how shards split them (docs/sweep.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FINISHED = "sweep_run.json"


class BaseSpec(BaseModel):
    """What every run starts from: a ``grpo train`` recipe, or a script."""

    model_config = ConfigDict(extra="forbid")
    recipe: str | None = Field(None, description="packaged recipe name or YAML path (grpo train)")
    script: str | None = Field(
        None, description="python script taking --seed S --output-dir DIR [--steps N] --set k=v"
    )
    quick: bool = Field(False, description="recipe only: apply its quick: overrides first")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides for every run")
    args: list[str] = Field(default_factory=list, description="script only: extra arguments")

    @model_validator(mode="after")
    def _one_base(self) -> BaseSpec:
        if (self.recipe is None) == (self.script is None):
            raise ValueError("base: give exactly one of recipe: (a grpo train recipe) or script:")
        if self.script is not None and self.quick:
            raise ValueError("base.quick applies to a recipe's quick: section; a script has none")
        if self.recipe is not None and self.args:
            raise ValueError("base.args are a script's arguments; a recipe takes base.set")
        return self


class SweepSpec(BaseModel):
    """A sweep: variants x seeds over one base."""

    model_config = ConfigDict(extra="forbid")
    base: BaseSpec
    variants: dict[str, dict[str, Any]] = Field(
        description="name -> dotted overrides (recipe keys, or the script's --set keys)"
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    output_dir: str
    steps: int | None = Field(
        None, description="GRPO steps per run (trainer.max_steps / the script's --steps)"
    )
    compute: Literal["tokens", "steps"] = Field(
        "tokens",
        description="x axis of the ScaleRL fit: prompt + completion tokens sampled "
        "(throughput/tokens_seen) or GRPO steps",
    )
    metric: str = Field("eval/greedy_accuracy", description="the eval.jsonl key to fit and report")
    bootstrap: int = Field(200, ge=0, description="bootstrap resamples over seeds (0 = none)")

    @model_validator(mode="before")
    @classmethod
    def _base_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("base"), str):
            key = "script" if data["base"].endswith(".py") else "recipe"
            data = {**data, "base": {key: data["base"]}}
        return data

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if not self.variants:
            raise ValueError("variants: name at least one (an empty {} runs the base as is)")
        bad = [v for v in self.variants if not v or "/" in v or v.startswith(".")]
        if bad:
            raise ValueError(f"variant names become folders: {bad} cannot (no '/', no leading '.')")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: give distinct seeds, got {self.seeds}")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> SweepSpec:
        import yaml

        return cls.model_validate(yaml.safe_load(Path(path).read_text()))


@dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    dir: Path
    overrides: dict[str, Any]


def plan_runs(spec: SweepSpec) -> list[Run]:
    """Every run of the sweep, variant-major, in spec order."""
    out = Path(spec.output_dir)
    return [
        Run(name, seed, out / name / f"seed{seed}", {**spec.base.set, **over})
        for name, over in spec.variants.items()
        for seed in spec.seeds
    ]


def shard_runs(runs: list[Run], index: int, count: int) -> list[Run]:
    """Shard ``index`` of ``count`` takes every ``count``-th run from ``index``: the shards are
    disjoint and together cover every run."""
    if not 0 <= index < count:
        raise ValueError(f"--shard {index}/{count}: want 0 <= i < n")
    return runs[index::count]


def shard_from_env(env: dict[str, str] | None = None) -> tuple[int, int]:
    """``(index, count)`` from torchrun (RANK, WORLD_SIZE) or a SLURM job array
    (SLURM_ARRAY_TASK_ID minus SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT); else ``(0, 1)``."""
    env = dict(os.environ if env is None else env)
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1


def is_finished(run_dir: Path) -> bool:
    return (run_dir / FINISHED).exists() or (run_dir / "summary.json").exists()
