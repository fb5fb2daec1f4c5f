"""``GRPOConfig``: every setting of a GRPO run, typed, documented and validated at construction.

The root holds what identifies a run (folder, seed, length); everything else lives in typed
sections, one per component that reads it, so that a component takes its section and nothing
else (the learner ``loss``, ``optim`` and ``forward``; the rollout source ``rollout`` and
``sampling``; the generator factory ``vllm``)::

    GRPOConfig(
        output_dir="runs/x", seed=0, max_steps=100,
        rollout=RolloutConfig(num_generations=16, prompts_per_step=8, backend="vllm"),
        sampling=SamplingConfig(temperature=1.0, max_tokens=1024),
        loss=LossConfig(beta=0.001, eps_high=0.28),
        optim=OptimConfig(learning_rate=1e-6),
    )

or, the same in YAML (``trainer:`` of a recipe) and on the command line
(``trainer.loss.beta=0``). Sections may be given as dicts. The flat keys of grpo 0.1
(``beta=0.001``, ``learning_rate=...``, ``rollout="vllm"``) still work until grpo 0.3, with a
:class:`FlatConfigWarning` naming the new key; :data:`FLAT_KEYS` is the whole mapping.

Defaults follow DeepSeek-R1 (arXiv:2501.12948, sec. 2.2 and the training details of its
supplementary material) where they fit a general library:

* ``rollout.num_generations`` G = 16, ``loss.beta`` (KL coefficient) = 0.001,
  ``sampling.temperature`` = 1.0: R1.
* ``loss.eps_low`` = ``loss.eps_high`` = 0.2: the PPO / DeepSeekMath clip range. DAPO's
  clip-higher (0.2 / 0.28) is one setting away.
* ``sampling.max_tokens`` = 1024 (trl's ``max_completion_length``) departs from R1's 32,768
  tokens (R1-Zero trained on thousands of GPUs); raise it on real hardware.
* ``optim.learning_rate`` = 1e-6 (DeepSeekMath's GRPO used 1e-6; R1 reports 3e-6 for a 671B
  MoE): small models often want 1e-6 to 3e-6 with full fine-tuning, 1e-5 to 1e-4 with LoRA.
* ``loss.aggregation`` = "token_mean" (DAPO) departs from the paper's per-sequence mean, whose
  length bias Dr. GRPO and DAPO document; "seq_mean_token_mean" gives the paper's eq. (3).

Derived values are computed in one place, :meth:`GRPOConfig.derived`.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grpo.loss import Aggregation, KLEstimator, RatioLevel
from grpo.rollout.types import SamplingConfig
from grpo.trl_args import hint as trl_hint

__all__ = [
    "AsyncConfig",
    "CheckpointConfig",
    "DistillConfig",
    "EvalConfig",
    "FLAT_KEYS",
    "FlatConfigWarning",
    "ForwardConfig",
    "GRPOConfig",
    "LogConfig",
    "LossConfig",
    "OptimConfig",
    "RewardConfig",
    "RolloutConfig",
    "SamplingConfig",
    "VLLMConfig",
    "apply_overrides",
]


class FlatConfigWarning(FutureWarning):
    """A grpo 0.1 flat config key (``beta``) was used; it now lives in a section (``loss.beta``)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RolloutConfig(_Section):
    """What is sampled each step and how it becomes advantages (read by the rollout source)."""

    backend: Literal["hf", "vllm", "vllm_server"] = Field(
        "hf",
        description="Generator: transformers (hf), a colocated vLLM engine (vllm), or a trl "
        "vllm-serve server (vllm_server).",
    )
    num_generations: int = Field(
        16, ge=2, description="G: completions sampled per prompt (R1: 16)."
    )
    prompts_per_step: int = Field(8, ge=1, description="Prompts per GRPO step, over all processes.")
    max_prompt_length: int = Field(
        512,
        ge=1,
        description="Prompts longer than this (in tokens) raise an error naming the dataset "
        "row (checked as they are sampled); vLLM engines are sized for "
        "max_prompt_length + sampling.max_tokens.",
    )
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra variables for the chat template, e.g. "
        "{enable_thinking: false} for Qwen3 (trl's chat_template_kwargs).",
    )
    mask_truncated_completions: bool = Field(
        False,
        description="Leave completions cut at sampling.max_tokens out of the loss (DAPO overlong "
        "filtering, arXiv:2503.14476 sec. 3.4; trl's mask_truncated_completions). "
        "Their rewards still count in their group's statistics.",
    )
    advantage_estimator: str = Field(
        "grpo",
        description="Name in grpo.advantages.ADVANTAGE_ESTIMATORS: grpo (group std), batch_std, "
        "dr_grpo (no std), rloo (leave-one-out baseline), maxrl (divided by the group mean, "
        "arXiv:2602.02710), gdpo (each reward component normalised per group, then the "
        "weighted sum over the batch, arXiv:2601.05242), or one you registered.",
    )
    length_penalty: float = Field(
        0.0,
        ge=0,
        description="Pass-rate-scaled linear length penalty (prime-rl PR #2901; its coefficient "
        "is 0.25), reward shaping before the advantage estimator: r - length_penalty * p * "
        "len / max(1, longest completion of the group), p = the group's mean of the "
        "dynamic_sampling_metric column (accuracy by default). Dynamic sampling and the "
        "reward metrics see the unshaped rewards. 0: off. Not with advantage_estimator=gdpo, "
        "which reads the reward components, not the total.",
    )
    dynamic_sampling: bool = Field(
        False,
        description="DAPO dynamic sampling (arXiv:2503.14476 sec. 3.2): drop groups whose rewards "
        "have no spread and sample more prompts until the step has prompts_per_step "
        "groups with signal, or dynamic_sampling_max_rounds generation rounds were made.",
    )
    dynamic_sampling_max_rounds: int = Field(
        4,
        ge=1,
        description="Cap on generation rounds per step with dynamic_sampling (each round samples "
        "prompts_per_step prompts); at the cap the step trains on the groups it has.",
    )
    dynamic_sampling_metric: str | None = Field(
        None,
        description="What dynamic_sampling judges a group's spread on: a reward component's "
        "name, or 'total' (the weighted total). None: the component reported as accuracy (the "
        "trainer's accuracy_reward or reward.accuracy, default the reward named as such), as DAPO "
        "eq. 11 and "
        "verl's default 'acc' do, so an all-wrong group whose format rewards differ is "
        "dropped; the weighted total when there is a single reward function, none is reported "
        "as accuracy, or the accuracy component is also the format one. A group on which "
        "the chosen component scored no completion (it does not apply to the row) is judged "
        "on the total. Advantages and adv/zero_std_frac always use the total.",
    )
    dynamic_sampling_tol: float = Field(
        1e-6,
        ge=0,
        description="A group has signal when max - min of its scorable rewards exceeds this "
        "(dynamic sampling, and the adv/zero_std_frac metric).",
    )
    curriculum: Literal["off", "pass_rate"] = Field(
        "off",
        description="Online difficulty curriculum (grpo.curriculum): 'pass_rate' keeps each "
        "prompt's pass rate from the accuracy reward of its scored completions, retires a "
        "prompt once it passes curriculum_retire_at (ScaleRL's no-positive-resampling, "
        "arXiv:2510.13786) and draws the others by curriculum_weighting. Needs a reward "
        "reported as accuracy. 'off': the seeded epoch-permutation sampler.",
    )
    curriculum_retire_at: float = Field(
        0.9,
        gt=0,
        le=1,
        description="With curriculum='pass_rate': a prompt whose pass rate reaches this, after "
        "curriculum_min_samples scored completions, is never drawn again (ScaleRL: 0.9).",
    )
    curriculum_min_samples: int | None = Field(
        None,
        ge=1,
        description="Scored completions a prompt needs before it can be retired. None: "
        "num_generations (one group).",
    )
    curriculum_weighting: Literal["variance", "uniform"] = Field(
        "variance",
        description="How active prompts are drawn: 'variance', probability proportional to "
        "p(1-p) + curriculum_floor with p = (successes+1)/(trials+2), most at p = 0.5 where a "
        "group carries the most signal; 'uniform', all alike.",
    )
    curriculum_floor: float = Field(
        0.05,
        ge=0,
        description="Added to every active prompt's 'variance' weight, so that prompts never "
        "solved yet stay drawable.",
    )


