"""``grpo sample``, ``grpo sft``, ``grpo pipeline``: the pipeline's command-line entry points.

    grpo sample --model RUN/final --dataset gsm8k --reward math --reward format=0.5 --n 8 \\
        --output-dir runs/rs --rl-pass-rate 0.2 0.8
    grpo sft --model Qwen/Qwen2.5-1.5B --data runs/rs/sft.jsonl --output-dir runs/sft \\
        learning_rate=1e-5 num_train_epochs=2
    grpo pipeline RECIPE.yaml [--redo STAGE] [--check]

``register(subparsers)`` adds the three to ``grpo``'s parser; ``python -m grpo.pipeline.commands``
runs them alone. A user error (bad input, a keep rule that keeps nothing) prints one line and
exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

_USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def _fail(command: str, error: BaseException) -> int:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    one_line = "; ".join(line.strip() for line in str(text).splitlines() if line.strip()).replace(
        ":; ", ": "
    )
    print(f"grpo {command}: {one_line}", file=sys.stderr)
    return 2


def _reward_spec(text: str) -> dict[str, Any]:
    name, _, weight = text.partition("=")
    try:
        return {"name": name, "weight": float(weight) if weight else 1.0}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--reward wants NAME or NAME=WEIGHT, got {text!r}"
        ) from None


def _setting(text: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML."""
    import yaml

    key, eq, raw = text.partition("=")
    if not eq or not key:
        raise ValueError(f"setting {text!r} is not key=value")
    return key, yaml.safe_load(raw)


def _data_spec(args: argparse.Namespace) -> dict[str, Any]:
    given = [k for k in ("dataset", "data_file", "hub") if getattr(args, k)]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of --dataset (a grpo.recipes.datasets builder), --data-file (JSONL), "
            "--hub"
        )
    return {
        "builder": args.dataset,
        "path": args.data_file,
        "hub": args.hub,
        "config": args.hub_config,
        "split": args.split,
        "limit": args.limit,
        "prompt_column": args.prompt_column,
    }


def sample_command(args: argparse.Namespace) -> int:
    """Rejection sampling (grpo.pipeline.rejection_sample)."""
    try:
        from grpo.config import VLLMConfig
        from grpo.models import build_generator
        from grpo.pipeline.keep import KeepRule
        from grpo.pipeline.sample import rejection_sample
        from grpo.pipeline.stages import load_rows
        from grpo.recipes import build_rewards
        from grpo.recipes.schema import RewardSpec
        from grpo.rewards import CombinedReward
        from grpo.rollout import SamplingConfig

        specs = [RewardSpec(**s) for s in (args.reward or [{"name": "math"}])]
        rewards, weights = build_rewards(specs)
        verifiers = None if args.verifiers is None else [v for v in args.verifiers.split(",") if v]
        keep = KeepRule(
            verifiers=verifiers,
            min_reward=args.min_reward,
            language=args.language,
            min_language_share=args.min_language_share,
            drop_truncated=not args.keep_truncated,
            min_tokens=args.min_tokens,
            max_tokens=args.max_kept_tokens,
            dedup=not args.no_dedup,
            max_per_prompt=args.max_per_prompt,
        )
        sampling = SamplingConfig(
            temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens
        )
        rows = load_rows(_data_spec(args))
        vllm = VLLMConfig(**dict(_setting(s) for s in args.vllm))
        generator = build_generator(args.rollout, vllm, args.model, seed=args.seed)
        try:
            result = rejection_sample(
                generator,
                rows,
                CombinedReward(rewards, weights),
                output_dir=args.output_dir,
                n=args.n,
                sampling=sampling,
                keep=keep,
                seed=args.seed,
                batch_size=args.batch_size,
                model_name=args.model,
                rl_pass_rate=tuple(args.rl_pass_rate) if args.rl_pass_rate else None,
            )
        finally:
            generator.close()
    except _USER_ERRORS as e:
        return _fail("sample", e)
    scored = [r for r in result.pass_rates if r is not None]
    mean = f"{sum(scored) / len(scored):.3f}" if scored else "n/a"
    print(
        f"kept {result.counts['kept']} rows from {len(result.pass_rates)} prompts "
        f"(mean pass rate {mean}): {result.sft_path}"
    )
    if result.rl_prompts_path is not None:
        print(f"RL prompts: {result.rl_prompts_path}")
    return 0


def sft_command(args: argparse.Namespace) -> int:
    """SFT through trl's SFTTrainer (grpo.pipeline.sft)."""
    try:
        import yaml

        from grpo.sft import sft, sft_config, to_sft_rows
        from grpo.pipeline.sample import read_jsonl

        settings = {}
        for item in args.settings:
            key, eq, raw = item.partition("=")
            if not eq:
                raise ValueError(f"setting {item!r} is not key=value")
            settings[key] = yaml.safe_load(raw)
        sft_config(args.output_dir, **settings)  # bad settings fail before the model loads
        rows = to_sft_rows(read_jsonl(args.data))
        result = sft(args.model, rows, args.output_dir, **settings)
    except _USER_ERRORS as e:
        return _fail("sft", e)
    losses = [r["loss"] for r in result.log_history if "loss" in r]
    last = f"; last logged loss {losses[-1]:.4f}" if losses else ""
    print(f"model: {result.model_dir} ({result.seconds:.0f} s{last})")
    return 0


