"""GRPOTrainer: the R1-Zero loop, orchestration only: ``learn(collect())``.

One step (DeepSeekMath arXiv:2402.03300 Algorithm 1, as used by DeepSeek-R1 arXiv:2501.12948):

1. **collect** (:class:`grpo.source.RolloutSource`): ``prompts_per_step`` prompts (each
   data-parallel process its own slice), G completions each from the generator (HF or vLLM),
   seeded per step and prompt; rewards (weighted sum) scored on a thread; group-relative
   advantages over the whole step; one scored record per completion
   (:class:`grpo.source.ScoredRollout`); with DAPO dynamic sampling, groups without reward
   spread are replaced by fresh prompts;
2. **learn** (:class:`grpo.learner.Learner`): while the rewards are still being scored, the old
   policy's log-probs (none when fully on-policy) and the reference's; the scored records
   joined to the batch's rows by key (:func:`grpo.batch.join_scores`); then mu passes over
   minibatches of the policy loss, optimizer steps;
3. push the new weights into the generator;
4. log metrics, sampled completions, evaluation, checkpoints.

Every data-parallel vs FSDP difference lives in :mod:`grpo.parallel`.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from grpo.batch import collate_rollouts, join_scores
from grpo.callbacks import Callbacks, TrainerControl, log_entry, new_state
from grpo.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint, save_checkpoint
from grpo.config import GRPOConfig
from grpo.data import check_dataset, check_prompt_tokens, check_self_context_columns, get_rows
from grpo.evaluation import eval_sampling, evaluate, report_names, scoring_reward
from grpo.guards import (
    LearningWatch,
    check_output_dir,
    keep_freed_cpu_memory,
    model_context,
    set_torch_threads,
)
from grpo.learner import Learner
from grpo.models import (
    load_policy,
    make_optimizer_and_scheduler,
    mixed_precision,
    model_dtype,
    trainer_generator,
)
from grpo.parallel import make_parallelism
from grpo.rewards import Reward, RewardMonitor
from grpo.rollout.types import BaseGenerator, as_generator
from grpo.rollout.weights import is_peft_model
from grpo.source import Collected, RolloutSource, ScoredStep, filter_component
from grpo.tracking import RunLogger, check_trackers


class _Timer:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.times[f"time/{name}"] = time.perf_counter() - t0


def _trl_names(
    train_dataset: Any, config: Any, args: Any, tokenizer: Any, processing_class: Any
) -> tuple[Any, Any]:
    """grpo's (config, tokenizer) from grpo's or trl's keyword names; both names of one thing
    given is refused by name, and a ``trl.GRPOConfig`` becomes a grpo one (docs/trl.md)."""
    from grpo.trl_args import grpo_settings

    if isinstance(train_dataset, GRPOConfig) or _is_trl_config(train_dataset):
        raise TypeError(
            "GRPOTrainer's third positional argument is train_dataset; pass the config by "
            "keyword: args=... (trl's name) or config=..."
        )
    for grpo_name, trl_name, ours, theirs in (
        ("config", "args", config, args),
        ("tokenizer", "processing_class", tokenizer, processing_class),
    ):
        if ours is not None and theirs is not None:
            raise ValueError(
                f"GRPOTrainer got both {grpo_name}= and {trl_name}= ({trl_name} is trl's name for "
                f"{grpo_name}); give one of them"
            )
    config = config if config is not None else args
    if _is_trl_config(config):
        config = GRPOConfig(**grpo_settings(config))
    return config, tokenizer if tokenizer is not None else processing_class


def _is_trl_config(obj: Any) -> bool:
    return type(obj).__module__.startswith("trl.") and type(obj).__name__ == "GRPOConfig"


class GRPOTrainer:
    """Train a causal LM with GRPO on rule-based rewards.

    Args:
        model: a path / hub id, or a loaded ``transformers`` causal LM (or peft model).
        reward_funcs: :class:`grpo.rewards.Reward` objects or trl-style functions.
        train_dataset: rows with a ``prompt`` (text or chat messages) and the reward columns.
        config: a :class:`GRPOConfig` (defaults if None). trl's name ``args=`` works too, and
            also takes a ``trl.GRPOConfig``, converted by :func:`grpo.trl_args.grpo_settings`
            (docs/trl.md); trl's ``processing_class=`` is ``tokenizer=``.
        eval_dataset: held-out rows, evaluated at the start, every ``eval_steps`` and at the end.
        tokenizer: needed when ``model`` is a loaded model without a saved tokenizer path.
        peft_config: a peft ``LoraConfig``: train adapters; the reference is the base model
            with adapters disabled (no second copy). The final model is saved as the adapter
            (``checkpoint.merge_lora=True``: merged weights instead).
        callbacks: transformers ``TrainerCallback`` s (instances or classes), called with
            ``(args, state, control)`` as transformers' Trainer calls them (:mod:`grpo.callbacks`);
            ``add_callback`` / ``pop_callback`` / ``remove_callback`` as well.
        generator: a ready :class:`grpo.rollout.Generator` instead of the one
            ``config.rollout.backend`` names.
        wrap_generator: a function of the generator (given, or the one the config names) returning
            the generator to use: ``MultiTurnSettings(...).build`` samples tool-using
            trajectories on the trainer's own engine (:mod:`grpo.recipes.multiturn`).
        prompt_key: the dataset field holding the prompt (default ``"prompt"``).
        teacher: a loaded teacher model for on-policy distillation (instead of
            ``config.distill.teacher``); it must share the student's tokenizer.
        accuracy_reward: name of the reward reported as accuracy (or ``reward.accuracy``; default:
            the first whose name says so, see :func:`grpo.metrics.report_names`; none: no
            accuracy metric).
        format_reward: name of the reward reported as format rate (or ``reward.format``;
            default: the first whose name contains "format").
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        reward_funcs: Sequence[Reward | Callable] | Reward | Callable,
        train_dataset: Any = None,
        config: GRPOConfig | None = None,
        *,
        args: Any = None,
        eval_dataset: Any = None,
        tokenizer: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        generator: Any = None,
        accuracy_reward: str | None = None,
        format_reward: str | None = None,
        prompt_key: str = "prompt",
        teacher: torch.nn.Module | None = None,
        wrap_generator: Callable[[Any], Any] | None = None,
        callbacks: Sequence[Any] | None = None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        config, tokenizer = _trl_names(train_dataset, config, args, tokenizer, processing_class)
        if train_dataset is None:
            raise TypeError("GRPOTrainer needs train_dataset")
        if callable(reward_funcs) or isinstance(reward_funcs, Reward):
            reward_funcs = [reward_funcs]  # trl takes one function as well as a list
        if isinstance(config, dict):
            raise TypeError(
                "config must be a grpo.GRPOConfig, got a dict: use GRPOConfig(**your_dict)"
            )
        if config is not None and not isinstance(config, GRPOConfig):
            raise TypeError(
                f"config must be a grpo.GRPOConfig or a trl.GRPOConfig, got "
                f"{type(config).__module__}.{type(config).__name__} (not a dataset: the config "
                "is config= / args=)"
            )
        self.config = cfg = config if config is not None else GRPOConfig()
        check_trackers(cfg.log.report_to)  # before any model loads
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            log_with=cfg.log.report_to or None,
            project_dir=cfg.output_dir,
            mixed_precision=mixed_precision(cfg.forward.dtype),
        )
        self.parallel = par = make_parallelism(self.accelerator, cfg.forward.fsdp)
        if cfg.forward.cpu_keep_freed_memory and self.accelerator.device.type == "cpu":
            keep_freed_cpu_memory()
        self._check_layout(cfg, par.world, peft_config)
        self._check_pairs(cfg, peft_config, generator, teacher)
        # another run's checkpoints, with neither resume_from nor overwrite: transformers' users
        # resume with train(resume_from_checkpoint=True), so train() decides (before any step)
        self._unresumed = (
            bool(list_checkpoints(cfg.output_dir))
            and not cfg.resume_from
            and not cfg.overwrite_output_dir
        )
        if not self._unresumed:
            check_output_dir(
                cfg.output_dir,
                resume_from=cfg.resume_from,
                overwrite=cfg.overwrite_output_dir,
                is_main=par.is_main,
            )
        set_torch_threads(
            cfg.forward.torch_threads,
            cuda=torch.cuda.is_available(),
            local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        )
        set_seed(cfg.seed)
        self_distill = cfg.distill.self_context is not None
        if not reward_funcs and not (cfg.distill.teacher or teacher is not None or self_distill):
            raise ValueError(
                "reward_funcs is empty: give at least one reward function (or a teacher, "
                "distill.teacher or distill.self_context, for pure on-policy distillation)"
            )
        if not reward_funcs:  # pure distillation: no task reward, the teacher's term is the signal
            reward_funcs = [no_task_reward]
        check_estimator_rewards(cfg.rollout.advantage_estimator, reward_funcs)
        self.reward = scoring_reward(reward_funcs, cfg.reward.weights)
        self.reward_monitor = RewardMonitor(patience=cfg.reward.failure_patience)
        self.accuracy_name, self.format_name = report_names(
            [r.name for r in self.reward.rewards], accuracy_reward, format_reward, config=cfg.reward
        )
        self.filter_name = filter_component(  # what dynamic sampling judges spread on
            cfg.rollout.dynamic_sampling_metric,
            [r.name for r in self.reward.rewards],
            self.accuracy_name,
            self.format_name,
        )

        self.prompt_key = prompt_key
        check_dataset(train_dataset, "train_dataset", prompt_key, self.reward.rewards)
        if self_distill:
            check_self_context_columns(train_dataset, "train_dataset", cfg.distill.self_context)
        if eval_dataset is not None:
            check_dataset(eval_dataset, "eval_dataset", prompt_key, self.reward.rewards)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        if cfg.num_train_epochs is not None:  # the one place max_steps is derived from the data
            steps = math.ceil(
                cfg.num_train_epochs * len(train_dataset) / cfg.rollout.prompts_per_step
            )
            self.config = cfg = cfg.model_copy(update={"max_steps": max(1, steps)})
        self.model, self.tokenizer, self.model_path = load_policy(
            model, tokenizer, peft_config, cfg.forward, self.accelerator.device
        )
        context = model_context(self.model)
        prompt_len, max_tokens = cfg.rollout.max_prompt_length, cfg.sampling.max_tokens
        if context and prompt_len + max_tokens > context:
            raise ValueError(
                f"rollout.max_prompt_length + sampling.max_tokens = {prompt_len} + {max_tokens} "
                f"exceeds the model's context of {context} tokens: lower them"
            )
        # an HF copy for asynchronous rollouts is taken before sharding (it saves the whole model)
        copied = self._async_copy() if generator is None else None
        self.ref_model = None  # LoRA: the base model with adapters disabled, no second copy
        if cfg.loss.beta > 0 and not is_peft_model(self.model):
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        par.prepare(self.model, self.ref_model)
        self.optimizer, self.scheduler = make_optimizer_and_scheduler(
            [p for p in self.model.parameters() if p.requires_grad],
            cfg.optim,
            total_steps=cfg.max_steps * cfg.derived().optimizer_steps_per_step,
        )
        # a duck-typed generator is wrapped with the default capabilities (docs/rollout.md)
        self.generator = generator or copied or self._built_generator()
        if wrap_generator is not None:
            self.generator = wrap_generator(self.generator)
        if cfg.async_.staleness:  # the producer thread and evaluation share it, one call at a time
            from grpo.async_source import AsyncGenerator

            self.generator = AsyncGenerator(self.generator)
        if cfg.loss.use_tis and self.generator.policy_model is not None:
            raise ValueError(
                "loss.use_tis corrects for a separate rollout engine's numerics; the HF generator "
                "samples with the trained model itself. Set loss.use_tis=False or "
                "rollout.backend='vllm'."
            )
        if cfg.async_.staleness and not self.generator.returns_logprobs:
            raise ValueError(
                f"async.staleness={cfg.async_.staleness} weights each token by pi_prox / "
                "pi_behav with the sampler's log-probs, and the generator "
                f"{type(self.generator.inner).__name__} declares returns_logprobs=False; use a "
                "generator that returns them, or set async.staleness=0"
            )
        if cfg.loss.use_tis and not self.generator.returns_logprobs:
            raise ValueError(
                f"loss.use_tis weights by the sampler's log-probs, and the generator "
                f"{type(self.generator).__name__} declares returns_logprobs=False; set "
                "loss.use_tis=False or use a generator that returns them"
            )
        check_prompt_tokens(
            train_dataset,
            "train_dataset",
            self.tokenizer,
            cfg.rollout.max_prompt_length,
            prompt_key,
            cfg.rollout.chat_template_kwargs,
            self.generator.encode_prompt,
        )
        self.sampling = cfg.sampling
        self.source = RolloutSource(
            generator=self.generator,
            reward=self.reward,
            dataset=train_dataset,
            tokenizer=self.tokenizer,
            rollout=cfg.rollout,
            sampling=cfg.sampling,
            seed=cfg.seed,
            max_steps=cfg.max_steps,
            # an asynchronous producer gathers on a process group of its own, never interleaved
            # with the learner's collectives
            parallel=par.side_channel() if cfg.async_.staleness and par.world > 1 else par,
            prompt_key=prompt_key,
            context=context,
            accuracy_name=self.accuracy_name,
            format_name=self.format_name,
            filter_name=self.filter_name,
            self_context=cfg.distill.self_context,
        )
        self.state = new_state(
            max_steps=cfg.max_steps,
            logging_steps=cfg.log.steps,
            eval_steps=cfg.eval.steps,
            save_steps=cfg.checkpoint.steps,
            train_batch_size=cfg.rollout.prompts_per_step,
            num_train_epochs=cfg.max_steps * cfg.rollout.prompts_per_step / len(train_dataset),
            is_main=par.is_main,
            is_local_main=self.accelerator.is_local_main_process,
        )
        self.control = TrainerControl()
        self.source.trainer_state = self.state  # reward functions see this state (a copy per step)
        if cfg.async_.staleness:
            self.source = self._async_source(self.source)
        self.teacher = self._load_teacher(teacher)
        self.learner = Learner(
            self.model,
            self.ref_model,
            self.optimizer,
            self.scheduler,
            par,
            self.accelerator.autocast,
            loss=cfg.loss,
            optim=cfg.optim,
            forward=cfg.forward,
            temperature=cfg.sampling.temperature,
            max_tokens=cfg.sampling.max_tokens,
            minibatches_per_step=cfg.derived().minibatches_per_step,
            behaviour_correction=cfg.loss.use_tis or cfg.async_.staleness > 0,
            teacher=self.teacher,
            distill_coef=cfg.distill.coef,
        )
        self.callback_handler = Callbacks(
            callbacks or [], self.model, self.tokenizer, self.optimizer, self.scheduler
        )
        self.tokens_seen = 0  # prompt + completion tokens sampled so far (trl's num_tokens)
        self._resumed_from: Path | None = None
        if cfg.resume_from:
            self._resume(resolve_checkpoint(cfg.resume_from, cfg.output_dir))

    @property
    def generator(self) -> BaseGenerator:
        """The generator; one assigned is wrapped by :func:`grpo.rollout.as_generator` (a
        duck-typed one gets the default capabilities, docs/rollout.md)."""
        return self._generator

    @generator.setter
    def generator(self, generator: Any) -> None:
        self._generator = as_generator(generator)

    @property
    def step(self) -> int:
        """GRPO steps done: ``state.global_step`` (one number, kept by the state)."""
        return self.state.global_step

    @step.setter
    def step(self, value: int) -> None:
        self.state.global_step = value
        self.state.epoch = value * self.config.rollout.prompts_per_step / len(self.train_dataset)

    def add_callback(self, callback: Any) -> None:
        """Add a ``TrainerCallback`` (an instance or a class), as transformers' Trainer does."""
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: Any) -> Any:
        """Remove a callback (an instance or the first of a class) and return it, or None."""
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: Any) -> None:
        """Remove a callback (an instance or the first of a class)."""
        self.callback_handler.remove_callback(callback)

    def _load_teacher(self, teacher: torch.nn.Module | None) -> torch.nn.Module | None:
        """On-policy distillation's teacher, frozen, on this process's device, with the student's
        vocabulary (:func:`grpo.distill.check_teacher`, the same check for a path and a model)."""
        from grpo.distill import check_teacher

        path = self.config.distill.teacher
        if teacher is None and path is None:
            return None
        if teacher is None:
            from transformers import AutoModelForCausalLM

            teacher = AutoModelForCausalLM.from_pretrained(
                path, dtype=model_dtype(self.config.forward.dtype)
            )
        check_teacher(self.tokenizer, teacher)
        return teacher.to(self.accelerator.device).eval().requires_grad_(False)

    def _async_copy(self) -> Any:
        """Asynchronous rollouts with rollout.backend='hf': a copy of the policy in a child
        process on this process's device (:class:`grpo.rollout.ProcessGenerator`; a LoRA model's
        copy follows the adapter, and only adapter tensors cross at each push). None otherwise."""
        cfg = self.config
        if not (cfg.async_.staleness and cfg.rollout.backend == "hf"):
            return None
        from grpo.rollout import ProcessGenerator

        return ProcessGenerator(
            self.model,
            self.tokenizer,
            timeout=cfg.async_.timeout,
            chat_template_kwargs=cfg.rollout.chat_template_kwargs,
            device=self.accelerator.device,
        )

    def _built_generator(self) -> Any:
        """The generator rollout.backend names, on the trained model."""
        return trainer_generator(self.config, self.model, self.tokenizer, self.model_path)

    def _async_source(self, inner: RolloutSource):
        """The rollout source run ahead of the learner (see grpo.async_source)."""
        from grpo.async_source import AsyncRolloutSource

        cfg = self.config
        return AsyncRolloutSource(
            inner,
            staleness=cfg.async_.staleness,
            max_steps=cfg.max_steps,
            timeout=cfg.async_.timeout,
        )

    @staticmethod
    def _check_layout(cfg: GRPOConfig, world: int, peft_config: Any) -> None:
        """Settings that depend on the number of processes, checked before anything loads."""
        ppp, fsdp = cfg.rollout.prompts_per_step, cfg.forward.fsdp
        if ppp % world:
            raise ValueError(
                f"rollout.prompts_per_step={ppp} must be divisible by the number of "
                f"processes ({world}) so that each prompt's group stays in one process"
            )
        mb = cfg.derived().minibatch_size
        if mb % world:
            raise ValueError(
                f"optim.minibatch_size={mb} must be divisible by the number of processes ({world})"
            )
        if fsdp and peft_config is not None:
            raise ValueError(
                "forward.fsdp=True with a peft_config is not supported: LoRA adapters are small, "
                "train them data parallel (forward.fsdp=False)"
            )
        if fsdp and cfg.rollout.dynamic_sampling and world > 1:
            raise ValueError(
                "rollout.dynamic_sampling with forward.fsdp=True is not supported yet (processes "
                "would keep different numbers of groups, and a sharded forward is a collective): "
                "use forward.fsdp=False (data parallel) or rollout.dynamic_sampling=False"
            )
        if cfg.rollout.backend == "vllm_server" and world > 1:
            raise ValueError(
                f"rollout.backend='vllm_server' with {world} training processes: each would push "
                "its weights to the one server (over a weight-update group made for one trainer "
                "client); run one training process against the server, or use "
                "rollout.backend='vllm' (an engine per process) or 'hf'"
            )
        if fsdp and world == 1:
            warnings.warn(
                "forward.fsdp=True with one process: nothing to shard over, training unsharded "
                "(launch with torchrun --nproc_per_node N)",
                stacklevel=3,
            )

    @staticmethod
    def _check_pairs(cfg: GRPOConfig, peft_config: Any, generator: Any, teacher: Any) -> None:
        """Arguments that cannot go together, refused before anything loads."""
        from grpo.config import distillation_conflict

        if teacher is not None and cfg.distill.self_context is not None:
            raise ValueError(
                f"distill.self_context={cfg.distill.self_context!r} and distill.teacher (here a "
                "model, GRPOTrainer(teacher=...)) are both set: self-distillation's teacher is "
                "the policy itself; give one of them"
            )
        if teacher is not None:
            problem = distillation_conflict(
                cfg, "distill.teacher (here a model, GRPOTrainer(teacher=...))"
            )
            if problem:
                raise ValueError(problem)
        staleness = cfg.async_.staleness
        if staleness:  # in a generator child re-running a script without the __main__ guard
            from grpo.rollout.process import refuse_in_bootstrapping_child

            refuse_in_bootstrapping_child()
        if staleness and generator is not None and as_generator(generator).policy_model is not None:
            raise ValueError(
                f"async.staleness={staleness} samples the next step while the learner changes "
                f"the model, and generator= ({type(generator).__name__}) samples from the trained "
                "model object itself; leave generator= out (the trainer runs an HF copy in a "
                "child process, grpo.rollout.ProcessGenerator), give a generator with weights of "
                "its own (ProcessGenerator, VLLMGenerator, VLLMServerGenerator), or set "
                "async.staleness=0"
            )
        if (
            peft_config is not None
            and generator is not None
            and as_generator(generator).policy_model is not None
        ):
            raise ValueError(
                "generator= holds a model of its own, and peft_config wraps the trainer's model "
                "in LoRA adapters after the generator was built, so the generator would sample "
                "from the unwrapped model; leave generator= out (the trainer builds one on the "
                "adapted model; wrap_generator= wraps it, e.g. for tool use), or apply peft "
                "yourself (peft.get_peft_model) and pass that model to both, without peft_config"
            )

    # ------------------------------------------------------------------------------ the loop
    def train(self, resume_from_checkpoint: bool | str | None = None) -> dict[str, float]:
        """Run to ``max_steps`` (or until a callback sets ``control.should_training_stop``);
        returns the last step's metrics.

        ``resume_from_checkpoint`` (transformers' argument): True continues from the newest
        checkpoint in ``output_dir``, a folder from that checkpoint; the config's ``resume_from``
        does the same at construction (both given must name the same checkpoint)."""
        self._resume_for_train(resume_from_checkpoint)
        cfg, state, calls = self.config, self.state, self.callback_handler
        log = RunLogger(
            cfg.output_dir,
            is_main=self.parallel.is_main,
            accelerator=self.accelerator,
            report_to=cfg.log.report_to,
            total_steps=cfg.max_steps,
            start_step=self.step,
            progress_bar=cfg.log.progress_bar,
            config=cfg.to_dict(),
        )
        if self.parallel.is_main:
            cfg.to_yaml(Path(cfg.output_dir) / "config.yaml")
        metrics: dict[str, float] = {}
        watch = LearningWatch(
            max_completion_length=cfg.sampling.max_tokens,
            rewards_carry_signal=self.teacher is None and cfg.distill.self_context is None,
            max_turn_tokens=self.generator.max_turn_tokens,
        )
        started = time.perf_counter()
        self.control = calls.on_train_begin(cfg, state, self.control)
        if self.eval_dataset is not None and self.step == 0:
            self._evaluate_and_log(log)
        while self.step < cfg.max_steps:
            self.control = calls.on_step_begin(cfg, state, self.control)
            metrics = self.train_step(log)
            self.step += 1
            self.control = control = calls.on_step_end(cfg, state, self.control)
            if self.step % cfg.log.steps == 0 or control.should_log:
                log.log_metrics(self.step, metrics)
                logs = {**metrics, "epoch": state.epoch}
                log_entry(state, logs)
                self.control = calls.on_log(cfg, state, self.control, logs=logs)
            log.progress(metrics)
            warning = watch.update(self.step, metrics)
            if warning:
                log.message("WARNING " + warning)
                warnings.warn(warning, stacklevel=2)
            scheduled_eval = cfg.eval.steps and self.step % cfg.eval.steps == 0
            if (
                self.eval_dataset is not None
                and (scheduled_eval or control.should_evaluate)
                and self.step < cfg.max_steps
                and not control.should_training_stop  # the final evaluation follows
            ):
                self._evaluate_and_log(log)
            if (cfg.checkpoint.steps and self.step % cfg.checkpoint.steps == 0) or (
                control.should_save
            ):
                self.save_checkpoint()
            if self.parallel.global_sum(float(control.should_training_stop)) > 0:
                log.message(
                    f"a callback set control.should_training_stop after step {self.step} of "
                    f"max_steps={cfg.max_steps}: stopping"
                )
                break
            if (
                cfg.max_seconds is not None
                and self.step < cfg.max_steps
                and self._out_of_time(started)
            ):
                log.message(
                    f"max_seconds={cfg.max_seconds:g} reached after step {self.step} of "
                    f"max_steps={cfg.max_steps}: stopping"
                )
                break
        if self.eval_dataset is not None:
            self._evaluate_and_log(log)
        if cfg.checkpoint.final_model:
            self.save_model(Path(cfg.output_dir) / "final")
        log.close()
        self.control = calls.on_train_end(cfg, state, self.control)
        return metrics

    def _evaluate_and_log(self, log: RunLogger) -> None:
        """Evaluate; the metrics go to eval.jsonl, ``state.log_history`` and ``on_evaluate``."""
        result = self.evaluate()
        log.log_eval(self.step, result)
        if result:
            log_entry(self.state, {**result, "epoch": self.state.epoch})
        self.control = self.callback_handler.on_evaluate(
            self.config, self.state, self.control, metrics=result
        )

    def _resume_for_train(self, resume_from_checkpoint: bool | str | None) -> None:
        """train()'s ``resume_from_checkpoint``, checked against the config's ``resume_from``
        (already resumed at construction), or the refusal of another run's output_dir."""
        cfg = self.config
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            if self._unresumed:  # the refusal construction left to train()
                check_output_dir(cfg.output_dir, resume_from=None, overwrite=False, is_main=False)
            return
        wanted = "latest" if resume_from_checkpoint is True else str(resume_from_checkpoint)
        path = resolve_checkpoint(wanted, cfg.output_dir)
        if self._resumed_from is not None:
            if path.resolve() != self._resumed_from.resolve():
                raise ValueError(
                    f"train(resume_from_checkpoint={resume_from_checkpoint!r}) names {path} but "
                    f"the config's resume_from={cfg.resume_from!r} resumed from "
                    f"{self._resumed_from}: give one of them"
                )
            return
        if self.step:
            raise ValueError(
                f"train(resume_from_checkpoint={resume_from_checkpoint!r}) on a trainer that has "
                f"already trained {self.step} steps: build a new GRPOTrainer to resume"
            )
        self._resume(path)
        self._unresumed = False

    def _out_of_time(self, started: float) -> bool:
        """max_seconds has passed on some process (every process then stops after the same step)."""
        over = time.perf_counter() - started >= self.config.max_seconds
        return self.parallel.global_sum(float(over)) > 0

    def train_step(self, log: RunLogger) -> dict[str, float]:
        """One GRPO step: collect (rollout -> score -> advantages), learn, push weights. Returns
        metrics."""
        timer, t0 = _Timer(), time.perf_counter()
        with timer("collect"):
            collected = self.source.collect(self.step)
        scored, train_metrics = self.learn(collected, timer)
        metrics = {
            **scored.metrics,
            **train_metrics,
            **timer.times,
            "time/step": time.perf_counter() - t0,
            "optim/lr": self.scheduler.get_last_lr()[0],
        }
        metrics = self.parallel.reduce_metrics(metrics)
        self.tokens_seen += int(
            metrics["completions/tokens"] + metrics["completions/prompt_tokens"]
        )
        metrics.update(
            {
                "throughput/generated_tokens_per_s": metrics["completions/tokens"]
                / metrics["time/step"],
                "throughput/trained_tokens_per_s": metrics["train/tokens"] / metrics["time/step"],
                "throughput/tokens_seen": float(self.tokens_seen),
            }
        )
        self._log_completions(log, scored)
        # a reward that scored nothing for `reward_failure_patience` steps stops the run, on every
        # process at once (decided on the reduced metrics), naming it and its first reason
        self.reward_monitor.update(scored.breakdown, metrics)
        return metrics

    def learn(
        self, collected: Collected, timer: _Timer | None = None
    ) -> tuple[ScoredStep, dict[str, float]]:
        """Frozen log-probs (overlapping the scoring), the policy update, the weight push."""
        timer = timer or _Timer()
        batch = None  # a process without completions this step still takes part in the update
        if collected.rollouts:
            batch = collate_rollouts(collected.rollouts, None, self.tokenizer.pad_token_id)
            batch = batch.to(self.accelerator.device)
        pause = self.generator.sleep_enabled  # e.g. vLLM sleep mode: free its memory
        if pause:
            self.generator.sleep()
        with timer("logprobs"):
            batch = self.learner.frozen_logprobs(batch)
        with timer("score_wait"):
            scored = collected.result()
        if batch is not None:  # the trained rows, in step order, with their advantages
            batch = join_scores(batch, scored)
        batch, distill_metrics = self.learner.with_distillation(batch)
        with timer("train"):
            train_metrics = {**self.learner.update(batch), **distill_metrics}
        with timer("sync"):
            if pause:
                self.generator.wake_up()
            if self.config.async_.staleness:  # versioned: the weights after step + 1 updates
                self.source.push_weights(self.model, self.step + 1)
            else:
                self.generator.sync_weights(self.model)
        return scored, train_metrics

    def _log_completions(self, log: RunLogger, scored: ScoredStep) -> None:
        n = min(self.config.log.completions, len(scored.records))
        log.log_completions(self.step + 1, [r.log_record() for r in scored.records[:n]])

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Greedy and mean@k accuracy and format rate on the eval set (main process)."""
        cfg, par = self.config, self.parallel
        n = (
            len(self.eval_dataset)
            if cfg.eval.max_prompts is None
            else min(cfg.eval.max_prompts, len(self.eval_dataset))
        )
        result: dict[str, float] = {}
        # A sharded model's forward is a collective: then every process generates (the same rows).
        if par.is_main or par.sharded:
            self.model.eval()
            rows = get_rows(self.eval_dataset, range(n), self.prompt_key)
            result = evaluate(
                self.generator,
                rows,
                self.reward,
                accuracy=self.accuracy_name,
                format_name=self.format_name,
                k=cfg.eval.samples,
                sampling=eval_sampling(cfg.sampling, cfg.seed),
                prompt_key=self.prompt_key,
                by=cfg.eval.by,
            )
            self.model.train()
        par.barrier()
        return result if par.is_main else {}

    # ------------------------------------------------------------------------------ state
    def save_checkpoint(self) -> Path:
        par = self.parallel
        path = save_checkpoint(
            self.config.output_dir,
            self.step,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            trainer_state={
                **self.source.state_dict(),
                "tokens_seen": self.tokens_seen,
                "learner": self.learner.state_dict(),
                "log_history": self.state.log_history,
            },
            rank=par.rank,
            is_main=par.is_main,
            keep=self.config.checkpoint.total_limit,
            barrier=par.barrier,
            sharded=par.sharded,
        )
        self.control = self.callback_handler.on_save(self.config, self.state, self.control)
        return path

    def _resume(self, path: Path) -> None:
        par = self.parallel
        self._resumed_from = path
        state = load_checkpoint(
            path,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            rank=par.rank,
            sharded=par.sharded,
        )
        self.step = int(state["step"])
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.state.log_history[:] = state.get("log_history", [])
        self.learner.load_state_dict(state.get("learner", {}))
        self.source.load_state_dict(state)
        if self.config.async_.staleness:
            self.source.start_at(self.step)
            self.source.push_weights(self.model, self.step)
        else:
            self.generator.sync_weights(self.model)

    def save_model(self, path: str | Path, merge_lora: bool | None = None) -> None:
        """The trained model in HF format and its tokenizer; a LoRA model as its peft adapter
        (``PeftModel.from_pretrained(base, path)``), or merged if ``merge_lora`` (None: the
        config's ``checkpoint.merge_lora``)."""
        par = self.parallel
        par.barrier()
        state = par.full_state(self.model)  # a collective when sharded: every process calls it
        if not par.is_main:
            return
        model = self.model
        merge = self.config.checkpoint.merge_lora if merge_lora is None else merge_lora
        if is_peft_model(model) and merge:
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(path, state_dict=state)
        self.tokenizer.save_pretrained(path)

    def close(self) -> None:
        """Shut the generator down (vLLM engines hold processes and memory) and the scoring
        thread."""
        self.generator.close()
        self.source.close()


def check_estimator_rewards(estimator: str, reward_funcs: Sequence[Any]) -> None:
    """MaxRL divides by the group's mean reward, read as a pass rate in [0, 1]
    (arXiv:2602.02710); a reward model's scores are unbounded, and a group whose mean is <= 0
    gets advantage 0, so such a run would learn nothing from it without a word."""
    if estimator != "maxrl":
        return
    from grpo.rewards.reward_model import RewardModelReward

    if any(isinstance(f, RewardModelReward) for f in reward_funcs):
        raise ValueError(
            "rollout.advantage_estimator='maxrl' divides by each group's mean reward, a pass "
            "rate in [0, 1], and reward_funcs holds a reward model (RewardModelReward), whose "
            "scores are unbounded (a group with a mean <= 0 gets advantage 0: nothing learned); "
            "use rollout.advantage_estimator='grpo' (or another) with the reward model, or "
            "maxrl with rewards in [0, 1]"
        )


def no_task_reward(completions, **kwargs) -> list[float]:
    """The reward of pure on-policy distillation: none (0 for every completion)."""
    return [0.0] * len(completions)