class AsyncConfig(_Section):
    """Asynchronous rollouts (:mod:`grpo.async_source`); YAML and CLI key ``async``."""

    staleness: int = Field(
        0,
        ge=0,
        description="Sample the next steps while the learner trains, on weights at most this "
        "many steps old (AReaL's decoupled PPO corrects for it), with a generator that has "
        "weights of its own: an HF copy in a child process (rollout.backend='hf'), the vLLM "
        "engine or server, or a generator= / wrap_generator= over one. 0 = synchronous.",
    )
    timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds the asynchronous generator may take for one step before it "
        "counts as stalled (an error, not a hang).",
    )


class VLLMConfig(_Section):
    """The vLLM engine (rollout.backend='vllm') or server (rollout.backend='vllm_server')."""

    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="vLLM's share of GPU memory (colocated)."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallelism (colocated).")
    enforce_eager: bool = Field(
        False, description="vLLM without CUDA graphs / torch.compile (faster start)."
    )
    sleep: bool = Field(
        False, description="Put the vLLM engine to sleep during training (frees GPU memory)."
    )
    dtype: str = Field(
        "auto", description="vLLM engine dtype (auto: the model's; float32, bfloat16, ...)."
    )
    max_model_len: int | None = Field(
        None,
        ge=1,
        description="vLLM's context length (None: rollout.max_prompt_length + "
        "sampling.max_tokens in training; the model's own in grpo sample).",
    )
    server_host: str = Field(
        "127.0.0.1", description="Host of `trl vllm-serve` (rollout.backend=vllm_server)."
    )
    server_port: int = Field(
        8000, description="Port of `trl vllm-serve` (rollout.backend=vllm_server)."
    )
    weight_transport: Literal["auto", "nccl", "filesystem"] = Field(
        "auto",
        description="How weights reach the vLLM server (rollout.backend=vllm_server): nccl "
        "(trl's weight-update group; CUDA on both sides, separate GPUs), filesystem "
        "(safetensors in weights_dir, reloaded in place by the server; any device), auto "
        "(nccl with CUDA, else filesystem).",
    )
    weights_dir: str | None = Field(
        None,
        description="Folder the vLLM server reads pushed weights and LoRA adapters from (None: "
        "a temporary folder on this machine; a shared filesystem for a remote server).",
    )
    lora_sync: Literal["adapter", "merged"] = Field(
        "adapter",
        description="A LoRA run's weight push to vLLM: adapter (only the adapter tensors; the "
        "engine and server sample with it as a LoRA adapter, the server started with "
        "--enable-lora) or merged (the base with the adapter merged in, out of place).",
    )


_CLIP_FIELDS = ("eps_low", "eps_high", "dual_clip", "ratio_level")  # the grpo objective's


