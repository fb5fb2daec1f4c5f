"""trl's ``GRPOConfig`` fields and what each is in grpo: one declared mapping, :data:`TRL_FIELDS`.

A trl user switches by changing the trainer import: ``GRPOTrainer(args=trl.GRPOConfig(...))``
is converted by :func:`grpo_settings`, field by field, through this table. Each trl field is

* **mapped**: it sets the grpo settings named (a value conversion where the names or units
  differ; several trl fields may set one grpo setting together, e.g. the batch layout);
* **ignored**: it has no effect on what is trained (logging, the hub, data loading, speed
  knobs grpo has its own way of), with the reason;
* **refused**: grpo has no equivalent; a value other than trl's default is an error naming the
  field and the reason, never silently dropped.

A field of the installed trl that is not in the table (a newer trl) is refused the same way
when its value differs from trl's default. ``GRPOConfig(loss_type=...)`` (a trl name given to
grpo's config) is answered from the same table (:func:`hint`). ``docs/trl.md`` is
:func:`render` (``python -m grpo.trl_args``).

trl counts its steps (``max_steps``, ``logging_steps``, ``save_steps``, ``eval_steps``,
``warmup_steps``) in optimizer steps; grpo's ``max_steps``, ``log.steps``,
``checkpoint.steps`` and ``eval.steps`` count GRPO steps (one generation each), which hold
``k = steps_per_generation / gradient_accumulation_steps x num_iterations`` optimizer steps.
The conversions divide by ``k`` (``max_steps`` must be a multiple of it).

This module imports nothing from grpo: :mod:`grpo.config` asks it for hints.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["TRL_FIELDS", "TRL_VERSION", "Rule", "TrlArgsError", "grpo_settings", "hint", "render"]


class TrlArgsError(ValueError):
    """A trl ``GRPOConfig`` holds a setting grpo cannot honour (the message names it)."""


Convert = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Rule:
    """What one trl field is in grpo."""

    kind: Literal["mapped", "ignored", "refused"]
    keys: tuple[str, ...] = ()  # grpo settings it sets (mapped)
    note: str = ""  # semantics (mapped) or the reason (ignored / refused)
    convert: Convert | None = None  # trl args -> {grpo dotted key: value}; may raise


def _same(field: str, key: str, note: str = "") -> Rule:
    return Rule("mapped", (key,), note, lambda a: {key: getattr(a, field)})


def _ignored(reason: str) -> Rule:
    return Rule("ignored", note=reason)


def _refused(reason: str) -> Rule:
    return Rule("refused", note=reason)


def _refuse(field: str, value: Any, why: str) -> TrlArgsError:
    return TrlArgsError(f"trl GRPOConfig {field}={value!r}: {why}")


# ----------------------------------------------------------------------------- joint conversions
def optimizer_steps_per_generation(a: Any) -> int:
    """``k``: trl optimizer steps per generation, i.e. per grpo step (module docstring)."""
    spg, ga = a.steps_per_generation, a.gradient_accumulation_steps
    if spg % ga:
        raise _refuse(
            "steps_per_generation",
            spg,
            f"not a multiple of gradient_accumulation_steps={ga}: an optimizer step would take "
            "completions of two generations; grpo's optimizer steps split one generation "
            "(optim.minibatch_size must divide it)",
        )
    return spg // ga * a.num_iterations


def _batch_layout(a: Any) -> dict[str, Any]:
    world = int(getattr(a, "world_size", 1) or 1)
    per_device, ga = a.per_device_train_batch_size, a.gradient_accumulation_steps
    optimizer_steps_per_generation(a)  # checks steps_per_generation against ga
    gen, g = a.generation_batch_size, a.num_generations
    if gen % g:
        raise _refuse(
            "generation_batch_size", gen, f"not a multiple of num_generations={g} (whole groups)"
        )
    return {
        "rollout.num_generations": g,
        "rollout.prompts_per_step": gen // g,
        "optim.minibatch_size": per_device * world * ga,
        "forward.micro_batch_size": per_device,
    }


_BATCH_NOTE = (
    "trl generates generation_batch_size = per_device_train_batch_size x processes x "
    "steps_per_generation completions at a time (num_generations per prompt) and takes an "
    "optimizer step every gradient_accumulation_steps micro-batches of per_device_train_batch_size"
    ": rollout.prompts_per_step = generation_batch_size / num_generations, "
    "optim.minibatch_size = per_device_train_batch_size x processes x gradient_accumulation_steps, "
    "forward.micro_batch_size = per_device_train_batch_size (a memory knob in grpo). "
    "steps_per_generation must be a multiple of gradient_accumulation_steps."
)


def _steps(field: str, a: Any, *, exact: bool = False) -> int:
    """A trl step count (optimizer steps) in grpo steps."""
    value = getattr(a, field)
    if isinstance(value, float) and value < 1:
        raise _refuse(field, value, "a fraction of the run; give a whole number of steps")
    k = optimizer_steps_per_generation(a)
    if exact and int(value) % k:
        raise _refuse(
            field,
            value,
            f"trl counts optimizer steps, grpo counts GRPO steps of {k} optimizer steps each "
            "(steps_per_generation / gradient_accumulation_steps x num_iterations); give a "
            f"multiple of {k}",
        )
    return max(1, math.ceil(int(value) / k))


def _length(a: Any) -> dict[str, Any]:
    if a.max_steps is not None and a.max_steps > 0:
        return {"max_steps": _steps("max_steps", a, exact=True)}
    return {"num_train_epochs": float(a.num_train_epochs)}


def _backend(a: Any) -> dict[str, Any]:
    if not a.use_vllm:
        return {"rollout.backend": "hf"}
    modes = {"colocate": "vllm", "server": "vllm_server"}
    if a.vllm_mode not in modes:
        raise _refuse("vllm_mode", a.vllm_mode, "grpo knows colocate (vllm) and server")
    return {"rollout.backend": modes[a.vllm_mode]}


_CORRECTIONS = {  # trl's vllm_importance_sampling_mode -> grpo's loss.correction
    "token_truncate": "tis",
    "token_mask": "icepop",
    "sequence_truncate": "tis_sequence",
    "sequence_mask": "mis_sequence",
}


def _tis(a: Any) -> dict[str, Any]:
    if not (a.use_vllm and a.vllm_importance_sampling_correction):
        return {"loss.use_tis": False}
    mode, lo, hi = (
        a.vllm_importance_sampling_mode,
        a.vllm_importance_sampling_clip_min,
        a.vllm_importance_sampling_clip_max,
    )
    if mode not in _CORRECTIONS:
        raise _refuse("vllm_importance_sampling_mode", mode, f"one of {sorted(_CORRECTIONS)}")
    out: dict[str, Any] = {"loss.use_tis": True, "loss.correction": _CORRECTIONS[mode]}
    if mode == "token_truncate":
        if lo is not None:
            raise _refuse(
                "vllm_importance_sampling_clip_min",
                lo,
                "grpo's token-level TIS (loss.correction='tis') truncates from above only; "
                "leave clip_min None",
            )
        return {**out, "loss.is_cap": hi}
    options = {
        "token_mask": {"low": lo, "high": hi},
        "sequence_truncate": {"cap": hi, "floor": lo},
        "sequence_mask": {"low": lo, "high": hi},
    }[mode]
    return {**out, "loss.correction_options": options}


_AGGREGATION = {"dapo": "token_mean", "grpo": "seq_mean_token_mean", "dr_grpo": "seq_sum_max_len"}


def _objective(a: Any) -> dict[str, Any]:
    """loss_type, epsilon, epsilon_high and the SAPO temperatures -> grpo's objective."""
    high = a.epsilon if a.epsilon_high is None else a.epsilon_high
    if a.loss_type in _AGGREGATION:  # the clipped surrogate, with trl's aggregation
        return {
            "loss.aggregation": _AGGREGATION[a.loss_type],
            "loss.eps_low": a.epsilon,
            "loss.eps_high": high,
        }
    if a.loss_type == "cispo":  # trl: clamp(r, max=epsilon_high), a token mean
        if high < 1:
            raise _refuse(
                "epsilon_high",
                a.epsilon_high,
                f"trl's loss_type='cispo' caps the IS weight at epsilon_high (None: epsilon = "
                f"{a.epsilon}); grpo's cispo caps it at 1 + loss.options.eps_high >= 1: set "
                "epsilon_high >= 1 (trl recommends 5.0)",
            )
        return {
            "loss.objective": "cispo",
            "loss.aggregation": "token_mean",
            "loss.options": {"eps_low": 1.0, "eps_high": high - 1.0},
        }
    if a.loss_type == "sapo":  # trl: a per-sequence token mean, like loss_type='grpo'
        return {
            "loss.objective": "sapo",
            "loss.aggregation": "seq_mean_token_mean",
            "loss.options": {"tau_pos": a.sapo_temperature_pos, "tau_neg": a.sapo_temperature_neg},
        }
    raise _refuse(
        "loss_type",
        a.loss_type,
        f"grpo maps {sorted([*_AGGREGATION, 'cispo', 'sapo'])}; bnpo (a token mean per local "
        "micro-batch), vespo and luspo have no equivalent",
    )


