"""``grpo`` command line: train, eval, report; the R1 pipeline's sample, sft, pipeline.

    grpo train RECIPE [key=value ...]           e.g. trainer.beta=0 rewards.1.weight=0.5
    grpo train r1_zero_cpu                      the packaged offline CPU recipe (tiny model)
    grpo train r1_zero_cpu --quick              its smoke form (the recipe's quick: overrides)
    grpo eval RECIPE --model RUN/final          held-out accuracy of a trained model, or of a
    grpo eval RECIPE --model RUN/checkpoints/step_N     checkpoint (same numbers as in training)
    grpo report RUN_DIR                         PNG curves + report.html
    grpo train --help-config                    every recipe key and GRPOConfig field, documented
    grpo sample / grpo sft / grpo pipeline RECIPE   rejection sampling, SFT, multi-stage R1
                                                (docs/pipeline.md)
    grpo sweep SPEC.yaml [--shard I/N] [--report]   variants x seeds, resumable, with a table
                                                and ScaleRL fits (docs/sweep.md)

A mistake in a recipe or an override prints one line saying what to change, and exits with 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpo.recipes.schema import Recipe

# ---------------------------------------------------------------------------------------------
# Extra subcommands. Each module listed here has ``register(subparsers)``, which adds its
# parsers with ``set_defaults(func=handler)``, ``handler(args) -> int`` (the exit code).
SUBCOMMAND_MODULES: tuple[str, ...] = ("grpo.pipeline.commands", "grpo.sweep.run")
# ---------------------------------------------------------------------------------------------


def _config_help() -> str:
    from pydantic_core import PydanticUndefined

    from grpo.config import GRPOConfig
    from grpo.recipes.multiturn import MultiTurnSettings
    from grpo.recipes.schema import DatasetSpec, Recipe, RewardSpec, TinyModelSpec

    def fields(model, prefix: str) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            if _section_type(field.annotation) is not None:
                continue  # listed under its own title
            default = field.get_default(call_default_factory=True)
            shown = "required" if default is PydanticUndefined else f"default {default!r}"
            text = " ".join((field.description or "").split())
            out.append(f"  {prefix}{name} ({shown}): {text}".rstrip(": "))
        return out

    sections = [
        ("Recipe keys", Recipe, ""),
        ("dataset / eval_dataset", DatasetSpec, "dataset."),
        ("each entry of rewards", RewardSpec, "rewards.N."),
        ("model: tiny", TinyModelSpec, "tiny."),
        ("multiturn: tool use during rollouts (optional)", MultiTurnSettings, "multiturn."),
        ("trainer (GRPOConfig): the run", GRPOConfig, "trainer."),
    ]
    own_titles = ("trainer", "tiny", "multiturn")  # Recipe keys listed under their own title
    for name, field in GRPOConfig.model_fields.items():
        section = _section_type(field.annotation)
        if section is not None:
            key = field.alias or name
            sections.append(
                (
                    f"trainer.{key}: {' '.join((field.description or '').split())}",
                    _as_model(section, field.get_default(call_default_factory=True)),
                    f"trainer.{key}.",
                )
            )
    lines = []
    for title, model, prefix in sections:
        lines += [
            f"{title}",
            *(
                line
                for line in fields(model, prefix)
                if not (model is Recipe and line.split()[0] in own_titles)
            ),
        ]
    return "\n".join(lines)


def _section_type(annotation):
    """The section class of a GRPOConfig field (a pydantic model or a stdlib dataclass), or None."""
    import dataclasses

    from pydantic import BaseModel

    if isinstance(annotation, type) and (
        issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
    ):
        return annotation
    return None


def _as_model(cls, default: Any):
    """A pydantic model with the fields and descriptions of ``cls`` (a stdlib dataclass section
    becomes one) and the defaults of the GRPOConfig's ``default`` instance of it."""
    import dataclasses

    if not dataclasses.is_dataclass(cls):
        return cls
    from pydantic import Field, TypeAdapter, create_model

    props = TypeAdapter(cls).json_schema()["properties"]
    return create_model(
        cls.__name__,
        **{
            f.name: (
                Any,
                Field(
                    getattr(default, f.name), description=props.get(f.name, {}).get("description")
                ),
            )
            for f in dataclasses.fields(cls)
        },
    )