class LossConfig(_Section):
    """The policy loss (:func:`grpo.loss.compute_loss`); read by the learner."""

    objective: str = Field(
        "grpo",
        description="Name in grpo.objectives.LOSSES: grpo (clipped surrogate; GSPO with "
        "ratio_level=sequence), or another registered objective (docs/math.md section 2).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of an objective other than grpo (grpo's are eps_low, eps_high, "
        "dual_clip and ratio_level), e.g. {eps_high: 5.0}; checked against its settings type.",
    )

    beta: float = Field(
        0.001, ge=0, description="KL coefficient (R1: 0.001). 0 loads no reference model."
    )
    kl_estimator: KLEstimator = Field("k3", description="KL estimator (k3: DeepSeekMath eq. 4).")
    kl_ratio_correction: bool = Field(
        False,
        description="Weight the KL term by the importance ratio pi/pi_old (trl's "
        "use_bias_correction_kl).",
    )
    eps_low: float = Field(
        0.2, ge=0, lt=1, description="Lower clip: ratio >= 1 - eps_low (trl's epsilon)."
    )
    eps_high: float = Field(
        0.2, ge=0, description="Upper clip: ratio <= 1 + eps_high (DAPO clip-higher: 0.28)."
    )
    dual_clip: float | None = Field(
        None, gt=1, description="Dual-clip constant c for negative advantages, or None."
    )
    ratio_level: RatioLevel = Field("token", description="token: GRPO; sequence: GSPO.")
    aggregation: Aggregation = Field(
        "token_mean",
        description="Loss reduction (DAPO token mean / GRPO sequence mean / Dr. GRPO).",
    )
    use_tis: bool = Field(
        False,
        description="Truncated importance sampling against a separate rollout engine's log-probs "
        "(rollout.backend vllm or vllm_server).",
    )
    is_cap: float = Field(
        2.0,
        gt=0,
        description="C in the behaviour weight min(pi_old / pi_sampler, C) of the policy term: "
        "TIS's truncation, and the decoupled objective's cap with asynchronous rollouts.",
    )
    correction: str = Field(
        "tis",
        description="Behaviour-policy correction applied when the sampler's log-probs are used "
        "(use_tis, or asynchronous rollouts): a name in grpo.objectives.corrections.CORRECTIONS: "
        "tis (min(pi_old / pi_sampler, is_cap)), tis_sequence, icepop, mis_sequence, geo_mask "
        "(docs/math.md 2.6.1).",
    )
    correction_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of a correction other than tis (tis reads is_cap), e.g. "
        "{low: 0.99, high: 1.01} for geo_mask; checked against its settings type.",
    )
    entropy_coef: float = Field(
        0.0,
        ge=0,
        description="Entropy bonus: the loss subtracts entropy_coef x the token mean of the "
        "policy's entropy over the minibatch, whatever the aggregation (trl 1.16 entropy_coef). "
        "0: none. With entropy_target: the adaptive coefficient's start value.",
    )
    entropy_target: float | None = Field(
        None,
        gt=0,
        description="Adaptive entropy coefficient (trl use_adaptive_entropy + entropy_target): "
        "the bonus is applied only while the previous optimizer step's mean entropy is <= this "
        "(none at the first step), and after each step the coefficient moves up by "
        "entropy_coef_delta when the entropy is <= target, down when above. None: static.",
    )
    entropy_coef_delta: float = Field(
        0.005, ge=0, description="Adaptive entropy coefficient's step per optimizer step."
    )
    entropy_coef_min: float = Field(
        0.0, ge=0, description="Lower clamp of the adaptive entropy coefficient."
    )
    entropy_coef_max: float = Field(
        1.0, ge=0, description="Upper clamp of the adaptive entropy coefficient."
    )

    def objective_settings(self):
        """The objective's settings object (grpo: from the clip fields; others: ``options``)."""
        from grpo.objectives import loss_settings
        from grpo.objectives.clip import ClipSettings

        if self.objective == "grpo":
            if self.options:
                raise ValueError(
                    f"loss.options={self.options} is for objectives other than grpo; grpo's "
                    f"settings are the fields loss.{', loss.'.join(_CLIP_FIELDS)}"
                )
            return ClipSettings(self.eps_low, self.eps_high, self.dual_clip, self.ratio_level)
        return loss_settings(self.objective, self.options)

    def correction_settings(self):
        """The behaviour correction's settings object (tis: from ``is_cap``)."""
        from grpo.objectives.corrections import TISSettings, correction_settings

        if self.correction == "tis":
            if self.correction_options:
                raise ValueError(
                    f"loss.correction_options={self.correction_options} is for corrections other "
                    "than tis; tis's cap is loss.is_cap"
                )
            return TISSettings(self.is_cap)
        return correction_settings(self.correction, self.correction_options)

    @model_validator(mode="after")
    def _check_objective(self) -> LossConfig:
        from grpo.objectives import LOSSES

        self.objective_settings()  # refuses an unknown objective or option by name
        if self.objective != "grpo":
            defaults = {n: type(self).model_fields[n].default for n in _CLIP_FIELDS}
            changed = [n for n in _CLIP_FIELDS if getattr(self, n) != defaults[n]]
            if changed:
                takes = sorted(f.name for f in dataclasses.fields(LOSSES[self.objective].settings))
                raise ValueError(
                    f"loss.{changed[0]}={getattr(self, changed[0])!r} is read by "
                    f"loss.objective='grpo' only, and loss.objective={self.objective!r}; put "
                    f"{self.objective}'s settings in loss.options (it takes "
                    f"{takes})"
                )
        allowed = LOSSES[self.objective].aggregations
        if allowed is not None and self.aggregation not in allowed:
            raise ValueError(
                f"loss.objective={self.objective!r} is defined with loss.aggregation in "
                f"{list(allowed)}; got loss.aggregation={self.aggregation!r}: set "
                f"loss.aggregation={allowed[0]!r}"
            )
        self.correction_settings()
        if self.entropy_coef_min > self.entropy_coef_max:
            raise ValueError(
                f"loss.entropy_coef_min={self.entropy_coef_min} > "
                f"loss.entropy_coef_max={self.entropy_coef_max}"
            )
        adaptive = ("entropy_coef_delta", "entropy_coef_min", "entropy_coef_max")
        if self.entropy_target is None:
            changed = [
                n for n in adaptive if getattr(self, n) != type(self).model_fields[n].default
            ]
            if changed:
                raise ValueError(
                    f"loss.{changed[0]}={getattr(self, changed[0])} is read by the adaptive "
                    "entropy coefficient only: set loss.entropy_target too (or drop it)"
                )
        if self.correction != "tis" and self.is_cap != type(self).model_fields["is_cap"].default:
            raise ValueError(
                f"loss.is_cap={self.is_cap} is tis's cap, and loss.correction={self.correction!r}; "
                "put that correction's settings in loss.correction_options"
            )
        return self