_ESTIMATORS = {"group": "grpo", "batch": "batch_std", "none": "dr_grpo"}


def _advantages(a: Any) -> dict[str, Any]:
    scale = {True: "group", False: "none"}.get(a.scale_rewards, a.scale_rewards)
    if scale not in _ESTIMATORS:
        raise _refuse("scale_rewards", a.scale_rewards, f"one of {sorted(_ESTIMATORS)}")
    if a.multi_objective_aggregation == "normalize_then_sum":  # GDPO; trl ignores scale_rewards
        return {"rollout.advantage_estimator": "gdpo"}
    if a.multi_objective_aggregation != "sum_then_normalize":
        raise _refuse(
            "multi_objective_aggregation",
            a.multi_objective_aggregation,
            "sum_then_normalize (grpo, batch_std, dr_grpo by scale_rewards) or normalize_then_sum "
            "(gdpo)",
        )
    return {"rollout.advantage_estimator": _ESTIMATORS[scale]}


def _entropy(a: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"loss.entropy_coef": a.entropy_coef}
    if getattr(a, "use_adaptive_entropy", False):
        out.update(
            {
                "loss.entropy_target": a.entropy_target,
                "loss.entropy_coef_delta": a.entropy_coef_delta,
                "loss.entropy_coef_min": a.entropy_coef_min,
                "loss.entropy_coef_max": a.entropy_coef_max,
            }
        )
    return out


