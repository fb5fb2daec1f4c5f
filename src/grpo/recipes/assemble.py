"""One assembly path: a recipe becomes a :class:`grpo.GRPOTrainer`, or that trainer's evaluation.

``grpo train`` and every ``grpo`` stage of ``grpo pipeline`` (a :class:`Recipe` too) call
:func:`build_trainer`; ``grpo eval`` calls :func:`evaluate_recipe`. Both are made of the same
pieces, which ``grpo sample`` and the pipeline's sample stages share:

==========================================  =================================================
rewards                                     :func:`grpo.recipes.build_rewards` (strict: a
                                            typo'd name, option or function kwarg is an error)
the total reward, accuracy and format names  :func:`grpo.evaluation.scoring_reward`,
                                            :func:`grpo.evaluation.report_names`
the generator                               :func:`grpo.models.build_generator` (through
                                            :func:`grpo.models.trainer_generator`), wrapped
                                            for tool use by the ``multiturn:`` section
LoRA                                        :func:`lora_config`
datasets                                    :func:`dataset_rows` (or rows given by the caller,
                                            e.g. a pipeline stage's ``data:``)
==========================================  =================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpo.recipes.errors import RecipeError

if TYPE_CHECKING:
    from grpo.trainer import GRPOTrainer
    from grpo.recipes.schema import DatasetSpec, Recipe


def lora_config(lora: dict[str, Any] | None) -> Any:
    """A peft ``LoraConfig`` for causal LMs from a recipe's ``lora:`` section, or None."""
    if not lora:
        return None
    from peft import LoraConfig

    try:
        return LoraConfig(task_type="CAUSAL_LM", **lora)
    except TypeError as e:
        raise RecipeError(f"lora: {e}") from e


def dataset_rows(spec: DatasetSpec | None) -> list[dict] | None:
    """The rows of a recipe's ``dataset`` / ``eval_dataset`` (None for None)."""
    if spec is None:
        return None
    from grpo.recipes.datasets import load_rows

    return load_rows(spec.source())


def generator_wrapper(recipe: Recipe) -> Callable[[Any], Any] | None:
    """What goes around the engine's generator: the ``multiturn:`` tool loop, or nothing."""
    return recipe.multiturn.build if recipe.multiturn is not None else None


def build_trainer(
    recipe: Recipe,
    *,
    train_rows: Sequence[dict] | None = None,
    eval_rows: Sequence[dict] | None = None,
) -> GRPOTrainer:
    """A :class:`grpo.GRPOTrainer` for the recipe: checked first (datasets, rewards, Hub, the run
    folder), then the data and the model (``model: tiny`` is built) are made.

    ``train_rows`` / ``eval_rows`` replace the recipe's ``dataset`` / ``eval_dataset`` (a
    pipeline stage's ``data:``, resolved to rows). The rewards' weights become
    ``trainer.reward.weights``."""
    from grpo.guards import check_output_dir
    from grpo.recipes import check_recipe, prepare_model, require_hub

    rewards, weights = check_recipe(recipe)  # the quick checks first, the model (maybe built) last
    require_hub(recipe)
    from grpo.trainer import GRPOTrainer  # after the checks: importing it takes seconds

    cfg = recipe.trainer
    if not cfg.overwrite_output_dir:  # the trainer refuses another run's folder: before any build
        check_output_dir(
            cfg.output_dir, resume_from=cfg.resume_from, overwrite=False, is_main=False
        )
    cfg = cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"weights": weights})})
    train = list(train_rows) if train_rows is not None else dataset_rows(recipe.dataset)
    if train is None:
        raise RecipeError("the recipe has no dataset: add one, e.g. dataset: {name: gsm8k}")
    evals = list(eval_rows) if eval_rows is not None else dataset_rows(recipe.eval_dataset)
    peft_config = lora_config(recipe.lora)
    return GRPOTrainer(
        prepare_model(recipe),
        rewards,
        train,
        cfg,
        eval_dataset=evals,
        peft_config=peft_config,
        wrap_generator=generator_wrapper(recipe),
    )


# ------------------------------------------------------------------------------ evaluation
def resolve_eval_model(recipe: Recipe, model: str | None) -> tuple[str, Path | None]:
    """(model folder or hub id to load, checkpoint whose weights go on top, or None).

    ``model`` may be a saved model (``config.json``; ``adapter_config.json`` for unmerged LoRA),
    a checkpoint (``trainer_state.json``: its weights are loaded onto the recipe's model, or onto
    the run's ``tiny_model``), a run folder (its ``final``), a hub id, or None (the recipe's)."""
    from grpo.recipes import TINY_MODEL_DIR, prepare_model, require_hub

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
    if (path / "final" / "config.json").exists() or (
        path / "final" / "adapter_config.json"
    ).exists():
        return str(path / "final"), None
    if path.exists():
        raise RecipeError(
            f"--model {model}: not a saved model (no config.json), a checkpoint (no "
            "trainer_state.json) or a run folder (no final/)"
        )
    require_hub(recipe, model)
    return model, None


