"""GRPOTrainer: the R1-Zero loop, orchestration only (formulas live in advantages/loss/logprobs).

One step (DeepSeekMath arXiv:2402.03300 Algorithm 1, as used by DeepSeek-R1 arXiv:2501.12948):

1. take ``prompts_per_step`` prompts (each data-parallel process its own contiguous slice);
2. sample G completions per prompt with the generator (HF or vLLM), seeded per step and prompt;
3. score them with every reward function; total = weighted sum, None if any part unscorable.
   Scoring runs on a thread while the old policy's log-probs (computed once, and not at all
   when fully on-policy) and the reference's are computed: neither needs rewards;
4. group-relative advantages over the whole step (rewards gathered from all processes);
5. mu passes over minibatches: policy loss against the old log-probs, KL to the reference,
   optimizer step;
6. push the new weights into the generator;
7. log metrics, sample completions, evaluation, checkpoints.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from grpo.advantages import compute_group_advantages
from grpo.checkpoint import full_model_state, load_checkpoint, resolve_checkpoint, save_checkpoint
from grpo.config import GRPOConfig
from grpo.data import PromptSampler, get_rows, reward_columns
from grpo.evaluation import evaluate
from grpo.loss import policy_loss
from grpo.metrics import StatAccumulator, advantage_metrics, completion_metrics, reward_metrics
from grpo.models import load_policy, make_generator, make_optimizer_and_scheduler, shard_model
from grpo.policy import (
    RolloutBatch,
    all_reduce_grads,
    collate_rollouts,
    completion_logprobs,
    reference_model,
)
from grpo.rewards import CombinedReward, Reward, RewardBreakdown
from grpo.rollout import SamplingConfig
from grpo.tracking import RunLogger


class _Timer:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.times[f"time/{name}"] = time.perf_counter() - t0


class GRPOTrainer:
    """Train a causal LM with GRPO on rule-based rewards.

    Args:
        model: a path / hub id, or a loaded ``transformers`` causal LM (or peft model).
        reward_funcs: :class:`grpo.rewards.Reward` objects or trl-style functions.
        train_dataset: rows with a ``prompt`` (text or chat messages) and the reward columns.
        config: a :class:`GRPOConfig` (defaults if None).
        eval_dataset: held-out rows, evaluated at the start, every ``eval_steps`` and at the end.
        tokenizer: needed when ``model`` is a loaded model without a saved tokenizer path.
        peft_config: a peft ``LoraConfig``: train adapters; the reference is the base model
            with adapters disabled (no second copy).
        generator: a ready :class:`grpo.rollout.Generator` instead of the one ``config.rollout`` names.
        accuracy_reward: name of the reward reported as accuracy (default: the first reward).
        format_reward: name of the reward reported as format rate (default: one named "format*").
    """

    def __init__(self, model: str | torch.nn.Module, reward_funcs: Sequence[Reward | Callable],
                 train_dataset: Any, config: GRPOConfig | None = None, *, eval_dataset: Any = None,
                 tokenizer: Any = None, peft_config: Any = None, generator: Any = None,
                 accuracy_reward: str | None = None, format_reward: str | None = None,
                 prompt_key: str = "prompt"):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = cfg = config if config is not None else GRPOConfig()
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), log_with=cfg.report_to or None,
                                       project_dir=cfg.output_dir)
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        if cfg.prompts_per_step % world:
            raise ValueError(f"prompts_per_step={cfg.prompts_per_step} must be divisible by the number of "
                             f"processes ({world}) so that each prompt's group stays in one process")
        mb = cfg.minibatch_size or cfg.derived().completions_per_step
        if mb % world:
            raise ValueError(f"minibatch_size={mb} must be divisible by the number of processes ({world})")
        if cfg.fsdp and peft_config is not None:
            raise ValueError("fsdp=True with a peft_config is not supported: LoRA adapters are small, train them "
                             "data parallel (fsdp=False)")
        if cfg.fsdp and world == 1:
            warnings.warn("fsdp=True with one process: nothing to shard over, training unsharded "
                          "(launch with torchrun --nproc_per_node N)", stacklevel=2)
        set_seed(cfg.seed)
        if not reward_funcs:
            raise ValueError("reward_funcs is empty: give at least one reward function")
        # The total is unscorable as soon as one component is: an item whose correctness is
        # unknown is excluded from its group (advantage 0), not trained on as if it were wrong.
        self.reward = CombinedReward(reward_funcs, cfg.reward_weights, missing="propagate")
        self._scoring_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-scoring")
        names = [r.name for r in self.reward.rewards]
        self.accuracy_name = accuracy_reward or names[0]
        self.format_name = format_reward or next((n for n in names if n.startswith("format")), None)
        for n in (self.accuracy_name, self.format_name):
            if n is not None and n not in names:
                raise ValueError(f"reward {n!r} not among the reward functions {names}")

        self.prompt_key = prompt_key
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.sampler = PromptSampler(len(train_dataset), seed=cfg.seed)
        self.model, self.tokenizer, self.model_path = load_policy(
            model, tokenizer, peft_config, cfg, self.accelerator.device)
        self._broadcast_parameters()
        self.ref_model = None
        if cfg.beta > 0 and not hasattr(self.model, "disable_adapter"):
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.sharded = cfg.fsdp and world > 1
        if self.sharded:
            for m in (self.model, self.ref_model):
                if m is not None:
                    shard_model(m)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_optimizer_and_scheduler(self.params, cfg)
        self.generator = generator or make_generator(cfg, self.model, self.tokenizer, self.model_path)
        self.sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                       min_p=cfg.min_p, max_tokens=cfg.max_completion_length,
                                       stop=tuple(cfg.stop))
        self.step = 0
        if cfg.resume_from:
            self._resume(resolve_checkpoint(cfg.resume_from, cfg.output_dir))
        self.rank, self.world = rank, world

    # ------------------------------------------------------------------------------ the loop
    def train(self) -> dict[str, float]:
        """Run to ``max_steps``; returns the last step's metrics."""
        cfg = self.config
        log = RunLogger(cfg.output_dir, is_main=self.accelerator.is_main_process, accelerator=self.accelerator,
                        report_to=cfg.report_to, total_steps=cfg.max_steps, start_step=self.step,
                        progress_bar=cfg.progress_bar, config=cfg.model_dump(mode="json"))
        if self.accelerator.is_main_process:
            cfg.to_yaml(Path(cfg.output_dir) / "config.yaml")
        metrics: dict[str, float] = {}
        if self.eval_dataset is not None and self.step == 0:
            log.log_eval(0, self.evaluate())
        while self.step < cfg.max_steps:
            metrics = self.train_step(log)
            self.step += 1
            if self.step % cfg.logging_steps == 0:
                log.log_metrics(self.step, metrics)
            log.progress(metrics)
            if self.eval_dataset is not None and cfg.eval_steps and self.step % cfg.eval_steps == 0 \
                    and self.step < cfg.max_steps:
                log.log_eval(self.step, self.evaluate())
            if cfg.save_steps and self.step % cfg.save_steps == 0:
                self.save_checkpoint()
        if self.eval_dataset is not None:
            log.log_eval(self.step, self.evaluate())
        if cfg.save_final_model:
            self.save_model(Path(cfg.output_dir) / "final")
        log.close()
        return metrics

    def train_step(self, log: RunLogger) -> dict[str, float]:
        """One GRPO step: rollout -> score -> advantages -> update -> sync. Returns metrics."""
        cfg, timer, g = self.config, _Timer(), self.config.num_generations
        t0 = time.perf_counter()
        rows = self._next_rows()
        with timer("generate"):
            rollouts = self._generate(rows)
        prompts = [r[self.prompt_key] for r in rows for _ in range(g)]
        # Scoring runs on a thread (rewards wait on scoring-pool processes, sandboxes or remote
        # judges) while this thread computes the log-probs that do not depend on rewards.
        scoring = self._scoring_thread.submit(self._score, prompts, rollouts, rows)
        batch = collate_rollouts(rollouts, None, self.tokenizer.pad_token_id).to(self.accelerator.device)
        sleep = cfg.rollout == "vllm" and cfg.vllm_sleep  # free the engine's GPU memory while training
        if sleep:
            self.generator.sleep()
        with timer("logprobs"):
            old_logp, ref_logp = self._frozen_logprobs(batch)
        with timer("score_wait"):
            scores, timer.times["time/score"] = scoring.result()
        adv = self._group_advantages(scores.values)
        n_local = len(rollouts)
        local_adv = adv.advantages[self.rank * n_local:(self.rank + 1) * n_local]
        with timer("train"):
            train_metrics = self._update(batch.with_advantages(local_adv), old_logp, ref_logp)
        with timer("sync"):
            if sleep:
                self.generator.wake_up()
            self.generator.sync_weights(self.model)
        metrics = {**reward_metrics(scores, self.accuracy_name, self.format_name), **advantage_metrics(adv),
                   **completion_metrics(rollouts), **train_metrics, **timer.times,
                   "time/step": time.perf_counter() - t0, "optim/lr": self.scheduler.get_last_lr()[0]}
        metrics = self._average_over_processes(metrics)
        log.log_completions(self.step + 1, [
            {"prompt": prompts[i], "completion": rollouts[i].text, "reward": scores.values[i],
             "advantage": local_adv[i].item(), **{n: scores.components[n][i].value for n in scores.components}}
            for i in range(min(cfg.log_completions, n_local))])
        return metrics

    # ------------------------------------------------------------------------------ stages
    def _next_rows(self) -> list[dict]:
        k = self.config.prompts_per_step // self.accelerator.num_processes
        indices = self.sampler.take(self.config.prompts_per_step)  # same global batch on every process
        mine = indices[self.accelerator.process_index * k:(self.accelerator.process_index + 1) * k]
        return get_rows(self.train_dataset, mine, self.prompt_key)

    def _step_seed(self, global_prompt: int) -> int:
        """Seed of sample 0 of the step's prompt ``global_prompt`` (sample k: + k). A pure function
        of (seed, step, prompt position), so independent of process count and resumes; linear in
        the position, so one generate call per process covers its prompts (see _generate)."""
        digest = hashlib.blake2b(f"{self.config.seed}:{self.step}".encode(), digest_size=8).digest()
        base = int.from_bytes(digest, "little") % 2**30  # + positions stays below vLLM's 2**31
        return base + global_prompt * self.config.num_generations

    def _generate(self, rows: list[dict]) -> list:
        # One call for the whole local batch. Sample k of local prompt i is seeded
        # _step_seed(first) + i*G + k = _step_seed(first + i) + k: the same stream whichever
        # process holds the prompt (both generators seed rows that way).
        first = self.accelerator.process_index * len(rows)
        prompts = [r[self.prompt_key] for r in rows]
        return self.generator.generate(prompts, self.config.num_generations,
                                       self._sampling(self._step_seed(first)))

    def _sampling(self, seed: int) -> SamplingConfig:
        s = self.sampling
        return SamplingConfig(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
                              max_tokens=s.max_tokens, stop=s.stop, seed=seed % 2**31)

    def _group_advantages(self, total: list[float | None]):
        """Advantages over the whole step: every process gathers all rewards (groups are contiguous)."""
        local = torch.tensor([math.nan if v is None else v for v in total], dtype=torch.float64,
                             device=self.accelerator.device)
        everything = self.accelerator.gather(local).cpu()
        return compute_group_advantages(everything, self.config.num_generations,
                                        scale=self.config.advantage_scale,
                                        leave_one_out=self.config.leave_one_out)

    def _score(self, prompts: list, rollouts: list, rows: list[dict]) -> tuple[RewardBreakdown, float]:
        t0 = time.perf_counter()
        scores = self.reward.evaluate_all(prompts=prompts, completions=[r.text for r in rollouts],
                                          **reward_columns(rows, self.config.num_generations, self.prompt_key))
        return scores, time.perf_counter() - t0

    def _batch_sizes(self) -> tuple[int, int]:
        """(this process's minibatch size, micro-batch size)."""
        cfg = self.config
        mb = (cfg.minibatch_size or cfg.derived().completions_per_step) // self.accelerator.num_processes
        return mb, min(cfg.micro_batch_size, mb)

    def _frozen_logprobs(self, batch: RolloutBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Log-probs fixed for the whole step: the old policy's (None when fully on-policy: then
        they equal the detached current ones) and the reference model's (None when beta = 0)."""
        cfg = self.config
        on_policy = cfg.num_iterations == 1 and cfg.derived().minibatches_per_step == 1
        micro = self._batch_sizes()[1]
        self.model.eval()
        old_logp = None if on_policy else self._logprobs_no_grad(self.model, batch, micro)
        ref_logp = self._reference_logprobs(batch, micro) if cfg.beta > 0 else None
        self.model.train()
        return old_logp, ref_logp

    def _update(self, batch: RolloutBatch, old_logp: torch.Tensor | None,
                ref_logp: torch.Tensor | None) -> dict[str, float]:
        """mu passes over minibatches of this process's rollouts (module docstring, step 5)."""
        cfg = self.config
        mb, micro = self._batch_sizes()
        stats, losses, gap = StatAccumulator(), [], StatAccumulator()
        n_mb = len(batch) // mb
        for it in range(cfg.num_iterations):
            for j in range(n_mb):
                # Minibatch j = completions whose index is j mod n_mb. Each process holds a contiguous
                # shard of the step whose size is a multiple of n_mb, so the global minibatch is the
                # same set of completions whatever the number of processes.
                minibatch = torch.arange(j, len(batch), n_mb)
                normalizer = self._normalizer(batch, minibatch)
                if self.sharded:  # FSDP averages gradients over processes; the loss wants their sum
                    normalizer /= self.accelerator.num_processes
                total = 0.0
                for s in range(0, len(minibatch), micro):
                    idx = minibatch[s:s + micro]
                    sub = batch.select(idx)
                    t = sub.completion_ids.shape[1]
                    with self.accelerator.autocast():
                        lp = completion_logprobs(self.model, sub, temperature=cfg.temperature,
                                                 chunk_size=cfg.logprob_chunk_size, with_entropy=it == 0,
                                                 share_prompts=cfg.share_prompt_forward)
                    old = lp.logp.detach() if old_logp is None else old_logp[idx, :t]
                    out = policy_loss(
                        lp.logp, old, sub.advantages, sub.completion_mask,
                        ref_logp=None if ref_logp is None else ref_logp[idx, :t], beta=cfg.beta,
                        eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip=cfg.dual_clip,
                        kl_estimator=cfg.kl_estimator, aggregation=cfg.aggregation, ratio_level=cfg.ratio_level,
                        rollout_logp=sub.rollout_logp if cfg.use_tis else None, is_cap=cfg.is_cap,
                        normalizer=normalizer)
                    out.loss.backward()
                    total += out.loss.item()
                    m = out.metrics()
                    n_tok = m.pop("loss/num_tokens")
                    m.pop("loss/loss"), m.pop("loss/pg_loss")
                    if it == 0:
                        m["policy/entropy"] = (lp.entropy * sub.completion_mask).sum().item() / max(n_tok, 1)
                        diff = (old - sub.rollout_logp).abs()[sub.completion_mask]
                        if diff.numel():
                            gap.add({"rollout/logprob_gap": diff.mean().item(),
                                     "rollout/logprob_gap_max": diff.max().item()}, diff.numel())
                    stats.add(m, n_tok)
                if not self.sharded:  # FSDP has reduce-scattered them already
                    all_reduce_grads(self.params)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    self.params, cfg.max_grad_norm if cfg.max_grad_norm else math.inf)
                if hasattr(grad_norm, "full_tensor"):  # a DTensor when sharded
                    grad_norm = grad_norm.full_tensor()
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                losses.append((total, grad_norm.item()))
        return {**stats.result(), **gap.result(), "loss/loss": sum(x for x, _ in losses) / len(losses),
                "optim/grad_norm": sum(g for _, g in losses) / len(losses)}

    def _normalizer(self, batch: RolloutBatch, rows: torch.Tensor) -> float:
        """The aggregation's denominator for the *global* minibatch (all micro-batches, all processes)."""
        cfg = self.config
        local = float(batch.completion_mask[rows].sum()) if cfg.aggregation == "token_mean" \
            else float(len(rows))
        count = self.accelerator.reduce(torch.tensor(local, device=self.accelerator.device), "sum").item()
        if cfg.aggregation == "seq_sum_max_len":
            return count * cfg.max_completion_length  # Dr. GRPO: constant generation budget
        return count

    @torch.no_grad()
    def _logprobs_no_grad(self, model, batch: RolloutBatch, micro: int) -> torch.Tensor:
        out = torch.zeros_like(batch.rollout_logp)
        for s in range(0, len(batch), micro):
            sub = batch.select(slice(s, s + micro))
            with self.accelerator.autocast():
                lp = completion_logprobs(model, sub, temperature=self.config.temperature,
                                         chunk_size=self.config.logprob_chunk_size,
                                         share_prompts=self.config.share_prompt_forward).logp
            out[s:s + micro, :lp.shape[1]] = lp
        return out

    def _reference_logprobs(self, batch: RolloutBatch, micro: int) -> torch.Tensor:
        with reference_model(self.model, self.ref_model) as ref:
            return self._logprobs_no_grad(ref, batch, micro)

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Greedy and mean@k accuracy and format rate on the eval set (main process)."""
        cfg = self.config
        n = len(self.eval_dataset) if cfg.eval_max_prompts is None else min(cfg.eval_max_prompts, len(self.eval_dataset))
        result: dict[str, float] = {}
        # A sharded model's forward is a collective: then every process generates (the same rows).
        if self.accelerator.is_main_process or self.sharded:
            self.model.eval()
            rows = get_rows(self.eval_dataset, range(n), self.prompt_key)
            result = evaluate(self.generator, rows, self.reward, accuracy=self.accuracy_name,
                              format_name=self.format_name, k=cfg.eval_samples,
                              sampling=self._sampling(cfg.seed + 12345), prompt_key=self.prompt_key)
            self.model.train()
        self.accelerator.wait_for_everyone()
        return result if self.accelerator.is_main_process else {}

    # ------------------------------------------------------------------------------ state
    def save_checkpoint(self) -> Path:
        return save_checkpoint(self.config.output_dir, self.step, model=self.model, optimizer=self.optimizer,
                               scheduler=self.scheduler, trainer_state={"sampler": self.sampler.state_dict()},
                               rank=self.accelerator.process_index, is_main=self.accelerator.is_main_process,
                               keep=self.config.save_total_limit, barrier=self.accelerator.wait_for_everyone,
                               sharded=self.sharded)

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                rank=self.accelerator.process_index, sharded=self.sharded)
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.generator.sync_weights(self.model)

    def save_model(self, path: str | Path) -> None:
        """The trained model in HF format (LoRA merged if ``merge_lora_on_save``) and its tokenizer."""
        self.accelerator.wait_for_everyone()
        state = full_model_state(self.model) if self.sharded else None  # a collective: every process
        if not self.accelerator.is_main_process:
            return
        model = self.model
        if hasattr(model, "merge_and_unload") and self.config.merge_lora_on_save:
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(path, state_dict=state)
        self.tokenizer.save_pretrained(path)

    def close(self) -> None:
        """Shut the generator down (vLLM engines hold processes and memory) and the scoring thread."""
        self.generator.close()
        self._scoring_thread.shutdown(wait=True)

    def _broadcast_parameters(self) -> None:
        """Start every process from rank 0's weights (a randomly initialised model would differ)."""
        import torch.distributed as dist

        if self.accelerator.num_processes > 1:
            with torch.no_grad():
                for p in self.model.parameters():
                    dist.broadcast(p.data, src=0)

    def _average_over_processes(self, metrics: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1:
            return metrics
        keys = sorted(metrics)
        t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.accelerator.device)
        t = self.accelerator.reduce(t, "mean")
        return dict(zip(keys, t.tolist()))