def _adam(a: Any) -> dict[str, Any]:
    if a.adam_epsilon != 1e-8:
        raise _refuse("adam_epsilon", a.adam_epsilon, "grpo's AdamW uses torch's eps=1e-8")
    if a.optim not in ("adamw_torch", "adamw_torch_fused"):
        raise _refuse("optim", a.optim, "grpo's optimizer is torch's AdamW (adamw_torch)")
    return {"optim.adam_betas": [a.adam_beta1, a.adam_beta2]}


_SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant_with_warmup": "constant"}


def _schedule(a: Any) -> dict[str, Any]:
    name = str(getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type))
    if name == "constant" and a.warmup_steps:
        raise _refuse("lr_scheduler_type", name, "trl's constant has no warm-up; grpo's has")
    if name not in _SCHEDULES and name != "constant":
        raise _refuse("lr_scheduler_type", name, "grpo has linear, cosine and constant")
    out: dict[str, Any] = {"optim.lr_schedule": _SCHEDULES.get(name, "constant")}
    w = a.warmup_steps or 0
    if 0 < w < 1:
        out["optim.warmup_ratio"] = float(w)
    else:
        out["optim.warmup_steps"] = int(w)
    return out


def _grad_norm(a: Any) -> dict[str, Any]:
    return {"optim.max_grad_norm": a.max_grad_norm if a.max_grad_norm else None}


def _dtype(a: Any) -> dict[str, Any]:
    if a.fp16:
        raise _refuse(
            "fp16",
            a.fp16,
            "grpo has no float16 autocast (forward.dtype='float16' stores weights "
            "in float16); use bf16",
        )
    return {"forward.dtype": "auto" if a.bf16 else "float32"}


def _use_cpu(a: Any) -> dict[str, Any]:
    import torch

    if a.use_cpu and torch.cuda.is_available():
        raise _refuse("use_cpu", True, "grpo trains on the GPU when there is one")
    return {}


def _sampling(a: Any) -> dict[str, Any]:
    return {
        "sampling.max_tokens": a.max_completion_length,
        "sampling.temperature": a.temperature,
        "sampling.top_p": a.top_p,
        "sampling.top_k": a.top_k or 0,
        "sampling.min_p": a.min_p or 0.0,
        "sampling.repetition_penalty": a.repetition_penalty,
    }


def _report_to(a: Any) -> dict[str, Any]:
    value = a.report_to
    names = [value] if isinstance(value, str) else list(value or [])
    names = [n for n in names if n != "none"]
    unknown = [n for n in names if n not in ("wandb", "tensorboard")]
    if unknown:
        raise _refuse("report_to", value, "grpo reports to wandb and tensorboard")
    return {"log.report_to": names}


def _logging(a: Any) -> dict[str, Any]:
    if a.logging_strategy not in ("steps", "no") and str(a.logging_strategy) not in (
        "IntervalStrategy.STEPS",
        "IntervalStrategy.NO",
    ):
        raise _refuse("logging_strategy", a.logging_strategy, "grpo logs every log.steps steps")
    return {"log.steps": _steps("logging_steps", a)}


def _strategy(value: Any) -> str:
    return str(getattr(value, "value", value))


def _saving(a: Any) -> dict[str, Any]:
    strategy = _strategy(a.save_strategy)
    out: dict[str, Any] = {}
    if a.save_total_limit is not None:
        out["checkpoint.total_limit"] = a.save_total_limit
    if strategy == "no":
        return {**out, "checkpoint.steps": 0}
    if strategy != "steps":
        raise _refuse("save_strategy", strategy, "grpo saves every checkpoint.steps steps")
    return {**out, "checkpoint.steps": _steps("save_steps", a)}


def _evaluating(a: Any) -> dict[str, Any]:
    strategy = _strategy(a.eval_strategy)
    if strategy == "no":
        return {"eval.steps": 0}
    if strategy != "steps":
        raise _refuse("eval_strategy", strategy, "grpo evaluates every eval.steps steps")
    field = "eval_steps" if a.eval_steps is not None else "logging_steps"
    return {"eval.steps": _steps(field, a)}


