"""``grpo`` command line: train, eval, report.

    grpo train RECIPE.yaml [key=value ...]     e.g. trainer.beta=0 trainer.max_steps=50
    grpo eval RECIPE.yaml --model RUN/final    held-out accuracy of a (trained) model
    grpo report RUN_DIR                         PNG curves + report.html
    grpo train --help-config                    every GRPOConfig field and its documentation
"""

from __future__ import annotations

import argparse
import sys


def _config_help() -> str:
    from grpo.config import GRPOConfig

    lines = []
    for name, field in GRPOConfig.model_fields.items():
        lines.append(f"  trainer.{name} (default {field.default!r}): {field.description}")
    return "\n".join(lines)


def build_trainer(recipe, model_override: str | None = None):
    from grpo import GRPOTrainer
    from grpo.recipes import reward_registry
    from grpo.recipes.datasets import build_dataset

    registry = reward_registry()
    rewards, weights = [], []
    for spec in recipe.rewards:
        if spec.name not in registry:
            raise SystemExit(f"unknown reward {spec.name!r}; known: {sorted(registry)}")
        rewards.append(registry[spec.name](**spec.kwargs))
        weights.append(spec.weight)
    cfg = recipe.trainer.model_copy(update={"reward_weights": weights})
    train = build_dataset(recipe.dataset.name, recipe.dataset.split, recipe.dataset.limit, **recipe.dataset.kwargs)
    ev = recipe.eval_dataset
    eval_rows = build_dataset(ev.name, ev.split, ev.limit, **ev.kwargs) if ev else None
    peft_config = None
    if recipe.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **recipe.lora)
    return GRPOTrainer(model_override or recipe.model, rewards, train, cfg, eval_dataset=eval_rows,
                       peft_config=peft_config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="grpo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train with GRPO from a recipe")
    p_train.add_argument("recipe", nargs="?")
    p_train.add_argument("overrides", nargs="*", help="key=value (dotted keys: trainer.beta=0)")
    p_train.add_argument("--help-config", action="store_true", help="list GRPOConfig fields")
    p_eval = sub.add_parser("eval", help="evaluate a model on the recipe's eval set")
    p_eval.add_argument("recipe")
    p_eval.add_argument("overrides", nargs="*")
    p_eval.add_argument("--model", help="model to evaluate (default: the recipe's)")
    p_report = sub.add_parser("report", help="draw the run report")
    p_report.add_argument("run_dir")
    args = parser.parse_args(argv)

    if args.command == "report":
        from grpo.report import write_report

        print(write_report(args.run_dir))
        return 0
    if args.command == "train" and args.help_config:
        print(_config_help())
        return 0
    if not args.recipe:
        parser.error("train needs a recipe")
    from grpo.recipes import find_recipe
    from grpo.recipes.schema import Recipe

    try:
        recipe = Recipe.from_yaml(find_recipe(args.recipe), args.overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"grpo: {e}", file=sys.stderr)
        return 2
    if args.command == "eval":
        if recipe.eval_dataset is None:
            print("grpo: the recipe has no eval_dataset", file=sys.stderr)
            return 2
        trainer = build_trainer(recipe, args.model)
        for k, v in trainer.evaluate().items():
            print(f"{k}: {v:.4f}")
        trainer.close()
        return 0
    trainer = build_trainer(recipe)
    try:
        trainer.train()
    finally:
        trainer.close()
    from grpo.report import write_report

    print(f"report: {write_report(recipe.trainer.output_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