class DistillConfig(_Section):
    """On-policy distillation (:mod:`grpo.distill`)."""

    teacher: str | None = Field(
        None,
        description="A teacher (path or hub id) with the student's tokenizer: every sampled "
        "token's advantage gets -coef x (log pi_student - log pi_teacher) added (tinker-cookbook, "
        "slime). With no reward functions it is pure distillation. GRPOTrainer(teacher=...) "
        "takes a loaded model instead.",
    )
    coef: float = Field(1.0, ge=0, description="lambda of the on-policy distillation term.")
    self_context: str | None = Field(
        None,
        description="On-policy self-distillation (OPSD, arXiv:2601.18734; SDFT, arXiv:2601.19897): "
        "a template over the dataset row's columns, e.g. 'The verified final answer is {answer}.', "
        "appended to the prompt (to the last user message of a chat prompt). The teacher is the "
        "policy itself at the step's start, detached, scoring the same completion tokens given "
        "that privileged prompt; the term is distill.teacher's. Not with distill.teacher.",
    )

    @model_validator(mode="after")
    def _check_self_context(self) -> DistillConfig:
        if self.self_context is None:
            return self
        if self.teacher is not None:
            raise ValueError(
                f"distill.self_context={self.self_context!r} and distill.teacher="
                f"{self.teacher!r} are both set: self-distillation's teacher is the policy "
                "itself; set one of them"
            )
        from grpo.distill import self_context_columns

        self_context_columns(self.self_context)
        return self


class RewardConfig(_Section):
    """How the reward functions are combined and watched."""

    weights: list[float] | None = Field(
        None, description="Weight per reward function (default: all 1)."
    )
    failure_patience: int = Field(
        3,
        ge=1,
        description="Stop the run when one reward fails (error / unscorable) on every item for "
        "this many consecutive steps, naming it and its first reason.",
    )
    accuracy: str | None = Field(
        None,
        description="Name of the reward reported as accuracy (train/accuracy, acc=, eval "
        "accuracy, pass@k, the report's accuracy panel; the default of "
        "rollout.dynamic_sampling_metric and of rollout.length_penalty's pass rate). None: the "
        "first reward whose name contains accuracy, correct, math, code or verif (and not "
        "format); none such: no accuracy metric. New in 0.2, no flat key.",
    )
    format: str | None = Field(
        None,
        description="Name of the reward reported as format rate (train/format_rate, eval "
        "format rate). None: the first reward whose name contains format. New in 0.2, no flat "
        "key.",
    )


class OptimConfig(_Section):
    """AdamW, its schedule, and how a step's completions are cut into optimizer steps."""

    learning_rate: float = Field(1e-6, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    warmup_steps: int = Field(
        0, ge=0, description="Linear learning-rate warm-up, in optimizer steps."
    )
    warmup_ratio: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Warm-up as a fraction of all optimizer steps (used when warmup_steps is 0).",
    )
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="Schedule after warm-up."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (None = off).")
    num_iterations: int = Field(
        1, ge=1, description="mu: optimisation passes over each step's rollouts."
    )
    minibatch_size: int | None = Field(
        None,
        ge=1,
        description="Completions per optimizer step (default: the whole step's batch, fully "
        "on-policy).",
    )


class ForwardConfig(_Section):
    """How the model runs: memory and speed knobs that do not change the update (up to rounding)."""

    micro_batch_size: int = Field(
        8,
        ge=1,
        description="Completions per forward/backward (gradient accumulation; a memory knob: the "
        "update does not depend on it, and it need not divide the minibatch).",
    )
    logprob_chunk_size: int | None = Field(
        None, ge=1, description="Rows per chunk in grpo.logprobs (None = auto)."
    )
    share_prompt_forward: bool = Field(
        True,
        description="Run each distinct prompt of a micro-batch once and give its key/value cache "
        "to its completions (exact up to float rounding; Prefix Grouper arXiv:2506.05433). "
        "Skipped under gradient checkpointing.",
    )
    padding_free: bool = Field(
        True,
        description="Pack each micro-batch's real tokens into one row for the log-prob passes, so "
        "no matrix product runs on padding (exact up to float rounding; grpo.packing). Llama, "
        "Qwen2/3 and Mistral-style decoders; other models run padded, with a warning.",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory."
    )
    fsdp: bool = Field(
        False,
        description="Shard weights, gradients and optimizer state over the processes with FSDP2 "
        "(one unit per transformer block), for models too large to replicate. Needs >= 2 "
        "processes; not with peft_config.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto: float32 weights with bfloat16 autocast on a CUDA GPU that supports it, "
        "float32 on CPU; float32 / bfloat16 / float16: weights (and so compute) in that dtype.",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for torch's matrix work. None: on a CPU-only machine, half the "
        "cores available to this process (divided among local processes), leaving the "
        "rest to the scoring pool and the generator (torch's default of all cores "
        "collapses when other processes compete for them); untouched with a GPU.",
    )
    cpu_keep_freed_memory: bool = Field(
        True,
        description="Training on CPU: let glibc malloc keep freed memory for reuse (mallopt: "
        "blocks up to 1 GiB from the heap, no trimming below 1 GiB free), instead of page-faulting "
        "every activation in again each step (~5% of a CPU training pass). Process-wide; "
        "no effect on GPU memory or without glibc.",
    )