def _eval_samples(a: Any) -> dict[str, Any]:
    return {} if a.num_generations_eval is None else {"eval.samples": a.num_generations_eval}


def _accelerator_config(a: Any) -> dict[str, Any]:
    from transformers.trainer_pt_utils import AcceleratorConfig

    if a.accelerator_config not in (None, {}, AcceleratorConfig()):
        raise _refuse(
            "accelerator_config",
            a.accelerator_config,
            "no grpo equivalent: grpo builds its own Accelerator; leave trl's default",
        )
    return {}


# ----------------------------------------------------------------------------- the mapping
_LAYOUT = Rule(
    "mapped",
    (
        "rollout.num_generations",
        "rollout.prompts_per_step",
        "optim.minibatch_size",
        "forward.micro_batch_size",
    ),
    _BATCH_NOTE,
    _batch_layout,
)
_LENGTH = Rule(
    "mapped",
    ("max_steps", "num_train_epochs"),
    "max_steps (trl: optimizer steps, -1 = use epochs) / k GRPO steps, a multiple of k; else "
    "num_train_epochs passes over the training prompts",
    _length,
)
_BACKEND = Rule(
    "mapped",
    ("rollout.backend",),
    "use_vllm=False -> hf; vllm_mode colocate -> vllm, server -> vllm_server",
    _backend,
)
_TIS = Rule(
    "mapped",
    ("loss.use_tis", "loss.correction", "loss.is_cap", "loss.correction_options"),
    "with use_vllm: vllm_importance_sampling_mode token_truncate -> loss.correction tis "
    "(clip_max -> loss.is_cap; clip_min must be None), token_mask -> icepop, sequence_truncate "
    "-> tis_sequence, sequence_mask (trl's default) -> mis_sequence, clip_min / clip_max -> "
    "their low (floor) / high (cap); without use_vllm: off",
    _tis,
)
_ADVANTAGES = Rule(
    "mapped",
    ("rollout.advantage_estimator",),
    "group -> grpo (group std), batch -> batch_std, none (or False) -> dr_grpo (no std); "
    "multi_objective_aggregation normalize_then_sum -> gdpo (scale_rewards ignored, as trl; "
    "grpo's eps 1e-6, trl's 1e-4)",
    _advantages,
)
_OBJECTIVE = Rule(
    "mapped",
    ("loss.objective", "loss.aggregation", "loss.eps_low", "loss.eps_high", "loss.options"),
    "loss_type dapo -> token_mean (tokens of the optimizer step; with steps_per_generation > "
    "gradient_accumulation_steps trl divides by the generation's mean instead), grpo -> "
    "seq_mean_token_mean, dr_grpo -> seq_sum_max_len, each with epsilon -> loss.eps_low and "
    "epsilon_high (None: epsilon) -> loss.eps_high; cispo -> loss.objective cispo, token_mean, "
    "options eps_high = epsilon_high - 1 (trl's epsilon_high is an absolute cap), eps_low 1 (no "
    "lower bound); sapo -> loss.objective sapo, seq_mean_token_mean, options tau_pos / tau_neg "
    "from sapo_temperature_pos / _neg; bnpo, vespo, luspo refused",
    _objective,
)
_ENTROPY = Rule(
    "mapped",
    (
        "loss.entropy_coef",
        "loss.entropy_target",
        "loss.entropy_coef_delta",
        "loss.entropy_coef_min",
        "loss.entropy_coef_max",
    ),
    "entropy_coef -> loss.entropy_coef; with use_adaptive_entropy, entropy_target and "
    "entropy_coef_delta/min/max -> loss.* (without it: static, loss.entropy_target None). The "
    "term is a token mean over the whole minibatch, not trl's per-micro-batch mean / "
    "gradient_accumulation_steps (equal when micro-batches hold equal token counts)",
    _entropy,
)
_ADAM = Rule(
    "mapped",
    ("optim.adam_betas",),
    "(adam_beta1, adam_beta2); optim must be adamw_torch(_fused), adam_epsilon 1e-8",
    _adam,
)
_SCHEDULE = Rule(
    "mapped",
    ("optim.lr_schedule", "optim.warmup_steps", "optim.warmup_ratio"),
    "linear / cosine / constant_with_warmup -> constant; warmup_steps >= 1 -> optim."
    "warmup_steps (optimizer steps in both), < 1 -> optim.warmup_ratio",
    _schedule,
)
_SAVING = Rule(
    "mapped",
    ("checkpoint.steps", "checkpoint.total_limit"),
    "save_strategy steps: save_steps / k (rounded up) -> checkpoint.steps; no -> 0; "
    "save_total_limit -> checkpoint.total_limit (None: grpo keeps its default, 2)",
    _saving,
)
_EVAL = Rule(
    "mapped",
    ("eval.steps",),
    "eval_strategy steps: eval_steps (None: logging_steps) / k, rounded up; no -> 0 (grpo "
    "still evaluates an eval_dataset at the start and the end)",
    _evaluating,
)
_SAMPLING = Rule(
    "mapped",
    (
        "sampling.max_tokens",
        "sampling.temperature",
        "sampling.top_p",
        "sampling.top_k",
        "sampling.min_p",
        "sampling.repetition_penalty",
    ),
    "the same sampling parameters (max_completion_length -> sampling.max_tokens; min_p None -> 0)",
    _sampling,
)