def pipeline_command(args: argparse.Namespace) -> int:
    """Run (or with --check only validate) a multi-stage recipe."""
    try:
        from grpo.pipeline.recipe import PipelineRecipe, check_recipe
        from grpo.pipeline.run import run_pipeline

        recipe = PipelineRecipe.from_yaml(args.recipe, args.overrides)
        check_recipe(recipe)
        if args.check:
            print(
                f"recipe OK: {len(recipe.stages)} stages "
                f"({', '.join(s.name for s in recipe.stages)})"
            )
            return 0
        result = run_pipeline(recipe, output_dir=args.output_dir, redo=args.redo)
    except _USER_ERRORS as e:
        return _fail("pipeline", e)
    print(
        f"ran {result.ran or 'nothing'}, skipped {result.skipped or 'nothing'}; "
        f"index: {result.index}"
    )
    return 0


def register(subparsers: Any) -> None:
    """Add ``sample``, ``sft`` and ``pipeline`` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "sample",
        help="rejection sampling: n samples per prompt -> kept SFT rows + pass rates",
        description=sample_command.__doc__,
    )
    p.add_argument("--model", required=True, help="model folder or hub id to sample from")
    p.add_argument("--output-dir", required=True, help="run folder (rerun it to resume)")
    p.add_argument(
        "--dataset", help="a grpo.recipes.datasets builder (tiny_arithmetic, gsm8k, countdown)"
    )
    p.add_argument("--data-file", help="JSONL rows with a 'prompt' and the reward columns")
    p.add_argument("--hub", help="a Hugging Face hub dataset id")
    p.add_argument("--hub-config", help="its configuration name")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, help="first N prompts")
    p.add_argument("--prompt-column", help="build R1-template prompts from this column")
    p.add_argument(
        "--reward",
        action="append",
        type=_reward_spec,
        metavar="NAME[=WEIGHT]",
        help="a reward by registry name (repeatable; default: math)",
    )
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens sampled per completion")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    p.add_argument(
        "--rollout",
        choices=["hf", "vllm", "vllm_server"],
        default="hf",
        help="the generator's backend (grpo.models.build_generator)",
    )
    p.add_argument(
        "--vllm",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a field of the vLLM section, as in recipes' trainer.vllm (repeatable: "
        "--vllm gpu_memory_utilization=0.9 --vllm max_model_len=8192)",
    )
    p.add_argument(
        "--verifiers",
        help="comma-separated reward components that must pass (default: all; '' none)",
    )
    p.add_argument("--min-reward", type=float, help="also require total reward >= this")
    p.add_argument("--language", help="chain of thought must be in this language ('en', 'zh', ...)")
    p.add_argument("--min-language-share", type=float, default=1.0)
    p.add_argument(
        "--keep-truncated", action="store_true", help="keep completions cut by --max-tokens"
    )
    p.add_argument("--min-tokens", type=int, default=1)
    p.add_argument("--max-kept-tokens", type=int, help="drop kept completions longer than this")
    p.add_argument("--no-dedup", action="store_true", help="keep repeated completions of a prompt")
    p.add_argument("--max-per-prompt", type=int, help="k: most rows kept per prompt")
    p.add_argument(
        "--rl-pass-rate",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="also write RL prompts with LOW < pass rate < HIGH (open-r1: 0.2 0.8)",
    )
    p.set_defaults(func=sample_command)

    p = subparsers.add_parser(
        "sft",
        help="SFT (cold start, distillation) with trl's SFTTrainer",
        description=sft_command.__doc__,
    )
    p.add_argument("--model", required=True, help="model folder or hub id")
    p.add_argument("--data", required=True, help="JSONL of prompt/completion (or messages) rows")
    p.add_argument("--output-dir", required=True, help="the model is saved to OUTPUT_DIR/model")
    p.add_argument(
        "settings", nargs="*", help="trl.SFTConfig fields as key=value (learning_rate=1e-5)"
    )
    p.set_defaults(func=sft_command)

    p = subparsers.add_parser(
        "pipeline",
        help="run a multi-stage R1 recipe (sft / grpo / sample stages)",
        description=pipeline_command.__doc__,
    )
    p.add_argument("recipe", help="pipeline recipe YAML")
    p.add_argument(
        "overrides", nargs="*", help="key=value edits of top-level fields (output_dir=...)"
    )
    p.add_argument("--output-dir", help="run folder (default: the recipe's output_dir)")
    p.add_argument(
        "--redo", metavar="STAGE", help="run STAGE again in a clean folder (and every later stage)"
    )
    p.add_argument("--check", action="store_true", help="only validate the recipe")
    p.set_defaults(func=pipeline_command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="grpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