class EvalConfig(_Section):
    """Held-out evaluation during training (:mod:`grpo.evaluation`)."""

    steps: int = Field(
        0, ge=0, description="Evaluate every N steps (0 = only at start and end if eval data)."
    )
    samples: int = Field(
        4, ge=1, description="k: samples per eval prompt for mean accuracy over k."
    )
    by: list[str] = Field(
        default_factory=list,
        description="Dataset columns to break evaluation down by "
        "(eval/<metric>/<column>=<value>), e.g. [difficulty].",
    )
    max_prompts: int | None = Field(None, ge=1, description="Cap on eval prompts (None = all).")


class LogConfig(_Section):
    """Metrics, completion logs and trackers (:mod:`grpo.tracking`)."""

    steps: int = Field(1, ge=1, description="Log metrics every N steps.")
    completions: int = Field(
        4, ge=0, description="Completions per step written to completions.jsonl."
    )
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list,
        description="Extra trackers through accelerate; one name as a string works too "
        "(trl's report_to='wandb'), and 'none' is none.",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [] if value == "none" else [value]
        return value

    progress_bar: bool = Field(
        True, description="Show a progress bar with step, ETA, reward and accuracy."
    )


class CheckpointConfig(_Section):
    """Resumable checkpoints and the final model (:mod:`grpo.checkpoint`)."""

    steps: int = Field(0, ge=0, description="Save a resumable checkpoint every N steps (0 = off).")
    total_limit: int = Field(2, ge=1, description="Checkpoints kept.")
    final_model: bool = Field(
        True, description="Save the final model in HF format under output_dir/final."
    )
    merge_lora: bool = Field(
        False,
        description="With peft_config (LoRA): save the final model with the adapters merged into "
        "the base weights (a plain transformers model) instead of the adapter alone "
        "(adapter_config.json + adapter_model.safetensors, for peft's "
        "PeftModel.from_pretrained on the base; grpo eval and the pipeline load either).",
    )


class Derived(BaseModel):
    """Quantities computed from the config (not settable)."""

    completions_per_step: int
    minibatch_size: int  # optim.minibatch_size, or the whole step
    minibatches_per_step: int
    optimizer_steps_per_step: int
    micro_batches_per_minibatch: int


def _default_sampling() -> SamplingConfig:
    return SamplingConfig(max_tokens=1024)


