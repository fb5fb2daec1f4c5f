"""``grpo`` command line: train, eval, report; the R1 pipeline's sample, sft, pipeline.

    grpo train RECIPE [key=value ...]           e.g. trainer.beta=0 rewards.1.weight=0.5
    grpo train r1_zero_cpu                      the packaged offline CPU recipe (tiny model)
    grpo eval RECIPE --model RUN/final          held-out accuracy of a trained model, or of a
    grpo eval RECIPE --model RUN/checkpoints/step_N     checkpoint (same numbers as in training)
    grpo report RUN_DIR                         PNG curves + report.html
    grpo train --help-config                    every recipe key and GRPOConfig field, documented
    grpo sample / grpo sft / grpo pipeline RECIPE   rejection sampling, SFT, multi-stage R1 (docs/pipeline.md)

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
SUBCOMMAND_MODULES: tuple[str, ...] = ("grpo.pipeline.commands",)
# ---------------------------------------------------------------------------------------------


def _config_help() -> str:
    from pydantic_core import PydanticUndefined

    from grpo.config import GRPOConfig
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

    sections = [("Recipe keys", Recipe, ""), ("dataset / eval_dataset", DatasetSpec, "dataset."),
                ("each entry of rewards", RewardSpec, "rewards.N."), ("model: tiny", TinyModelSpec, "tiny."),
                ("trainer (GRPOConfig): the run", GRPOConfig, "trainer.")]
    for name, field in GRPOConfig.model_fields.items():
        section = _section_type(field.annotation)
        if section is not None:
            key = field.alias or name
            sections.append((f"trainer.{key}: {' '.join((field.description or '').split())}",
                             _as_model(section, field.get_default(call_default_factory=True)), f"trainer.{key}."))
    lines = []
    for title, model, prefix in sections:
        lines += [f"{title}", *(line for line in fields(model, prefix)
                                if not (model is Recipe and line.split()[0] in ("trainer", "tiny")))]
    return "\n".join(lines)


def _section_type(annotation):
    """The section class of a GRPOConfig field (a pydantic model or a stdlib dataclass), or None."""
    import dataclasses

    from pydantic import BaseModel

    if isinstance(annotation, type) and (issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)):
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
    return create_model(cls.__name__, **{
        f.name: (Any, Field(getattr(default, f.name), description=props.get(f.name, {}).get("description")))
        for f in dataclasses.fields(cls)})


def load_recipe(name_or_path: str, overrides: list[str]) -> Recipe:
    """The validated recipe (packaged name or path) with ``key=value`` overrides applied."""
    from grpo.recipes import find_recipe
    from grpo.recipes.schema import Recipe

    return Recipe.from_yaml(find_recipe(name_or_path), overrides)


def _eval_rows(recipe: Recipe) -> list[dict] | None:
    from grpo.recipes.datasets import build_dataset

    ev = recipe.eval_dataset
    return build_dataset(ev.name, ev.split, ev.limit, **ev.kwargs) if ev is not None else None


def build_trainer(recipe: Recipe, model_override: str | None = None):
    """A :class:`grpo.GRPOTrainer` for the recipe (the model built or checked first)."""
    from grpo import GRPOTrainer
    from grpo.guards import check_output_dir
    from grpo.recipes import check_recipe, prepare_model, require_hub
    from grpo.recipes.datasets import build_dataset

    rewards, weights = check_recipe(recipe)  # the quick checks first, the model (maybe built) last
    require_hub(recipe, model_override)
    cfg = recipe.trainer
    if not cfg.overwrite_output_dir:  # the trainer's refusal of another run's folder, before any build
        check_output_dir(cfg.output_dir, resume_from=cfg.resume_from, overwrite=False, is_main=False)
    cfg = recipe.trainer.model_copy(update={"reward": cfg.reward.model_copy(update={"weights": weights})})
    ds = recipe.dataset
    train = build_dataset(ds.name, ds.split, ds.limit, **ds.kwargs)
    eval_rows = _eval_rows(recipe)
    model = model_override or prepare_model(recipe)
    peft_config = None
    if recipe.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **recipe.lora)
    return GRPOTrainer(model, rewards, train, cfg, eval_dataset=eval_rows, peft_config=peft_config)


# ------------------------------------------------------------------------------ evaluation
def resolve_eval_model(recipe: Recipe, model: str | None) -> tuple[str, Path | None]:
    """(model folder or hub id to load, checkpoint whose weights go on top, or None).

    ``model`` may be a saved model (``config.json``; ``adapter_config.json`` for unmerged LoRA),
    a checkpoint (``trainer_state.json``: its weights are loaded onto the recipe's model, or onto
    the run's ``tiny_model``), a run folder (its ``final``), a hub id, or None (the recipe's)."""
    from grpo.recipes import TINY_MODEL_DIR, RecipeError, prepare_model, require_hub

    if model is None:
        return prepare_model(recipe), None
    path = Path(model).expanduser()
    if (path / "trainer_state.json").exists():
        base = path.parent.parent / TINY_MODEL_DIR
        if recipe.model == "tiny" and (base / "config.json").exists():
            return str(base), path
        return prepare_model(recipe), path
    if (path / "config.json").exists() or (path / "adapter_config.json").exists():
        return str(path), None
    if (path / "final" / "config.json").exists():
        return str(path / "final"), None
    if path.exists():
        raise RecipeError(f"--model {model}: not a saved model (no config.json), a checkpoint (no "
                          "trainer_state.json) or a run folder (no final/)")
    require_hub(recipe, model)
    return model, None


def load_checkpoint_weights(model, checkpoint: Path) -> None:
    """Copy a checkpoint's trained weights (``model.pt``: every trainable parameter by name, as
    :func:`grpo.checkpoint.save_checkpoint` writes it) into ``model``."""
    import torch

    from grpo.recipes import RecipeError

    weights = torch.load(checkpoint / "model.pt", map_location="cpu", weights_only=True)
    state = model.state_dict(keep_vars=True)  # parameters under every name, tied ones included
    unknown = [n for n in weights if n not in state]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
    wrong = [n for n, t in weights.items() if n in state and state[n].shape != t.shape]
    if unknown or missing or wrong:
        example = (unknown or missing or wrong)[:2]
        raise RecipeError(f"checkpoint {checkpoint} does not fit the recipe's model ({len(unknown)} unknown, "
                          f"{len(missing)} missing, {len(wrong)} mis-shaped weights, e.g. {example}): evaluate it "
                          "with the recipe (model:, lora:) it was trained with")
    with torch.no_grad():
        for name, tensor in weights.items():
            state[name].copy_(tensor)


def evaluate_recipe(recipe: Recipe, model: str | None = None, *, by: list[str] | tuple[str, ...] = (),
                    pass_ks: list[int] | None = None) -> dict[str, float]:
    """The recipe's held-out evaluation of ``model`` (see :func:`resolve_eval_model`), computed as
    the trainer does at its evaluation steps: the same rows (``eval.max_prompts``), generator,
    accuracy and format rewards, and seeded sampling (:func:`grpo.evaluation.eval_sampling`)."""
    import torch

    from grpo.evaluation import eval_sampling, evaluate
    from grpo.guards import set_torch_threads
    from grpo.models import load_policy, make_generator
    from grpo.recipes import RecipeError, check_recipe, require_hub
    from grpo.rewards import CombinedReward

    if recipe.eval_dataset is None:
        raise RecipeError("the recipe has no eval_dataset; add one, e.g. eval_dataset: {name: gsm8k, split: test}")
    cfg = recipe.trainer
    for j in pass_ks or ():
        if not 1 <= j <= cfg.eval.samples:
            raise RecipeError(f"--pass-k {j}: pass@K needs 1 <= K <= trainer.eval.samples={cfg.eval.samples} "
                              f"(the samples per prompt); add trainer.eval.samples={max(j, 1)}")
    rewards, weights = check_recipe(recipe)
    reward = CombinedReward(rewards, weights, missing="propagate")
    names = [r.name for r in reward.rewards]
    model_path, checkpoint = resolve_eval_model(recipe, model)
    require_hub(recipe, model_path)  # the datasets
    rows = _eval_rows(recipe)
    rows = rows[:cfg.eval.max_prompts] if cfg.eval.max_prompts else rows
    for column in by:
        if any(column not in row for row in rows):
            raise RecipeError(f"--by {column}: the eval rows have no column {column!r} (columns: "
                              f"{', '.join(sorted(rows[0]))})")
    peft_config = None
    if checkpoint is not None and recipe.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **recipe.lora)
    set_torch_threads(cfg.forward.torch_threads, cuda=torch.cuda.is_available())  # as the trainer: same arithmetic
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    policy, tokenizer, path = load_policy(model_path, None, peft_config, cfg.forward, device)
    if checkpoint is not None:
        load_checkpoint_weights(policy, checkpoint)
    policy.eval()
    generator = make_generator(cfg, policy, tokenizer, path)
    try:
        generator.sync_weights(policy)
        return evaluate(generator, rows, reward, accuracy=names[0],
                        format_name=next((n for n in names if n.startswith("format")), None),
                        k=cfg.eval.samples, sampling=eval_sampling(cfg.sampling, cfg.seed),
                        by=list(by or ()) or cfg.eval.by,
                        pass_ks=pass_ks)
    finally:
        generator.close()


def cmd_train(args: argparse.Namespace) -> int:
    if args.help_config:
        print(_config_help())
        return 0
    if not args.recipe:
        args.parser.error("train needs a recipe (a packaged name such as r1_zero_cpu, or a YAML path)")
    recipe = load_recipe(args.recipe, args.overrides)
    try:
        trainer = build_trainer(recipe)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # what the trainer refuses at construction
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
    recipe = load_recipe(args.recipe, args.overrides)
    result = evaluate_recipe(recipe, args.model, by=args.by, pass_ks=args.pass_k)
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
    parser = argparse.ArgumentParser(prog="grpo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with GRPO from a recipe")
    p.add_argument("recipe", nargs="?", help="packaged recipe name (r1_zero_cpu, r1_zero_gsm8k, ...) or YAML path")
    p.add_argument("overrides", nargs="*", help="key=value (dotted keys: trainer.beta=0, rewards.0.weight=2)")
    p.add_argument("--help-config", action="store_true", help="list every recipe key and GRPOConfig field")
    p.set_defaults(func=cmd_train, parser=p)

    p = sub.add_parser("eval", help="evaluate a model or checkpoint on the recipe's eval set")
    p.add_argument("recipe", help="the recipe the model was trained with (its eval_dataset, rewards, trainer settings)")
    p.add_argument("overrides", nargs="*", help="key=value, as for train (e.g. trainer.eval_samples=8)")
    p.add_argument("--model", help="a saved model folder (RUN/final), a checkpoint (RUN/checkpoints/step_N), "
                                   "a run folder (its final model), or a hub id; default: the recipe's model")
    p.add_argument("--by", nargs="+", default=[], metavar="COLUMN",
                   help="also report every metric per value of these dataset columns")
    p.add_argument("--pass-k", nargs="+", type=int, default=None, metavar="K",
                   help="pass@K values to report (each <= trainer.eval_samples; default: eval_samples)")
    p.add_argument("--output", help="also write the metrics to this JSON file")
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
