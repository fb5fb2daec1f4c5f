"""``GRPOConfig``: every setting of a GRPO run, typed, documented and validated at construction.

Defaults follow DeepSeek-R1 (arXiv:2501.12948, sec. 2.2 and the training details of its
supplementary material) where they fit a general library:

* ``num_generations`` G = 16, ``beta`` (KL coefficient) = 0.001, ``temperature`` = 1.0: R1.
* ``eps_low`` = ``eps_high`` = 0.2: the PPO / DeepSeekMath clip range. DAPO's clip-higher
  (0.2 / 0.28) is one setting away.
* ``max_completion_length`` = 1024 departs from R1's 32,768 tokens (R1-Zero trained on
  thousands of GPUs); raise it on real hardware.
* ``learning_rate`` = 1e-6 (DeepSeekMath's GRPO used 1e-6; R1 reports 3e-6 for a 671B MoE):
  small models often want 1e-6 to 3e-6 with full fine-tuning, 1e-5 to 1e-4 with LoRA.
* ``aggregation`` = "token_mean" (DAPO) departs from the paper's per-sequence mean, whose
  length bias Dr. GRPO and DAPO document; "seq_mean_token_mean" gives the paper's eq. (3).

Derived values are computed in one place, :meth:`GRPOConfig.derived`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Derived(BaseModel):
    """Quantities computed from the config (not settable)."""

    completions_per_step: int
    minibatches_per_step: int
    optimizer_steps_per_step: int
    micro_batches_per_minibatch: int


class GRPOConfig(BaseModel):
    """Settings of a GRPO run. Field descriptions are the documentation (``grpo train --help``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # ---------------------------------------------------------------- run
    output_dir: str = Field("runs/grpo", description="Run folder: metrics, completions, checkpoints, report.")
    seed: int = Field(0, description="Seed for data order, sampling and initialisation.")
    max_steps: int = Field(100, ge=1, description="GRPO steps (one step = generate, score, update).")
    num_train_epochs: float | None = Field(
        None, gt=0, description="Train for this many passes over the training prompts instead of max_steps: "
                                "max_steps = ceil(epochs x len(train_dataset) / prompts_per_step), set by the trainer.")
    max_seconds: float | None = Field(
        None, gt=0, description="Also stop after the step during which this much wall time of training has passed "
                                "(seconds since train() started, evaluations included; a resumed run counts "
                                "afresh), e.g. to compare methods at equal wall time. The learning-rate "
                                "schedule still spans max_steps.")

    # ---------------------------------------------------------------- rollout
    num_generations: int = Field(16, ge=2, description="G: completions sampled per prompt (R1: 16).")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per GRPO step, over all processes.")
    rollout: Literal["hf", "vllm", "vllm_server"] = Field(
        "hf", description="Generator: transformers.generate, a colocated vLLM engine, or a trl vllm-serve server.")
    max_prompt_length: int = Field(
        512, ge=1, description="Prompts longer than this (in tokens) raise an error naming the dataset row (checked "
                               "as they are sampled); vLLM engines are sized for max_prompt_length + "
                               "max_completion_length.")
    max_completion_length: int = Field(1024, ge=1, description="Maximum sampled tokens per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; log-probs are taken at the same temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling (1.0 = off).")
    top_k: int = Field(0, ge=0, description="Top-k sampling (0 = off).")
    min_p: float = Field(0.0, ge=0, lt=1, description="Min-p sampling (0 = off).")
    repetition_penalty: float = Field(
        1.0, gt=0, description="vLLM's repetition penalty (1.0 = off), applied identically by the HF and vLLM "
                               "generators. The sampler then draws from a penalised distribution, not the policy's: "
                               "the loss treats the samples as the policy's (as trl does).")
    stop: list[str] = Field(default_factory=list, description="Extra stop strings (the eos token always stops).")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra variables for the chat template, e.g. {enable_thinking: false} "
                                          "for Qwen3 (trl's chat_template_kwargs).")
    mask_truncated_completions: bool = Field(
        False, description="Leave completions cut at max_completion_length out of the loss (DAPO overlong "
                           "filtering, arXiv:2503.14476 sec. 3.4; trl's mask_truncated_completions). Their rewards "
                           "still count in their group's statistics.")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vLLM's share of GPU memory (colocated).")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallelism (colocated).")
    vllm_enforce_eager: bool = Field(False, description="vLLM without CUDA graphs / torch.compile (faster start).")
    vllm_sleep: bool = Field(False, description="Put the vLLM engine to sleep during training (frees GPU memory).")
    vllm_dtype: str = Field("auto", description="vLLM engine dtype (auto: the model's; float32, bfloat16, ...).")
    vllm_server_host: str = Field("127.0.0.1", description="Host of `trl vllm-serve` (rollout=vllm_server).")
    vllm_server_port: int = Field(8000, description="Port of `trl vllm-serve` (rollout=vllm_server).")

    async_staleness: int = Field(
        0, ge=0, description="Asynchronous rollouts: sample the next steps in a generator process while the learner "
                             "trains, on weights at most this many steps old (AReaL's decoupled PPO corrects for it). "
                             "0 = synchronous (exactly today's trainer). rollout='hf' only, one process.")
    async_timeout: float = Field(
        600.0, gt=0, description="Seconds the asynchronous generator may take for one step before it counts as "
                                 "stalled (an error, not a hang).")

    # ---------------------------------------------------------------- advantages and loss
    advantage_estimator: str = Field(
        "grpo", description="Name in grpo.advantages.ADVANTAGE_ESTIMATORS: grpo (group std), batch_std, "
                            "dr_grpo (no std), rloo (leave-one-out baseline), or one you registered.")
    dynamic_sampling: bool = Field(
        False, description="DAPO dynamic sampling (arXiv:2503.14476 sec. 3.2): drop groups whose rewards have no "
                           "spread and sample more prompts until the step has prompts_per_step groups with "
                           "signal, or dynamic_sampling_max_rounds generation rounds were made.")
    dynamic_sampling_max_rounds: int = Field(
        4, ge=1, description="Cap on generation rounds per step with dynamic_sampling (each round samples "
                             "prompts_per_step prompts); at the cap the step trains on the groups it has.")
    dynamic_sampling_tol: float = Field(
        1e-6, ge=0, description="A group has signal when max - min of its scorable rewards exceeds this.")
    beta: float = Field(0.001, ge=0, description="KL coefficient (R1: 0.001). 0 loads no reference model.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator (k3: DeepSeekMath eq. 4).")
    kl_ratio_correction: bool = Field(
        False, description="Weight the KL term by the importance ratio pi/pi_old (trl's use_bias_correction_kl).")
    eps_low: float = Field(0.2, ge=0, lt=1, description="Lower clip: ratio >= 1 - eps_low.")
    eps_high: float = Field(0.2, ge=0, description="Upper clip: ratio <= 1 + eps_high (DAPO clip-higher: 0.28).")
    dual_clip: float | None = Field(None, gt=1, description="Dual-clip constant c for negative advantages, or None.")
    ratio_level: Literal["token", "sequence"] = Field("token", description="token: GRPO; sequence: GSPO.")
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_sum_max_len"] = Field(
        "token_mean", description="Loss reduction (DAPO token mean / GRPO sequence mean / Dr. GRPO).")
    use_tis: bool = Field(False, description="Truncated importance sampling against the rollout engine's log-probs.")
    is_cap: float = Field(2.0, gt=0, description="TIS truncation C.")
    reward_weights: list[float] | None = Field(None, description="Weight per reward function (default: all 1).")
    teacher_model: str | None = Field(
        None, description="On-policy distillation: a teacher (path or hub id) with the student's tokenizer; every "
                          "sampled token's advantage gets -distill_coef x (log pi_student - log pi_teacher) added "
                          "(tinker-cookbook, slime). With no reward functions it is pure distillation.")
    distill_coef: float = Field(1.0, ge=0, description="lambda of the on-policy distillation term.")
    reward_failure_patience: int = Field(
        3, ge=1, description="Stop the run when one reward fails (error / unscorable) on every item for this many "
                             "consecutive steps, naming it and its first reason.")

    # ---------------------------------------------------------------- optimisation
    learning_rate: float = Field(1e-6, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up, in optimizer steps.")
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Warm-up as a fraction of all optimizer steps (used when warmup_steps is 0).")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field("constant", description="Schedule after warm-up.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (None = off).")
    num_iterations: int = Field(1, ge=1, description="mu: optimisation passes over each step's rollouts.")
    minibatch_size: int | None = Field(
        None, ge=1, description="Completions per optimizer step (default: the whole step's batch, fully on-policy).")
    micro_batch_size: int = Field(
        8, ge=1, description="Completions per forward/backward (gradient accumulation; a memory knob: the update "
                             "does not depend on it, and it need not divide the minibatch).")
    logprob_chunk_size: int | None = Field(None, ge=1, description="Rows per chunk in grpo.logprobs (None = auto).")
    share_prompt_forward: bool = Field(
        True, description="Run each distinct prompt of a micro-batch once and give its key/value cache to its "
                          "completions (exact up to float rounding; Prefix Grouper arXiv:2506.05433). Skipped "
                          "under gradient checkpointing.")
    padding_free: bool = Field(
        True, description="Pack each micro-batch's real tokens into one row for the log-prob passes, so no "
                          "matrix product runs on padding (exact up to float rounding; grpo.packing). Llama, "
                          "Qwen2/3 and Mistral-style decoders; other models run padded, with a warning.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    cpu_keep_freed_memory: bool = Field(
        True, description="Training on CPU: let glibc malloc keep freed memory for reuse (mallopt: blocks up to "
                          "1 GiB from the heap, no trimming below 1 GiB free), instead of page-faulting every "
                          "activation in again each step (~5% of a CPU training pass). Process-wide; no effect "
                          "on GPU memory or without glibc.")
    fsdp: bool = Field(
        False, description="Shard weights, gradients and optimizer state over the processes with FSDP2 "
                           "(one unit per transformer block), for models too large to replicate. Needs >= 2 "
                           "processes; not with peft_config.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 weights with bfloat16 autocast on a CUDA GPU that supports it, float32 "
                "on CPU; float32 / bfloat16 / float16: weights (and so compute) in that dtype.")

    # ---------------------------------------------------------------- evaluation, logging, checkpoints
    eval_steps: int = Field(0, ge=0, description="Evaluate every N steps (0 = only at start and end if eval data).")
    eval_samples: int = Field(4, ge=1, description="k: samples per eval prompt for mean accuracy over k.")
    eval_by: list[str] = Field(
        default_factory=list, description="Dataset columns to break evaluation down by "
                                          "(eval/<metric>/<column>=<value>), e.g. [difficulty].")
    eval_max_prompts: int | None = Field(None, ge=1, description="Cap on eval prompts (None = all).")
    logging_steps: int = Field(1, ge=1, description="Log metrics every N steps.")
    log_completions: int = Field(4, ge=0, description="Completions per step written to completions.jsonl.")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="Extra trackers through accelerate.")
    save_steps: int = Field(0, ge=0, description="Save a resumable checkpoint every N steps (0 = off).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept.")
    save_final_model: bool = Field(True, description="Save the final model in HF format under output_dir/final.")
    merge_lora_on_save: bool = Field(True, description="Merge LoRA adapters into the saved final model.")
    resume_from: str | None = Field(None, description="Checkpoint folder, or 'latest' in output_dir.")
    overwrite_output_dir: bool = Field(
        False, description="Start a fresh run in an output_dir that holds another run's checkpoints (they are "
                           "deleted). Without it such a run is refused: resume it or choose another folder.")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads for torch's matrix work. None: on a CPU-only machine, half the cores "
                                "available to this process (divided among local processes), leaving the rest to "
                                "the scoring pool and the generator (torch's default of all cores collapses when "
                                "other processes compete for them); untouched with a GPU.")
    progress_bar: bool = Field(True, description="Show a progress bar with step, ETA, reward and accuracy.")

    @model_validator(mode="after")
    def _check(self) -> GRPOConfig:
        from grpo.advantages import ADVANTAGE_ESTIMATORS

        n = self.prompts_per_step * self.num_generations
        mb = self.minibatch_size or n
        mb_text = (f"minibatch_size={mb}" if self.minibatch_size else
                   f"minibatch_size (unset: the whole step, prompts_per_step x num_generations = {mb})")
        if n % mb:
            raise ValueError(
                f"{mb_text} must divide prompts_per_step x num_generations = "
                f"{self.prompts_per_step} x {self.num_generations} = {n}; choose a divisor of {n}.")
        if self.async_staleness and self.rollout != "hf":
            raise ValueError(f"async_staleness={self.async_staleness} runs an HF generator in a child process; "
                             f"rollout={self.rollout!r} is not supported asynchronously yet: set rollout='hf' or "
                             "async_staleness=0")
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError(f"warmup_steps={self.warmup_steps} and warmup_ratio={self.warmup_ratio} are both set; "
                             "set one of them (the other 0)")
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"advantage_estimator={self.advantage_estimator!r} is not registered; choose one of "
                f"{sorted(ADVANTAGE_ESTIMATORS)} or add yours with grpo.advantages.register_advantage_estimator.")
        if self.reward_weights is not None and not self.reward_weights:
            raise ValueError("reward_weights is empty; give one weight per reward function or None.")
        if self.use_tis and self.rollout == "hf":
            raise ValueError("use_tis corrects for a separate rollout engine's numerics; with rollout='hf' "
                             "the sampler is the trained model itself. Set use_tis=False or rollout='vllm'.")
        return self

    # -------------------------------------------------------------------------------- derived
    def derived(self) -> Derived:
        """All values computed from the settings, in one marked place."""
        n = self.prompts_per_step * self.num_generations
        mb = self.minibatch_size or n
        return Derived(
            completions_per_step=n,
            minibatches_per_step=n // mb,
            optimizer_steps_per_step=(n // mb) * self.num_iterations,
            micro_batches_per_minibatch=-(-mb // self.micro_batch_size),  # the last may be smaller
        )

    # -------------------------------------------------------------------------------- YAML
    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> GRPOConfig:
        """Load from YAML, then apply ``key=value`` overrides (values parsed as YAML)."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls(**apply_overrides(data, overrides or []))

    def to_yaml(self, path: str | Path | None = None) -> str:
        import yaml

        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["a.b=3", "rewards.0.weight=2"]`` -> a copy of ``data`` with those values set.

    Keys are dotted paths; a number selects a list entry (``rewards.0.weight``). Values are parsed
    with YAML (``true``, ``1e-5``, ``[a, b]``, ``null``). Missing sections are created; stepping
    into a value that is not a section, or past the end of a list, is a ``ValueError`` naming it.
    """
    import copy

    import yaml

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"override {item!r} is not key=value with a dotted key (e.g. trainer.beta=0)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({e})".replace("\n", " ")) from e
        node: Any = data
        for depth, part in enumerate(parts):
            where = ".".join(parts[:depth]) or "the top level"
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ValueError(f"override {item!r}: {where} is a list of {len(node)} entries; use an index "
                                     f"0..{len(node) - 1} (entries are added in the YAML file)")
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