QUICK_HELP = (
    "the recipe's smoke form: apply its quick: section (dotted overrides: a short warm-up, a few "
    "steps, its own output_dir) before the command line's; runs in seconds"
)


def load_recipe(name_or_path: str, overrides: list[str], quick: bool = False) -> Recipe:
    """The validated recipe (packaged name or path) with ``key=value`` overrides applied (after
    its ``quick:`` overrides, with ``quick``)."""
    from grpo.recipes import find_recipe
    from grpo.recipes.schema import Recipe

    return Recipe.from_yaml(find_recipe(name_or_path), overrides, quick=quick)


def cmd_train(args: argparse.Namespace) -> int:
    if args.help_config:
        print(_config_help())
        return 0
    if not args.recipe:
        args.parser.error(
            "train needs a recipe (a packaged name such as r1_zero_cpu, or a YAML path)"
        )
    recipe = load_recipe(args.recipe, args.overrides, args.quick)
    from grpo.recipes.assemble import build_trainer

    try:
        trainer = build_trainer(recipe)
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
    ) as e:  # what the trainer refuses at construction
        print(f"grpo: {e}", file=sys.stderr)
        return 2
    try:
        trainer.train()
    finally:
        trainer.close()
    from grpo.report import write_report

    print(f"report: {write_report(recipe.trainer.output_dir)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from grpo.recipes.assemble import evaluate_recipe

    recipe = load_recipe(args.recipe, args.overrides, args.quick)
    result = evaluate_recipe(
        recipe,
        args.model,
        by=args.by,
        pass_ks=args.pass_k,
        cons_ks=args.cons_k,
        preset=args.preset,
    )
    for k, v in result.items():
        print(f"{k}: {v:.4f}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from grpo.report import write_report

    try:
        print(write_report(args.run_dir))
    except FileNotFoundError as e:
        print(f"grpo: {e}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with GRPO from a recipe")
    p.add_argument(
        "recipe",
        nargs="?",
        help="packaged recipe name (r1_zero_cpu, r1_zero_gsm8k, ...) or YAML path",
    )
    p.add_argument(
        "overrides", nargs="*", help="key=value (dotted keys: trainer.beta=0, rewards.0.weight=2)"
    )
    p.add_argument(
        "--help-config", action="store_true", help="list every recipe key and GRPOConfig field"
    )
    p.add_argument("--quick", action="store_true", help=QUICK_HELP)
    p.set_defaults(func=cmd_train, parser=p)

    p = sub.add_parser("eval", help="evaluate a model or checkpoint on the recipe's eval set")
    p.add_argument(
        "recipe",
        help="the recipe the model was trained with (its eval_dataset, rewards, trainer settings)",
    )
    p.add_argument(
        "overrides", nargs="*", help="key=value, as for train (e.g. trainer.eval_samples=8)"
    )
    p.add_argument(
        "--model",
        help="a saved model folder (RUN/final), a checkpoint (RUN/checkpoints/step_N), "
        "a run folder (its final model), or a hub id; default: the recipe's model",
    )
    p.add_argument(
        "--by",
        nargs="+",
        default=[],
        metavar="COLUMN",
        help="also report every metric per value of these dataset columns",
    )
    p.add_argument(
        "--pass-k",
        nargs="+",
        type=int,
        default=None,
        metavar="K",
        help="pass@K values to report (each <= trainer.eval_samples; default: eval_samples)",
    )
    p.add_argument(
        "--cons-k",
        nargs="+",
        type=int,
        default=None,
        metavar="K",
        help="cons@K (majority vote of K samples) values to report (each <= "
        "trainer.eval.samples; default: eval.samples, where the accuracy reward can vote)",
    )
    p.add_argument(
        "--preset",
        choices=["r1"],
        default=None,
        help="evaluation sampling: r1 = DeepSeek-R1's temperature 0.6, top-p 0.95 (R1 draws "
        "64 samples per prompt: add trainer.eval.samples=64); default: the recipe's sampling",
    )
    p.add_argument("--output", help="also write the metrics to this JSON file")
    p.add_argument("--quick", action="store_true", help=QUICK_HELP)
    p.set_defaults(func=cmd_eval, parser=p)

    p = sub.add_parser("report", help="draw the run report")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report, parser=p)

    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from grpo.recipes import RecipeError

    args: Any = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RecipeError as e:
        print(f"grpo: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