_TA_HARMLESS = "a transformers.Trainer setting trl's GRPOTrainer does not use for training"
_LOGGING = "logging only; grpo writes metrics.jsonl / completions.jsonl (log section)"
_HUB = "only read when pushing to the hub; push_to_hub itself is refused"
_LOADER = "data loading; grpo samples prompts itself (seeded by seed)"
_EVAL_ONLY = "evaluation batch layout / bookkeeping; no effect on training"
_DIST = "distributed launch knob; grpo's processes come from accelerate launch / torchrun"

TRL_FIELDS: dict[str, Rule] = {
    # --- the run
    "output_dir": _same("output_dir", "output_dir"),
    "seed": _same("seed", "seed"),
    "max_steps": _LENGTH,
    "num_train_epochs": _LENGTH,
    "resume_from_checkpoint": _same(
        "resume_from_checkpoint",
        "resume_from",
        "a checkpoint folder; GRPOTrainer.train(resume_from_checkpoint=True or a folder) as well",
    ),
    # --- batch layout
    "num_generations": _LAYOUT,
    "per_device_train_batch_size": _LAYOUT,
    "gradient_accumulation_steps": _LAYOUT,
    "steps_per_generation": _LAYOUT,
    "generation_batch_size": _LAYOUT,
    "num_iterations": _same("num_iterations", "optim.num_iterations", "mu in both"),
    # --- sampling
    "max_completion_length": _SAMPLING,
    "temperature": _SAMPLING,
    "top_p": _SAMPLING,
    "top_k": _SAMPLING,
    "min_p": _SAMPLING,
    "repetition_penalty": _SAMPLING,
    "chat_template_kwargs": Rule(
        "mapped",
        ("rollout.chat_template_kwargs",),
        "None -> {}",
        lambda a: {"rollout.chat_template_kwargs": dict(a.chat_template_kwargs or {})},
    ),
    "generation_kwargs": _refused("extra generate() arguments: grpo samples with sampling.*"),
    "cache_implementation": _ignored("an HF generate() cache speed knob; same samples"),
    "use_transformers_paged": _ignored("an HF generation speed knob; grpo's hf generator"),
    "use_transformers_continuous_batching": _ignored(
        "an HF generation speed knob; grpo's hf generator"
    ),
    "transformers_continuous_batching_config": _ignored(
        "read only with use_transformers_continuous_batching (ignored)"
    ),
    "mask_truncated_completions": _same(
        "mask_truncated_completions", "rollout.mask_truncated_completions"
    ),
    "shuffle_dataset": _refused("grpo always samples prompts in a seeded random order"),
    "max_tool_calling_iterations": _refused(
        "tool calling in grpo: GRPOTrainer(wrap_generator=MultiTurnSettings(...).build)"
    ),
    # --- vLLM
    "use_vllm": _BACKEND,
    "vllm_mode": _BACKEND,
    "vllm_enable_sleep_mode": _same("vllm_enable_sleep_mode", "vllm.sleep"),
    "vllm_gpu_memory_utilization": _same(
        "vllm_gpu_memory_utilization", "vllm.gpu_memory_utilization"
    ),
    "vllm_tensor_parallel_size": _same("vllm_tensor_parallel_size", "vllm.tensor_parallel_size"),
    "vllm_max_model_length": _same("vllm_max_model_length", "vllm.max_model_len"),
    "vllm_server_host": _same("vllm_server_host", "vllm.server_host"),
    "vllm_server_port": _same("vllm_server_port", "vllm.server_port"),
    "vllm_server_base_url": _refused("give vllm_server_host and vllm_server_port"),
    "vllm_server_timeout": _ignored(
        "how long to wait for the server to come up; no training effect"
    ),
    "vllm_group_port": _refused("grpo's weight-sync client picks its own port"),
    "vllm_model_impl": _refused("grpo's engine uses vLLM's own model implementation"),
    "vllm_structured_outputs_regex": _refused("no structured outputs in grpo's rollouts"),
    "vllm_importance_sampling_correction": _TIS,
    "vllm_importance_sampling_mode": _TIS,
    "vllm_importance_sampling_clip_max": _TIS,
    "vllm_importance_sampling_clip_min": _TIS,
    "vllm_importance_sampling_cap": _refused("deprecated in trl; use the clip_max field"),
    "ds3_gather_for_generation": _ignored("DeepSpeed ZeRO-3 only (deepspeed is refused)"),
    # --- loss
    "beta": _same("beta", "loss.beta", "KL coefficient, k3 estimator in both"),
    "use_bias_correction_kl": _same(
        "use_bias_correction_kl", "loss.kl_ratio_correction", "matters only with beta > 0"
    ),
    "epsilon": _OBJECTIVE,
    "epsilon_high": _OBJECTIVE,
    "delta": _refused(
        "trl's two-sided ratio clip (INTELLECT-2) differs from grpo's "
        "loss.dual_clip (for negative advantages)"
    ),
    "importance_sampling_level": _same(
        "importance_sampling_level", "loss.ratio_level", "token: GRPO, sequence: GSPO"
    ),
    "loss_type": _OBJECTIVE,
    "scale_rewards": _ADVANTAGES,
    "multi_objective_aggregation": _ADVANTAGES,
    "reward_weights": _same("reward_weights", "reward.weights"),
    "sync_ref_model": _refused("grpo's reference model is fixed (TR-DPO syncing is not there)"),
    "ref_model_mixup_alpha": _ignored("read only with sync_ref_model (refused)"),
    "ref_model_sync_steps": _ignored("read only with sync_ref_model (refused)"),
    "top_entropy_quantile": _refused("no high-entropy token masking in grpo's loss"),
    **{
        n: _ENTROPY
        for n in (
            "entropy_coef",
            "use_adaptive_entropy",
            "entropy_target",
            "entropy_coef_delta",
            "entropy_coef_min",
            "entropy_coef_max",
        )
    },
    "sapo_temperature_pos": _OBJECTIVE,
    "sapo_temperature_neg": _OBJECTIVE,
    **{
        n: _ignored("read only with loss_type vespo (refused)")
        for n in (
            "vespo_k_pos",
            "vespo_lambda_pos",
            "vespo_k_neg",
            "vespo_lambda_neg",
        )
    },
    "off_policy_mask_threshold": _refused("no off-policy sequence masking in grpo's loss"),
    # --- optimizer
    "learning_rate": _same("learning_rate", "optim.learning_rate"),
    "weight_decay": _same("weight_decay", "optim.weight_decay"),
    "adam_beta1": _ADAM,
    "adam_beta2": _ADAM,
    "adam_epsilon": _ADAM,
    "optim": _ADAM,
    "optim_args": _refused("grpo's AdamW takes no extra arguments"),
    "optim_target_modules": _refused("grpo's AdamW trains every trainable parameter"),
    "max_grad_norm": Rule(
        "mapped", ("optim.max_grad_norm",), "0 or None -> None (no clipping)", _grad_norm
    ),
    "lr_scheduler_type": _SCHEDULE,
    "warmup_steps": _SCHEDULE,
    "lr_scheduler_kwargs": _refused("grpo's schedules take no extra arguments"),
    # --- the model and its forward
    "gradient_checkpointing": _same("gradient_checkpointing", "forward.gradient_checkpointing"),
    "gradient_checkpointing_kwargs": _refused("grpo's gradient checkpointing takes no arguments"),
    "bf16": Rule(
        "mapped",
        ("forward.dtype",),
        "bf16 -> auto (float32 weights, bfloat16 autocast on a GPU that has it; on CPU grpo "
        "computes in float32), neither -> float32; fp16 refused",
        _dtype,
    ),
    "fp16": Rule("mapped", ("forward.dtype",), "see bf16", _dtype),
    "tf32": _ignored("a GPU matmul precision knob; grpo leaves torch's setting"),
    "use_cpu": Rule("mapped", (), "accepted on a machine without a GPU; refused on one", _use_cpu),
    "model_init_kwargs": _refused("grpo loads the model itself; load it and pass the model"),
    "trust_remote_code": _refused("grpo loads models without remote code; pass a loaded model"),
    "router_aux_loss_coef": _refused("no MoE router loss in grpo"),
    "disable_dropout": _refused("grpo trains with the model's own dropout settings"),
    "cast_lm_head_to_fp32": _refused("grpo's lm head runs in the model's dtype"),
    "torch_compile": _refused("grpo does not torch.compile the model"),
    "torch_compile_backend": _ignored("read only with torch_compile (refused)"),
    "torch_compile_mode": _ignored("read only with torch_compile (refused)"),
    "use_liger_kernel": _refused("grpo has no Liger kernels"),
    "liger_kernel_config": _ignored("read only with use_liger_kernel (refused)"),
    "use_cache": _ignored("the KV cache of training forwards; grpo sets it itself"),
    "pad_to_multiple_of": _ignored(
        "padding layout; grpo packs micro-batches (forward.padding_free)"
    ),
    "neftune_noise_alpha": _refused("no NEFTune noise in grpo"),
    "label_smoothing_factor": _refused("no label smoothing in grpo's loss"),
    "deepspeed": _refused("grpo has no DeepSpeed; forward.fsdp shards with FSDP2"),
    "fsdp": _refused("set grpo's forward.fsdp (FSDP2, one unit per block) instead"),
    "fsdp_config": _refused("set grpo's forward.fsdp (FSDP2, one unit per block) instead"),
    "parallelism_config": _refused("grpo's parallelism: data parallel or forward.fsdp"),
    "accelerator_config": Rule(
        "refused", note="grpo builds its own Accelerator", convert=_accelerator_config
    ),
    "average_tokens_across_devices": _refused(
        "grpo always normalises by the tokens of all processes"
    ),
    "auto_find_batch_size": _refused("grpo does not search for a batch size"),
    "torch_empty_cache_steps": _ignored("a memory housekeeping knob; no effect on the update"),
    "full_determinism": _refused(
        "grpo seeds everything from seed but does not force deterministic kernels"
    ),
    "data_seed": _refused("grpo seeds the data order from seed"),
    "enable_jit_checkpoint": _refused("no just-in-time checkpoints in grpo"),
    # --- logging and trackers
    "logging_steps": Rule("mapped", ("log.steps",), "logging_steps / k (rounded up)", _logging),
    "logging_strategy": Rule("mapped", ("log.steps",), "steps only", _logging),
    "report_to": Rule("mapped", ("log.report_to",), "wandb / tensorboard (none -> [])", _report_to),
    "log_completions": _ignored("grpo always writes log.completions completions per step"),
    **{
        n: _ignored(_LOGGING)
        for n in (
            "run_name",
            "project",
            "trackio_space_id",
            "trackio_bucket_id",
            "trackio_static_space_id",
            "logging_first_step",
            "logging_nan_inf_filter",
            "log_on_each_node",
            "log_level",
            "log_level_replica",
            "include_num_input_tokens_seen",
            "disable_tqdm",
            "log_multimodal",
            "num_completions_to_print",
            "log_unique_prompts",
            "skip_memory_metrics",
            "debug",
        )
    },
    "log_completions_hub_repo": _refused("grpo does not push completions to the hub"),
    # --- checkpoints and the hub
    "save_strategy": _SAVING,
    "save_steps": _SAVING,
    "save_total_limit": _SAVING,
    "save_only_model": _refused("grpo's checkpoints always hold the optimizer (resumable)"),
    "save_on_each_node": _ignored("where checkpoints are written on multi-node runs"),
    "push_to_hub": _refused("grpo does not push to the hub; push output_dir/final yourself"),
    **{
        n: _ignored(_HUB)
        for n in (
            "hub_token",
            "hub_private_repo",
            "hub_model_id",
            "hub_strategy",
            "hub_always_push",
            "hub_revision",
        )
    },
    "ignore_data_skip": _ignored("resuming: grpo re-seeds each step, no data to skip"),
    "restore_callback_states_from_checkpoint": _refused(
        "grpo's checkpoints do not save the callbacks' states (GRPOTrainer(callbacks=...) "
        "calls TrainerCallbacks, but a stateful one starts afresh on resume)"
    ),
    "load_best_model_at_end": _refused("grpo keeps the last model"),
    "metric_for_best_model": _ignored("read only with load_best_model_at_end (refused)"),
    "greater_is_better": _ignored("read only with load_best_model_at_end (refused)"),
    # --- evaluation
    "eval_strategy": _EVAL,
    "eval_steps": _EVAL,
    "num_generations_eval": Rule(
        "mapped",
        ("eval.samples",),
        "completions per eval prompt (None: grpo's default)",
        _eval_samples,
    ),
    "eval_on_start": _ignored("grpo evaluates an eval_dataset at the start anyway"),
    **{
        n: _ignored(_EVAL_ONLY)
        for n in (
            "per_device_eval_batch_size",
            "eval_delay",
            "prediction_loss_only",
            "eval_do_concat_batches",
            "eval_use_gather_object",
            "eval_accumulation_steps",
            "include_for_metrics",
            "batch_eval_metrics",
            "bf16_full_eval",
            "fp16_full_eval",
        )
    },
    # --- data loading and launch
    **{
        n: _ignored(_LOADER)
        for n in (
            "dataloader_drop_last",
            "dataloader_num_workers",
            "dataloader_pin_memory",
            "dataloader_persistent_workers",
            "dataloader_prefetch_factor",
            "dataloader_multiprocessing_context",
            "dataloader_in_order",
            "remove_unused_columns",
            "label_names",
            "length_column_name",
        )
    },
    "train_sampling_strategy": _refused("grpo samples prompts in a seeded random order"),
    **{
        n: _ignored(_DIST)
        for n in (
            "ddp_find_unused_parameters",
            "ddp_bucket_cap_mb",
            "ddp_broadcast_buffers",
            "ddp_static_graph",
            "ddp_backend",
            "ddp_timeout",
            "local_rank",
        )
    },
    **{n: _ignored(_TA_HARMLESS) for n in ("do_train", "do_eval", "do_predict")},
}
"""trl ``GRPOConfig`` field -> :class:`Rule` (written for trl :data:`TRL_VERSION`; module
docstring)."""