def load_checkpoint_weights(model: Any, checkpoint: Path) -> None:
    """Copy a checkpoint's trained weights (``model.pt``: every trainable parameter by name, as
    :func:`grpo.checkpoint.save_checkpoint` writes it) into ``model``."""
    import torch

    weights = torch.load(checkpoint / "model.pt", map_location="cpu", weights_only=True)
    state = model.state_dict(keep_vars=True)  # parameters under every name, tied ones included
    unknown = [n for n in weights if n not in state]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
    wrong = [n for n, t in weights.items() if n in state and state[n].shape != t.shape]
    if unknown or missing or wrong:
        example = (unknown or missing or wrong)[:2]
        raise RecipeError(
            f"checkpoint {checkpoint} does not fit the recipe's model "
            f"({len(unknown)} unknown, {len(missing)} missing, {len(wrong)} "
            f"mis-shaped weights, e.g. "
            f"{example}): evaluate it with the recipe (model:, lora:) it was trained "
            "with"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            state[name].copy_(tensor)


def evaluate_recipe(
    recipe: Recipe,
    model: str | None = None,
    *,
    by: Sequence[str] = (),
    pass_ks: list[int] | None = None,
    cons_ks: list[int] | None = None,
    preset: str | None = None,
) -> dict[str, float]:
    """The recipe's held-out evaluation of ``model`` (see :func:`resolve_eval_model`), computed as
    the trainer does at its evaluation steps: the same rows (``eval.max_prompts``), generator
    (multi-turn too), total reward, accuracy and format rewards, and seeded sampling
    (:func:`grpo.evaluation.eval_sampling`).

    ``pass_ks`` / ``cons_ks``: the j of pass@j / cons@j (default: k = ``trainer.eval.samples``;
    cons@k only where the accuracy reward can vote). ``preset``: a named evaluation sampling of
    :data:`grpo.evaluation.EVAL_PRESETS` instead of the run's, e.g. ``"r1"`` (temperature 0.6,
    top-p 0.95)."""
    import torch

    from grpo.evaluation import (
        EVAL_PRESETS,
        answer_voter,
        eval_sampling,
        evaluate,
        report_names,
        scoring_reward,
    )
    from grpo.guards import set_torch_threads
    from grpo.models import load_policy, trainer_generator
    from grpo.recipes import check_recipe, require_hub

    if recipe.eval_dataset is None:
        raise RecipeError(
            "the recipe has no eval_dataset; add one, e.g. eval_dataset: {name: gsm8k, split: test}"
        )
    cfg = recipe.trainer
    for j in pass_ks or ():
        if not 1 <= j <= cfg.eval.samples:
            raise RecipeError(
                f"--pass-k {j}: pass@K needs 1 <= K <= trainer.eval.samples="
                f"{cfg.eval.samples} (the samples per prompt); add "
                f"trainer.eval.samples={max(j, 1)}"
            )
    for j in cons_ks or ():
        if not 1 <= j <= cfg.eval.samples:
            raise RecipeError(
                f"--cons-k {j}: cons@K needs 1 <= K <= trainer.eval.samples="
                f"{cfg.eval.samples} (the samples per prompt); add "
                f"trainer.eval.samples={max(j, 1)}"
            )
    if preset is not None and preset not in EVAL_PRESETS:
        raise RecipeError(f"--preset {preset}: unknown; known: {', '.join(sorted(EVAL_PRESETS))}")
    sample = EVAL_PRESETS[preset] if preset is not None else eval_sampling
    reward = scoring_reward(*check_recipe(recipe))
    accuracy, format_name = report_names([r.name for r in reward.rewards], config=cfg.reward)
    if accuracy is None and (pass_ks or cons_ks):
        flag = "--pass-k" if pass_ks else "--cons-k"
        raise RecipeError(
            f"{flag}: needs an accuracy reward, and none of the recipe's rewards is named as one "
            f"({', '.join(r.name for r in reward.rewards)}); name it with "
            f"trainer.reward.accuracy=<reward name>, or drop {flag}"
        )
    if cons_ks and answer_voter(reward, accuracy) is None:
        raise RecipeError(
            f"--cons-k: majority vote needs an accuracy reward that compares answers "
            f"(vote_answer / same_answer, as math_reward has); {accuracy} cannot"
        )
    model_path, checkpoint = resolve_eval_model(recipe, model)
    require_hub(recipe, model_path)  # the datasets
    rows = dataset_rows(recipe.eval_dataset) or []
    rows = rows[: cfg.eval.max_prompts] if cfg.eval.max_prompts else rows
    for column in by:
        if any(column not in row for row in rows):
            raise RecipeError(
                f"--by {column}: the eval rows have no column {column!r} (columns: "
                f"{', '.join(sorted(rows[0]))})"
            )
    peft_config = lora_config(recipe.lora) if checkpoint is not None else None
    cuda = torch.cuda.is_available()
    set_torch_threads(cfg.forward.torch_threads, cuda=cuda)  # as the trainer: the same arithmetic
    device = torch.device("cuda" if cuda else "cpu")
    policy, tokenizer, path = load_policy(model_path, None, peft_config, cfg.forward, device)
    if checkpoint is not None:
        load_checkpoint_weights(policy, checkpoint)
    policy.eval()
    generator = trainer_generator(cfg, policy, tokenizer, path)
    wrap = generator_wrapper(recipe)
    generator = wrap(generator) if wrap is not None else generator
    try:
        generator.sync_weights(policy)
        return evaluate(
            generator,
            rows,
            reward,
            accuracy=accuracy,
            format_name=format_name,
            k=cfg.eval.samples,
            sampling=sample(cfg.sampling, cfg.seed),
            by=list(by) or cfg.eval.by,
            pass_ks=pass_ks,
            cons_ks=cons_ks,
        )
    finally:
        generator.close()
