"""Running one pipeline stage from its *resolved* config (every reference replaced by a path).

Each runner takes the stage folder and the resolved config (a plain dict, the one saved as
``config.yaml`` there) and returns ``(outputs, summary)``: ``outputs`` maps output names to
paths (``model`` -> a saved HF folder, datasets -> JSONL files), ``summary`` holds the few
numbers shown on the pipeline's index page. The pieces are those of the commands: a grpo stage
is built by :func:`grpo.recipes.assemble.build_trainer` (``grpo train``), a sample stage from
:func:`grpo.recipes.build_rewards` and :func:`grpo.models.build_generator` (``grpo sample``),
an sft stage by :func:`grpo.pipeline.sft` (``grpo sft``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grpo.pipeline.pages import write_sample_report, write_sft_report
from grpo.recipes.datasets import load_rows  # the one data loader, shared with grpo train


def run_sft(stage_dir: Path, cfg: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    from grpo.sft import sft

    result = sft(cfg["model"], load_rows(cfg["data"]), stage_dir, **cfg.get("sft", {}))
    losses = [r["loss"] for r in result.log_history if "loss" in r]
    report = write_sft_report(stage_dir, result.log_history)
    summary = {
        "first loss": losses[0] if losses else None,
        "last loss": losses[-1] if losses else None,
        "seconds": round(result.seconds, 1),
        "report": report,
    }
    return {"model": str(result.model_dir)}, summary


def run_grpo(stage_dir: Path, cfg: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """A grpo stage: the stage is a :class:`grpo.recipes.schema.Recipe`, built into a trainer by
    :func:`grpo.recipes.assemble.build_trainer` (as ``grpo train`` builds one), with its rows
    from ``data`` / ``eval_data`` when given, its run in ``<stage>/grpo``."""
    from grpo.checkpoint import list_checkpoints
    from grpo.pipeline.recipe import GRPOStage
    from grpo.recipes.assemble import build_trainer

    stage = GRPOStage.model_validate(cfg)
    run_dir = stage_dir / "grpo"
    teacher = {"distill.teacher": stage.teacher} if stage.teacher else {}
    # An interrupted stage (its folder kept, grpo.pipeline.run): resume its latest checkpoint,
    # or start it over when it left none; the folder is the pipeline's own.
    again = (
        {"resume_from": "latest"} if list_checkpoints(run_dir) else {"overwrite_output_dir": True}
    )
    trainer_cfg = stage.trainer.updated(
        {**teacher, **again, "output_dir": str(run_dir), "checkpoint.final_model": False}
    )
    stage = stage.model_copy(update={"trainer": trainer_cfg})
    trainer = build_trainer(
        stage,
        train_rows=load_rows(cfg["data"]) if cfg.get("data") else None,
        eval_rows=load_rows(cfg["eval_data"]) if cfg.get("eval_data") else None,
    )
    try:
        metrics = trainer.train() or {}
        trainer.save_model(stage_dir / "model", merge_lora=True)  # later stages load plain weights
    finally:
        trainer.close()
    summary: dict[str, Any] = {
        k: v for k, v in dict(metrics).items() if k in ("reward/total/mean", "train/accuracy")
    }
    evals = run_dir / "eval.jsonl"
    if evals.exists():
        last = [json.loads(line) for line in evals.read_text().splitlines() if line.strip()][-1]
        summary.update({k: v for k, v in last.items() if k.endswith("accuracy")})
    try:
        from grpo.report import write_report

        summary["report"] = str(write_report(run_dir).relative_to(stage_dir))
    except FileNotFoundError:  # nothing logged (e.g. logging_steps > max_steps): no curves to draw
        summary["report"] = None
    return {"model": str(stage_dir / "model")}, summary


def run_sample(stage_dir: Path, cfg: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any]]:
    """A sample stage: :func:`grpo.pipeline.rejection_sample` with the stage's rewards
    (:func:`grpo.recipes.build_rewards`) and generator (:func:`grpo.models.build_generator`)."""
    from grpo.models import build_generator
    from grpo.pipeline.recipe import SampleStage
    from grpo.pipeline.sample import OtherSamplesError, rejection_sample
    from grpo.recipes import build_rewards
    from grpo.rewards import CombinedReward

    stage = SampleStage.model_validate(cfg)
    rewards, weights = build_rewards(stage.rewards)
    rows = load_rows(cfg["data"])
    generator = build_generator(stage.rollout, stage.vllm, cfg["model"], seed=stage.seed)
    try:
        result = rejection_sample(
            generator,
            rows,
            CombinedReward(rewards, weights),
            output_dir=stage_dir / "samples",
            n=stage.n,
            sampling=stage.sampling,
            keep=stage.keep,
            seed=stage.seed,
            batch_size=stage.batch_size,
            rl_pass_rate=stage.rl_pass_rate,
            model_name=cfg["model"],
        )
    except OtherSamplesError as e:  # same stage settings, but its data or model changed since
        raise OtherSamplesError(
            f"{e}; in a pipeline: rerun with --redo {stage.name} to sample this stage again"
        ) from e
    finally:
        generator.close()
    outputs = {"sft": str(result.sft_path)}
    if result.rl_prompts_path is not None:
        outputs["rl_prompts"] = str(result.rl_prompts_path)
    scored = [r for r in result.pass_rates if r is not None]
    summary = {
        "kept rows": result.counts["kept"],
        "prompts": len(result.pass_rates),
        "mean pass rate": sum(scored) / len(scored) if scored else None,
        "report": write_sample_report(stage_dir, result),
    }
    return outputs, summary


RUNNERS = {"sft": run_sft, "grpo": run_grpo, "sample": run_sample}

REAPPLIED = {"sample": frozenset({"keep", "rl_pass_rate"})}
"""Per stage type, the settings its runner re-applies to the work its folder already holds: a
sample stage whose only changes are these re-filters its stored samples without generating
again (:func:`grpo.pipeline.rejection_sample`); any other change starts the stage over."""