TRL_VERSION = "1.16"
"""The trl release whose ``GRPOConfig`` fields :data:`TRL_FIELDS` lists one by one."""


# ----------------------------------------------------------------------------- conversion
def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _differs(value: Any, default: Any) -> bool:
    if default is dataclasses.MISSING:
        return True
    if not value and not default:  # None / [] / "" / 0 / False: all "unset"
        return False
    return bool(value != default)


def grpo_settings(args: Any) -> dict[str, Any]:
    """A trl ``GRPOConfig`` as grpo's settings: nested data for ``grpo.GRPOConfig(**...)``.

    Raises :class:`TrlArgsError` naming the first trl field grpo cannot honour (a refused or
    unknown field away from trl's default, or a mapped value out of grpo's range)."""
    if not dataclasses.is_dataclass(args):
        raise TypeError(f"expected a trl GRPOConfig, got {type(args).__name__}")
    flat: dict[str, Any] = {}
    done: set[int] = set()
    for field in dataclasses.fields(args):
        name, value = field.name, getattr(args, field.name)
        rule = TRL_FIELDS.get(name)
        if rule is not None and rule.kind == "refused" and rule.convert is not None:
            rule.convert(args)  # a refused field whose trl default is filled in by trl
            continue
        if rule is None or rule.kind == "refused":
            if _differs(value, _default(field)):
                why = rule.note if rule else "not in grpo's mapping (grpo.trl_args.TRL_FIELDS)"
                raise _refuse(name, value, f"no grpo equivalent: {why}; leave trl's default")
            continue
        if rule.convert is None or id(rule.convert) in done:
            continue
        done.add(id(rule.convert))
        flat.update(rule.convert(args))
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *path, last = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def hint(name: str) -> str | None:
    """What grpo's config says to a trl field name given to it, or None if it is not trl's."""
    rule = TRL_FIELDS.get(name)
    if rule is None:
        return None
    if rule.kind == "mapped":
        where = ", ".join(rule.keys) or "nothing"
        how = f" ({rule.note})" if rule.note else ""
        section, _, key = (rule.keys or ("",))[0].rpartition(".")
        example = f"GRPOConfig({section}={{{key!r}: ...}})" if section else f"GRPOConfig({key}=...)"
        return (
            f"{name!r} is trl's name; in grpo it is {where}{how}. Set that ({example}), or "
            "pass the trl.GRPOConfig itself as GRPOTrainer(args=...)"
        )
    if rule.kind == "ignored":
        return f"{name!r} is a trl setting grpo has no use for: {rule.note}"
    return f"{name!r} is a trl setting grpo does not have: {rule.note}"