class GRPOConfig(BaseModel):
    """Settings of a GRPO run: the run's identity at the root, the rest in typed sections (module
    docstring). Field descriptions are the documentation (``grpo train --help-config``)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, validate_by_name=True, validate_by_alias=True
    )

    # ---------------------------------------------------------------- the run
    output_dir: str = Field(
        "runs/grpo", description="Run folder: metrics, completions, checkpoints, report."
    )
    seed: int = Field(0, description="Seed for data order, sampling and initialisation.")
    max_steps: int = Field(
        100, ge=1, description="GRPO steps (one step = generate, score, update)."
    )
    num_train_epochs: float | None = Field(
        None,
        gt=0,
        description="Train for this many passes over the training prompts instead of max_steps: "
        "max_steps = ceil(epochs x len(train_dataset) / rollout.prompts_per_step), set "
        "by the trainer.",
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        description="Also stop after the step during which this much wall time of training has "
        "passed (seconds since train() started, evaluations included; a resumed run "
        "counts afresh), e.g. to compare methods at equal wall time. The learning-rate "
        "schedule still spans max_steps.",
    )
    resume_from: str | None = Field(
        None, description="Checkpoint folder, or 'latest' in output_dir."
    )
    overwrite_output_dir: bool = Field(
        False,
        description="Start a fresh run in an output_dir that holds another run's checkpoints (they "
        "are deleted). Without it such a run is refused: resume it or choose another folder.",
    )

    # ---------------------------------------------------------------- sections
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description=RolloutConfig.__doc__)
    sampling: SamplingConfig = Field(
        default_factory=_default_sampling,
        description="How completions are sampled (grpo.rollout.SamplingConfig; max_tokens is trl's "
        "max_completion_length). The trainer seeds each step itself: seed stays None.",
    )
    async_: AsyncConfig = Field(
        default_factory=AsyncConfig, alias="async", description=AsyncConfig.__doc__
    )
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description=VLLMConfig.__doc__)
    loss: LossConfig = Field(default_factory=LossConfig, description=LossConfig.__doc__)
    distill: DistillConfig = Field(default_factory=DistillConfig, description=DistillConfig.__doc__)
    reward: RewardConfig = Field(default_factory=RewardConfig, description=RewardConfig.__doc__)
    optim: OptimConfig = Field(default_factory=OptimConfig, description=OptimConfig.__doc__)
    forward: ForwardConfig = Field(default_factory=ForwardConfig, description=ForwardConfig.__doc__)
    eval: EvalConfig = Field(default_factory=EvalConfig, description=EvalConfig.__doc__)
    log: LogConfig = Field(default_factory=LogConfig, description=LogConfig.__doc__)
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description=CheckpointConfig.__doc__
    )

    # ---------------------------------------------------------------- grpo 0.1's flat keys
    @model_validator(mode="before")
    @classmethod
    def _nest_flat_keys(cls, data: Any) -> Any:
        """Move grpo 0.1's flat keys into their sections, with one :class:`FlatConfigWarning`."""
        if not isinstance(data, dict):
            return data
        data, moved = nest_flat_keys(data)
        known = set(cls.model_fields) | {"async"}
        for key in data:
            said = None if key in known else trl_hint(key)
            if said is not None:
                raise ValueError(f"GRPOConfig: {said}")
        if moved:
            warnings.warn(_flat_message(moved), FlatConfigWarning, stacklevel=_user_stacklevel())
        return data

    def __getattr__(self, name: str) -> Any:
        path = FLAT_KEYS.get(name)
        if path is None:
            return super().__getattr__(name)  # type: ignore[misc]
        warnings.warn(_flat_message([(name, path)]), FlatConfigWarning, stacklevel=2)
        section, key = path
        return getattr(getattr(self, _ATTR.get(section, section)), key)

    def __setattr__(self, name: str, value: Any) -> None:
        path = FLAT_KEYS.get(name)
        if path is None or name in type(self).model_fields:
            return super().__setattr__(name, value)
        warnings.warn(_flat_message([(name, path)]), FlatConfigWarning, stacklevel=2)
        section, key = path
        attr = _ATTR.get(section, section)
        if attr == "sampling":
            self.sampling = dataclasses.replace(self.sampling, **{key: value})
        else:
            setattr(getattr(self, attr), key, value)

    # ---------------------------------------------------------------- checks across sections
    @model_validator(mode="after")
    def _check(self) -> GRPOConfig:
        from grpo.advantages import ADVANTAGE_ESTIMATORS

        ro, opt = self.rollout, self.optim
        n = ro.prompts_per_step * ro.num_generations
        mb = opt.minibatch_size or n
        mb_text = (
            f"optim.minibatch_size={mb}"
            if opt.minibatch_size
            else "optim.minibatch_size (unset: the whole step, prompts_per_step x num_generations "
            f"= {mb})"
        )
        if n % mb:
            raise ValueError(
                f"{mb_text} must divide rollout.prompts_per_step x rollout.num_generations = "
                f"{ro.prompts_per_step} x {ro.num_generations} = {n}; choose a divisor of {n}."
            )
        if self.sampling.temperature <= 0:
            raise ValueError(
                f"sampling.temperature={self.sampling.temperature}: training samples at a "
                "temperature > 0 (log-probs are taken at the same temperature); greedy "
                "decoding is for evaluation."
            )
        if self.sampling.seed is not None:
            raise ValueError(
                f"sampling.seed={self.sampling.seed}: the trainer seeds every step and prompt "
                "from the run's seed; set seed instead."
            )
        if self.async_.staleness and self.vllm.sleep and ro.backend != "hf":
            raise ValueError(
                f"async.staleness={self.async_.staleness} with vllm.sleep=True: the engine samples "
                "the next step while the learner trains, so it cannot sleep then; set "
                "vllm.sleep=False (leave room for both with vllm.gpu_memory_utilization), or "
                "async.staleness=0"
            )
        if opt.warmup_steps and opt.warmup_ratio:
            raise ValueError(
                f"optim.warmup_steps={opt.warmup_steps} and optim.warmup_ratio={opt.warmup_ratio} "
                "are both set; set one of them (the other 0)"
            )
        if ro.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"rollout.advantage_estimator={ro.advantage_estimator!r} is not registered; choose "
                f"one of {sorted(ADVANTAGE_ESTIMATORS)} or add yours with "
                "grpo.advantages.register_advantage_estimator."
            )
        if ro.length_penalty > 0 and ro.advantage_estimator == "gdpo":
            raise ValueError(
                f"rollout.length_penalty={ro.length_penalty} shapes the total reward, which "
                "rollout.advantage_estimator='gdpo' does not read (it normalises each reward "
                "component); set length_penalty=0, or use another estimator."
            )
        if self.reward.weights is not None and not self.reward.weights:
            raise ValueError(
                "reward.weights is empty; give one weight per reward function or None."
            )
        if self.loss.use_tis and ro.backend == "hf":
            raise ValueError(
                "loss.use_tis corrects for a separate rollout engine's numerics; with "
                "rollout.backend='hf' the sampler is the trained model itself. Set "
                "loss.use_tis=False or rollout.backend='vllm'."
            )
        if self.loss.correction != "tis" and not (self.loss.use_tis or self.async_.staleness > 0):
            raise ValueError(
                f"loss.correction={self.loss.correction!r} weights the policy term by the "
                "sampler's log-probs, which are used only with loss.use_tis=true (a vllm backend) "
                "or async.staleness > 0; with neither it would do nothing. Set one of them, or "
                "leave loss.correction at its default 'tis'."
            )
        if self.distill.teacher is not None or self.distill.self_context is not None:
            problem = distillation_conflict(
                self,
                "distill.teacher" if self.distill.teacher is not None else "distill.self_context",
            )
            if problem:
                raise ValueError(problem)
        return self

    # ---------------------------------------------------------------- derived
    def derived(self) -> Derived:
        """All values computed from the settings, in one marked place."""
        n = self.rollout.prompts_per_step * self.rollout.num_generations
        mb = self.optim.minibatch_size or n
        return Derived(
            completions_per_step=n,
            minibatch_size=mb,
            minibatches_per_step=n // mb,
            optimizer_steps_per_step=(n // mb) * self.optim.num_iterations,
            micro_batches_per_minibatch=-(
                -mb // self.forward.micro_batch_size
            ),  # the last may be smaller
        )

    def step_sampling(self, seed: int | None) -> SamplingConfig:
        """``sampling`` seeded with ``seed`` (the trainer seeds each step's rows itself)."""
        return dataclasses.replace(self.sampling, seed=seed)

    def updated(self, changes: dict[str, Any]) -> GRPOConfig:
        """A validated copy with dotted keys changed: ``cfg.updated({"loss.beta": 0.0})``."""
        data = self.to_dict()
        return type(self)(
            **apply_overrides(
                data, [f"{k}={_yaml_value(v)}" for k, v in changes.items()], config_at=""
            )
        )

    # ---------------------------------------------------------------- dict / YAML
    def to_dict(self) -> dict[str, Any]:
        """Plain nested data (YAML / JSON types), keyed as in YAML (``async``, not ``async_``)."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> GRPOConfig:
        """Load from YAML, then apply ``key=value`` overrides (values parsed as YAML)."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls(**apply_overrides(data, overrides or [], config_at=""))

    def to_yaml(self, path: str | Path | None = None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text


# ----------------------------------------------------------------------------- the flat keys
SECTIONS = (
    "rollout",
    "sampling",
    "async",
    "vllm",
    "loss",
    "distill",
    "reward",
    "optim",
    "forward",
    "eval",
    "log",
    "checkpoint",
)
"""The section names as written in YAML and on the command line."""

_ATTR = {"async": "async_"}  # YAML name -> Python attribute, where they differ


def distillation_conflict(cfg: GRPOConfig, teacher: str = "distill.teacher") -> str | None:
    """Why on-policy distillation (a teacher, named ``teacher`` in the message) cannot run with
    ``cfg``'s other settings, or None. The config checks it when ``distill.teacher`` is set; the
    trainer checks it for a teacher passed as a model."""
    if cfg.rollout.dynamic_sampling:
        return (
            f"rollout.dynamic_sampling=True with {teacher}: dynamic sampling keeps only groups "
            "whose task rewards differ, so pure distillation would train on nothing and mixed "
            "distillation drops the groups whose only signal is the teacher's; set "
            "rollout.dynamic_sampling=False for on-policy distillation"
        )
    s = cfg.sampling
    for key, value, off in (
        ("top_p", s.top_p, 1.0),
        ("top_k", s.top_k, 0),
        ("min_p", s.min_p, 0.0),
        ("repetition_penalty", s.repetition_penalty, 1.0),
    ):
        if value != off and not (key == "top_k" and value == -1):
            return (
                f"sampling.{key}={value} with {teacher}: the distillation term compares the "
                "sampler's log-probs (of the truncated or penalised distribution) with the "
                "teacher's full softmax, a biased advantage; set "
                f"sampling.{key}={off} (off) for on-policy distillation"
            )
    return None


def _same(section: str, *names: str) -> dict[str, tuple[str, str]]:
    return {n: (section, n) for n in names}


_LOSS_FIELDS_NEW_IN_02 = (
    "objective",
    "options",
    "correction",
    "correction_options",
    "entropy_coef",
    "entropy_target",
    "entropy_coef_delta",
    "entropy_coef_min",
    "entropy_coef_max",
)

FLAT_KEYS: dict[str, tuple[str, str]] = {
    "rollout": ("rollout", "backend"),  # a string: grpo 0.1's `rollout: vllm`
    **_same(
        "rollout",
        "num_generations",
        "prompts_per_step",
        "max_prompt_length",
        "chat_template_kwargs",
        "mask_truncated_completions",
        "advantage_estimator",
        "dynamic_sampling",
        "dynamic_sampling_max_rounds",
        "dynamic_sampling_tol",
    ),
    "max_completion_length": ("sampling", "max_tokens"),
    **_same("sampling", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "stop"),
    "async_staleness": ("async", "staleness"),
    "async_timeout": ("async", "timeout"),
    **{
        f"vllm_{n}": ("vllm", n)
        for n in VLLMConfig.model_fields
        # grpo 0.1's fields only (later ones never had a flat key)
        if n not in ("max_model_len", "weight_transport", "weights_dir", "lora_sync")
    },  # max_model_len is new in 0.2: no flat key
    **_same(
        "loss", *(n for n in LossConfig.model_fields if n not in _LOSS_FIELDS_NEW_IN_02)
    ),  # the objective registry's fields are new in 0.2: no flat keys
    "teacher_model": ("distill", "teacher"),
    "distill_coef": ("distill", "coef"),
    "reward_weights": ("reward", "weights"),
    "reward_failure_patience": ("reward", "failure_patience"),
    **_same("optim", *OptimConfig.model_fields),
    **_same("forward", *ForwardConfig.model_fields),
    "eval_steps": ("eval", "steps"),
    "eval_samples": ("eval", "samples"),
    "eval_by": ("eval", "by"),
    "eval_max_prompts": ("eval", "max_prompts"),
    "logging_steps": ("log", "steps"),
    "log_completions": ("log", "completions"),
    "report_to": ("log", "report_to"),
    "progress_bar": ("log", "progress_bar"),
    "save_steps": ("checkpoint", "steps"),
    "save_total_limit": ("checkpoint", "total_limit"),
    "save_final_model": ("checkpoint", "final_model"),
    "merge_lora_on_save": ("checkpoint", "merge_lora"),
}
"""grpo 0.1's flat key -> (section, key). Flat keys work until grpo 0.3, with a warning."""


def nest_flat_keys(
    data: dict[str, Any],
) -> tuple[dict[str, Any], list[tuple[str, tuple[str, str]]]]:
    """``data`` with grpo 0.1's flat keys moved into their sections, and the keys moved.

    >>> nest_flat_keys({"beta": 0.0, "loss": {"eps_high": 0.28}})[0]
    {'loss': {'eps_high': 0.28, 'beta': 0.0}}
    >>> nest_flat_keys({"num_generations": 4, "rollout": "vllm"})[0]
    {'rollout': {'backend': 'vllm', 'num_generations': 4}}
    """
    out = dict(data)
    moved = []
    keys = list(data)
    if isinstance(data.get("rollout"), str):  # grpo 0.1's `rollout: vllm` names the section's key
        keys.remove("rollout")
        keys.insert(0, "rollout")
    for key in keys:
        path = FLAT_KEYS.get(key)
        if path is None or (key == "rollout" and not isinstance(data[key], str)):
            continue
        section, name = path
        value = out.pop(key)
        given = [k for k in (section, _ATTR.get(section)) if k is not None and k in out]
        holder = given[0] if given else section
        body = out.get(holder)
        if dataclasses.is_dataclass(body):
            body = {f.name: getattr(body, f.name) for f in dataclasses.fields(body)}
        elif isinstance(body, BaseModel):
            body = body.model_dump(exclude_unset=True)
        body = dict(body or {})
        if name in body:
            raise ValueError(
                f"{key!r} (grpo 0.1's flat key) and {section}.{name} are both given; keep "
                f"{section}.{name}"
            )
        body[name] = value
        out[holder] = body
        moved.append((key, path))
    return out, moved


def _flat_message(moved: list[tuple[str, tuple[str, str]]]) -> str:
    pairs = ", ".join(f"{key} -> {section}.{name}" for key, (section, name) in moved)
    section, name = moved[0][1]
    return (
        "GRPOConfig: flat keys are deprecated and stop working in grpo 0.3; use the sections: "
        f"{pairs} (YAML: `{section}: {{{name}: ...}}`; command line: trainer.{section}.{name}=...; "
        f"Python: GRPOConfig({_ATTR.get(section, section)}={{'{name}': ...}}))"
    )


def _user_stacklevel() -> int:
    """The stack level of the first frame outside pydantic and this module (the user's call)."""
    import sys

    frame, level = sys._getframe(1), 1
    while frame is not None and (
        frame.f_globals.get("__name__", "").startswith(("pydantic", __name__))
    ):
        frame, level = frame.f_back, level + 1
    return level


def _nest_flat_override(parts: list[str], config_at: str, value: Any) -> list[str]:
    """``[..., "trainer", "beta"]`` -> ``[..., "trainer", "loss", "beta"]`` (see
    apply_overrides)."""
    here = [i for i, p in enumerate(parts[:-1]) if p == config_at] if config_at else [-1]
    for i in here:
        if parts[i + 1] == "rollout" and not isinstance(value, str):
            continue  # the section itself, given whole
        if i + 2 == len(parts) and parts[i + 1] in FLAT_KEYS:
            path = FLAT_KEYS[parts[i + 1]]
            warnings.warn(_flat_message([(parts[i + 1], path)]), FlatConfigWarning, stacklevel=3)
            return [*parts[: i + 1], *path]
    return parts


def _yaml_value(value: Any) -> str:
    import json

    return json.dumps(value)  # JSON is YAML


def apply_overrides(
    data: dict[str, Any], overrides: list[str], *, config_at: str = "trainer"
) -> dict[str, Any]:
    """``["a.b=3", "rewards.0.weight=2"]`` -> a copy of ``data`` with those values set.

    Keys are dotted paths; a number selects a list entry (``rewards.0.weight``). Values are parsed
    with YAML (``true``, ``1e-5``, ``[a, b]``, ``null``). Missing sections are created; stepping
    into a value that is not a section, or past the end of a list, is a ``ValueError`` naming it.

    A grpo 0.1 flat key right below a ``config_at`` segment (a GRPOConfig: ``trainer`` in recipes,
    ``""`` for the top level) is read as its section's key, with a :class:`FlatConfigWarning`:
    ``trainer.beta=0`` sets ``trainer.loss.beta``.
    """
    import copy

    import yaml

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(
                f"override {item!r} is not key=value with a dotted key (e.g. trainer.loss.beta=0)"
            )
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(
                f"override {item!r}: the value is not valid YAML ({e})".replace("\n", " ")
            ) from e
        parts = _nest_flat_override(parts, config_at, value)
        node: Any = data
        for depth, part in enumerate(parts):
            where = ".".join(parts[:depth]) or "the top level"
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ValueError(
                        f"override {item!r}: {where} is a list of {len(node)} entries; use an "
                        f"index 0..{len(node) - 1} (entries are added in the YAML file)"
                    )
                index: int | str = int(part)
            elif isinstance(node, dict):
                index = part
            else:
                raise ValueError(f"override {item!r}: {where} is the value {node!r}, not a section")
            if last:
                node[index] = value
            elif isinstance(node, dict) and node.get(index) is None:
                node[index] = {}
            if not last:
                node = node[index]
    return data