def render() -> str:
    """docs/trl.md: the mapping as a table (``python -m grpo.trl_args > docs/trl.md``)."""
    lines = [
        "# From trl to grpo",
        "",
        "<!-- generated by `python -m grpo.trl_args > docs/trl.md` from grpo.trl_args.TRL_FIELDS;"
        " tests/test_trl_args.py checks it -->",
        "",
        "A trl user switches by changing the trainer import: `from grpo import GRPOTrainer`",
        "takes trl's keyword names (`model`, `reward_funcs` (one function or a list), `args`,",
        "`train_dataset`, `eval_dataset`, `processing_class`, `peft_config`, `callbacks`:",
        "transformers `TrainerCallback`s), keeps `trainer.state` (a `TrainerState` with",
        "`log_history`), resumes with `train(resume_from_checkpoint=...)` and saves a LoRA",
        "run's final model as its adapter (docs/trainer.md), and a",
        "`trl.GRPOConfig` as `args` is converted field by field with the table below",
        "(`grpo.trl_args.TRL_FIELDS`). *mapped*: the grpo settings it sets; *ignored*: no",
        "effect on training; *refused*: no grpo equivalent, so a value other than trl's",
        "default is an error naming the field. A field of a newer trl that is not listed is",
        "refused the same way. Giving a trl name to `grpo.GRPOConfig(...)` (`loss_type=`)",
        "is an error that names the grpo setting.",
        "",
        "trl counts `max_steps`, `logging_steps`, `save_steps`, `eval_steps` and",
        "`warmup_steps` in optimizer steps; a grpo step is one generation, `k =",
        "steps_per_generation / gradient_accumulation_steps x num_iterations` optimizer",
        "steps. The step counts are divided by `k` (`max_steps` must be a multiple of it);",
        "`warmup_steps` stays in optimizer steps (grpo's `optim.warmup_steps` counts those).",
        "",
        "| trl field | | grpo setting | semantics / reason |",
        "|---|---|---|---|",
    ]
    for name in sorted(TRL_FIELDS):
        rule = TRL_FIELDS[name]
        keys = ", ".join(f"`{k}`" for k in rule.keys) if rule.kind == "mapped" else ""
        note = rule.note.replace("|", "/")
        lines.append(f"| `{name}` | {rule.kind} | {keys} | {note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
