"""The rollout source: prompts -> G completions each -> rewards -> group-relative advantages.

It owns everything before the learner: prompt sampling (a resumable, seeded sampler), seeded
generation, scoring (on a thread, so that the learner's frozen log-prob passes overlap it),
advantages, and DAPO dynamic sampling. It hands the learner :class:`Collected` steps, whose
result is a :class:`ScoredStep`: one :class:`ScoredRollout` per completion (its rollout,
prompt, reward breakdown, advantage and position in the step). The synchronous trainer is
``learn(collect())``, and another source (a queue of scored steps from an asynchronous
generator, a multi-turn generator) can take its place without touching the learner.

Joins are by key, never by position. Every completion carries the id of its group (its
prompt within the step: ``round * prompts_per_step + global prompt position``) and its
``sample_index``: its key ``(group, sample)`` (:func:`grpo.batch.rollout_key`). Rewards from
all processes are gathered as ``(group, sample, total, filter metric, length, components...)``
rows, sorted, checked (every group complete, each exactly once) and turned into advantages by
the configured estimator (after ``rollout.length_penalty``'s reward shaping,
:func:`grpo.advantages.length_penalized`, when it is > 0); each completion's record takes its
advantage by key, and the learner's batch takes the records by key again
(:func:`grpo.batch.join_scores`).

DAPO dynamic sampling (arXiv:2503.14476 sec. 3.2, Algorithm 1 line 6-8): a group whose rewards
have no spread (:func:`grpo.advantages.groups_with_signal`) has advantage 0 for every member
and only dilutes the batch. With ``dynamic_sampling`` the source drops such groups and samples
``prompts_per_step`` fresh prompts per extra round until it holds ``prompts_per_step`` groups
with signal (surplus groups of the last round, the highest ids, are dropped as DAPO does), or
until ``dynamic_sampling_max_rounds`` rounds were made: then the step trains on what it has and
the metrics say so (``dynamic/cap_hit``). The spread is judged on ``dynamic_sampling_metric``
(:func:`filter_component`): by default the accuracy component, not the weighted total, so that
a group whose answers are all wrong but whose format rewards differ is dropped (DAPO eq. 11 is
about correctness; verl's default metric is ``acc``). Every process takes part in every round
and keeps the same global set of groups, so the trained groups do not depend on the number of
processes.

``reward_inputs`` (trl's reward-function arguments for a list of rollouts) lives in
:mod:`grpo.data` and is re-exported here.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from grpo.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    groups_with_signal,
    length_penalized,
)
from grpo.batch import Key, rollout_key
from grpo.config import RolloutConfig
from grpo.curriculum import PassRateCurriculum
from grpo.data import PromptSampler, get_rows, reward_inputs
from grpo.guards import check_prompt_lengths
from grpo.metrics import (
    accuracy_range_warning,
    advantage_metrics,
    completion_metrics,
    reward_metrics,
)
from grpo.parallel import Parallelism
from grpo.rewards import CombinedReward, RewardBreakdown
from grpo.rollout import Rollout, SamplingConfig
from grpo.rollout.tokens import encode_prompt
from grpo.rollout.types import BaseGenerator, as_generator
from grpo.rollout.trajectory import multiturn_metrics, trajectory_log


@dataclass(frozen=True)
class ScoredRollout:
    """One completion of a step, scored: what the learner trains on and what is logged of it."""

    rollout: Rollout
    """The completion, tagged by the source with its ``group_id`` and ``policy_version``."""
    prompt: Any
    """The prompt it answers (text or chat messages)."""
    breakdown: RewardBreakdown
    """Its scores, one item: the weighted total and every reward component's record."""
    advantage: float | None = None
    """Its advantage; None when it is not trained (DAPO dynamic sampling dropped its group)."""
    step_index: int | None = None
    """Its position among the step's trained completions of every process, in (group, sample)
    order (None when not trained); the learner puts it in minibatch ``step_index mod n``."""

    @property
    def key(self) -> Key:
        """``(group, sample)``: how the learner's batch finds it
        (:func:`grpo.batch.join_scores`)."""
        return rollout_key(self.rollout)

    @property
    def trained(self) -> bool:
        return self.advantage is not None

    @property
    def reward(self) -> float | None:
        """The weighted total (None: unscorable)."""
        return self.breakdown.total[0].value

    def log_record(self) -> dict[str, Any]:
        """The JSON-ready line of the completions log: ``completion`` is the final answer (a
        multi-turn trajectory's last assistant turn); a trajectory's line also holds the whole
        of it (:func:`grpo.rollout.trajectory.trajectory_log`)."""
        r = self.rollout
        return {
            "prompt": self.prompt,
            "completion": r.text,
            "advantage": self.advantage,
            "group": r.group_id,
            "policy_version": r.policy_version,
            **self.breakdown.item_record(0),
            **trajectory_log(r),  # multi-turn: every turn, tool call and observation
        }


@dataclass
class ScoredStep:
    """One step of this process, scored: a record per completion it sampled, and the metrics."""

    records: list[ScoredRollout]
    """Every completion this process sampled in the step (all dynamic-sampling rounds), in
    sampling order; the trained ones have an advantage."""
    metrics: dict[str, float] = field(default_factory=dict)

    def __iter__(self) -> Iterator[ScoredRollout]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def trained(self) -> list[ScoredRollout]:
        """The trained records, in step order (by ``step_index``)."""
        return sorted((r for r in self.records if r.trained), key=lambda r: r.step_index)

    @property
    def advantages(self) -> torch.Tensor:
        """``[n]`` float32: the advantages of :attr:`trained`, in its order."""
        return torch.tensor([r.advantage for r in self.trained], dtype=torch.float32)

    @property
    def breakdown(self) -> RewardBreakdown:
        """Every record's scores as one breakdown, in record order (what
        :class:`grpo.rewards.RewardMonitor` reads; scalars logged by rewards are in
        :attr:`metrics` under ``reward/logged/``)."""
        return _concat_breakdowns([r.breakdown for r in self.records])


class Collected:
    """A step's completions as soon as they are generated; their scores may still be coming.
    The trainer collates ``rollouts`` (those to train on, or more: the join leaves out the ones
    without an advantage) and runs its frozen log-prob passes meanwhile, then calls
    :meth:`result`, which waits for the scored records (collectives run on the calling thread,
    never on the scoring thread) and joins them to the batch's rows by key
    (:func:`grpo.batch.join_scores`)."""

    def __init__(self, rollouts: list[Rollout], finish):
        self.rollouts = rollouts
        self._finish = finish
        self._done: ScoredStep | None = None

    def result(self) -> ScoredStep:
        if self._done is None:
            self._done = self._finish()
        return self._done


@dataclass
class _Round:
    rollouts: list[Rollout]
    prompts: list[Any]  # per rollout
    scores: RewardBreakdown
    # [N_global, 5 + K] float64 (group, sample, total, metric, length, K components), every process
    table: torch.Tensor


class RolloutSource:
    """Synchronous GRPO rollouts (with optional dynamic sampling); see the module docstring.

    It takes the ``rollout`` and ``sampling`` sections of :class:`grpo.GRPOConfig`, the run's
    ``seed`` (prompt order and per-step sampling seeds) and ``max_steps`` (the ``trainer_state``
    reward functions see)."""

    def __init__(
        self,
        *,
        generator: Any,
        reward: CombinedReward,
        dataset: Any,
        tokenizer: Any,
        rollout: RolloutConfig,
        sampling: SamplingConfig,
        seed: int,
        max_steps: int,
        parallel: Parallelism,
        prompt_key: str = "prompt",
        accuracy_name: str | None = None,
        format_name: str | None = None,
        filter_name: str | None = None,
        context: int | None = None,
        self_context: str | None = None,
    ):
        self.generator, self.reward, self.dataset, self.tokenizer = (
            generator,
            reward,
            dataset,
            tokenizer,
        )
        self.context = context
        self.trainer_state: Any = None  # GRPOTrainer's TrainerState, for the reward functions
        self.self_context = self_context  # distill.self_context: the teacher's privileged prompt
        self.rollout, self.parallel, self.sampling, self.prompt_key = (
            rollout,
            parallel,
            sampling,
            prompt_key,
        )
        self.seed, self.max_steps = seed, max_steps
        self.accuracy_name, self.format_name = accuracy_name, format_name
        self.filter_name = filter_name  # dynamic sampling's component (None: the total)
        self._warned_accuracy_range = False  # warn once that the accuracy reward left [0, 1]
        self.sampler: PromptSampler | PassRateCurriculum = PromptSampler(len(dataset), seed=seed)
        self.curriculum: PassRateCurriculum | None = None
        if rollout.curriculum == "pass_rate":
            self.curriculum = self.sampler = self._curriculum(len(dataset))
        self._drawn: dict[int, list[int]] = {}  # round -> the step's global prompt indices
        self.estimator = ADVANTAGE_ESTIMATORS[rollout.advantage_estimator]
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grpo-scoring")

    # ------------------------------------------------------------------ public
    def collect(self, step: int) -> Collected:
        """Step ``step``'s completions, sampled with the weights of optimizer step ``step``."""
        cfg = self.rollout
        if not cfg.dynamic_sampling:
            rollouts, prompts, rows, gen_time = self._generate(step, 0)
            pending = self._thread.submit(self._score_local, step, rollouts, prompts, rows)

            def finish() -> ScoredStep:
                scores, score_time = pending.result()
                rnd = _Round(
                    rollouts,
                    _per_rollout(prompts, rollouts),
                    scores,
                    self._gather_totals(rollouts, scores),
                )
                return self._records([rnd], {"time/generate": gen_time, "time/score": score_time})

            return Collected(rollouts, finish)
        rounds: list[_Round] = []
        times = {"time/generate": 0.0, "time/score": 0.0}
        kept = 0
        for r in range(cfg.dynamic_sampling_max_rounds):
            rollouts, prompts, rows, gen_time = self._generate(step, r)
            scores, score_time = self._score_local(step, rollouts, prompts, rows)
            rnd = _Round(
                rollouts,
                _per_rollout(prompts, rollouts),
                scores,
                self._gather_totals(rollouts, scores),
            )
            rounds.append(rnd)
            times["time/generate"] += gen_time
            times["time/score"] += score_time
            kept += int(_filter_signal(_sorted(rnd.table, cfg.num_generations), cfg).sum())
            if kept >= cfg.prompts_per_step:
                break
        step_result = self._records(rounds, times)
        return Collected([r.rollout for r in step_result.trained], lambda: step_result)

    @property
    def generator(self) -> BaseGenerator:
        """The generator; one assigned is wrapped by :func:`grpo.rollout.as_generator` (a
        duck-typed one gets the default capabilities)."""
        return self._generator

    @generator.setter
    def generator(self, generator: Any) -> None:
        self._generator = as_generator(generator)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.curriculum is None and "kind" in state["sampler"]:
            raise ValueError(
                f"the checkpoint's prompt sampler is rollout.curriculum="
                f"{state['sampler']['kind']!r}; this run has rollout.curriculum='off': resume "
                "with the setting the run started with"
            )
        self.sampler.load_state_dict(state["sampler"])

    def _curriculum(self, n: int) -> PassRateCurriculum:
        """``rollout.curriculum='pass_rate'``'s sampler, refused where it cannot read a pass
        rate or draw a step's prompts."""
        cfg = self.rollout
        if self.accuracy_name is None:
            names = [r.name for r in getattr(self.reward, "rewards", [])]
            raise ValueError(
                "rollout.curriculum='pass_rate' reads each prompt's pass rate from the reward "
                f"reported as accuracy, and none of the rewards {names} is: name it with "
                "reward.accuracy (or GRPOTrainer(accuracy_reward=...))"
            )
        if cfg.prompts_per_step > n:
            raise ValueError(
                f"rollout.curriculum='pass_rate' draws rollout.prompts_per_step="
                f"{cfg.prompts_per_step} distinct prompts per step from a train_dataset of {n}: "
                "lower prompts_per_step or add prompts"
            )
        return PassRateCurriculum(
            n,
            self.seed,
            retire_at=cfg.curriculum_retire_at,
            min_samples=cfg.curriculum_min_samples or cfg.num_generations,
            weighting=cfg.curriculum_weighting,
            floor=cfg.curriculum_floor,
        )

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    # ------------------------------------------------------------------ generation
    def _generate(self, step: int, round_: int) -> tuple[list[Rollout], list, list[dict], float]:
        """This process's slice of ``prompts_per_step`` fresh prompts, G samples each, tagged."""
        t0 = time.perf_counter()
        cfg, par = self.rollout, self.parallel
        k = cfg.prompts_per_step // par.world
        # the same global prompts on every process
        indices = self._drawn[round_] = self.sampler.take(cfg.prompts_per_step)
        first = par.rank * k
        rows = get_rows(self.dataset, indices[first : first + k], self.prompt_key)
        prompts = [r[self.prompt_key] for r in rows]
        # a generator that renders more than the prompt (tool schemas) says how it encodes one
        encode = self.generator.encode_prompt or (
            lambda p: encode_prompt(self.tokenizer, p, cfg.chat_template_kwargs)
        )
        check_prompt_lengths(
            [encode(p) for p in prompts],
            indices[first : first + k],
            cfg.max_prompt_length,
            self.context,
        )
        g = cfg.num_generations
        # One call for the local prompts: sample j of local prompt i is seeded
        # base + (first + i) * G + j, the same stream whichever process holds the prompt.
        extra = {"rows": rows} if self.generator.accepts_rows else {}  # environments' rows
        out = self.generator.generate(
            prompts, g, self._sampling(self.step_seed(step, round_, first)), **extra
        )
        if len(out) != len(prompts) * g:
            raise RuntimeError(
                f"the generator returned {len(out)} rollouts for {len(prompts)} prompts x {g}"
            )
        # a generator with its own weights (asynchronous rollouts) says which version sampled
        versioned = self.generator.versioned
        tagged = [
            replace(
                r,
                group_id=round_ * cfg.prompts_per_step + first + r.prompt_index,
                policy_version=r.policy_version if versioned else step,
                # DAPO overlong filtering: a cut completion stays in its group's statistics,
                # but none of its tokens is trained on
                loss_mask=[0] * len(r.completion_ids)
                if cfg.mask_truncated_completions and r.truncated
                else r.loss_mask,
            )
            for r in out
        ]
        if self.self_context is not None:
            tagged = self._with_teacher_prompts(tagged, prompts, rows, encode)
        return tagged, prompts, rows, time.perf_counter() - t0

    def _with_teacher_prompts(
        self, rollouts: list[Rollout], prompts, rows, encode
    ) -> list[Rollout]:
        """On-policy self-distillation: each rollout with the ids of its privileged prompt
        (:func:`grpo.distill.privileged_prompt`), encoded as its own prompt was."""
        from grpo.distill import privileged_prompt

        ids = [
            encode(privileged_prompt(p, row, self.self_context)) for p, row in zip(prompts, rows)
        ]
        limit = self.context
        for n, r in ((len(ids[r.prompt_index]), r) for r in rollouts):
            if limit is not None and n + len(r.completion_ids) > limit:
                raise ValueError(
                    f"distill.self_context's privileged prompt has {n} tokens, and with the "
                    f"{len(r.completion_ids)} completion tokens it exceeds the model's context "
                    f"of {limit}: shorten the template or lower sampling.max_tokens"
                )
        return [replace(r, teacher_prompt_ids=ids[r.prompt_index]) for r in rollouts]

    def step_seed(self, step: int, round_: int, global_prompt: int) -> int:
        return sampling_seed(self.seed, step, global_prompt, self.rollout.num_generations, round_)

    def _sampling(self, seed: int) -> SamplingConfig:
        return replace(self.sampling, seed=seed)

    # ------------------------------------------------------------------ scoring and records
    def _score_local(
        self, step: int, rollouts: list[Rollout], prompts: list, rows: list[dict]
    ) -> tuple[RewardBreakdown, float]:
        """Score this process's rollouts (no collectives: this may run on the scoring thread)."""
        from transformers import TrainerState

        t0 = time.perf_counter()
        trainer = self.trainer_state  # GRPOTrainer's: reward functions get this step's copy
        state = (
            replace(trainer, global_step=step)
            if trainer is not None
            else TrainerState(global_step=step, max_steps=self.max_steps)
        )
        scores = self.reward.breakdown(
            **reward_inputs(rollouts, prompts, rows, self.prompt_key), trainer_state=state
        )
        return scores, time.perf_counter() - t0

    def _gather_totals(self, rollouts: list[Rollout], scores: RewardBreakdown) -> torch.Tensor:
        """Every process's ``(group, sample, total, filter metric, length, component...)`` rows:
        the columns the advantage estimator and dynamic sampling read (NaN: no score)."""

        def col(values: list[float | None]) -> list[float]:
            return [math.nan if v is None else v for v in values]

        totals = col(scores.values)
        metric = (
            totals if self.filter_name is None else col(scores.component_values(self.filter_name))
        )
        components = [col(scores.component_values(n)) for n in scores.components]
        local = torch.tensor(
            [
                [r.group_id, r.sample_index, v, m, len(r.completion_ids), *c]
                for r, v, m, *c in zip(rollouts, totals, metric, *components, strict=True)
            ],
            dtype=torch.float64,
            device=self.parallel.device,
        ).view(len(rollouts), 5 + len(components))
        return self.parallel.gather(local).cpu()

    def _advantage_inputs(self, kept: torch.Tensor, rounds: list[_Round]) -> AdvantageInputs:
        """The estimator's inputs from the kept rows of the gathered table."""
        names, weights = _component_names(rounds)
        return AdvantageInputs(
            rewards=kept[:, 2].clone(),
            group_size=self.rollout.num_generations,
            components=kept[:, 5:].clone(),
            names=names,
            weights=weights,
            lengths=kept[:, 4].clone(),
            metric=kept[:, 3].clone(),
        )

    def _observe(self, table: torch.Tensor, rounds: list[_Round]) -> None:
        """The curriculum counts every scored completion of the step (every round, every
        process: the gathered ``table``), by the accuracy component; the same on every process.
        A row's prompt is the dataset index its round drew at its group's position."""
        names, _ = _component_names(rounds)
        column = 5 + list(names).index(self.accuracy_name)
        p = self.rollout.prompts_per_step
        groups = table[:, 0].long().tolist()
        indices = [self._drawn[gr // p][gr % p] for gr in groups]
        self.curriculum.observe(indices, table[:, column].tolist())

    def _check_accuracy_range(self, breakdown: RewardBreakdown) -> None:
        """Warn once when the reward reported as accuracy scores outside [0, 1]."""
        if self._warned_accuracy_range or self.accuracy_name is None:
            return
        message = accuracy_range_warning(
            breakdown.component_values(self.accuracy_name), self.accuracy_name
        )
        if message is not None:
            self._warned_accuracy_range = True
            warnings.warn(message, stacklevel=2)

    def _records(self, rounds: list[_Round], times: dict[str, float]) -> ScoredStep:
        """Advantages over the step's kept groups (every process's rewards), and one record per
        completion of this process, which takes its advantage by key."""
        cfg, g = self.rollout, self.rollout.num_generations
        table = _sorted(torch.cat([r.table for r in rounds]), g)  # [N, 4] in (group, sample) order
        signal_P = groups_with_signal(table[:, 2], g, tol=cfg.dynamic_sampling_tol)
        filter_P = _filter_signal(table, cfg)
        keep_P = torch.ones_like(signal_P)
        if cfg.dynamic_sampling:  # DAPO: groups with signal, the first prompts_per_step of them
            keep_P = filter_P & (filter_P.cumsum(0) <= cfg.prompts_per_step)
        kept = table[keep_P.repeat_interleave(g)]
        kept_N3 = kept[:, :3]
        adv = None
        if len(kept):
            inputs = self._advantage_inputs(kept, rounds)
            if cfg.length_penalty > 0:  # reward shaping before the estimator (prime-rl #2901)
                inputs = length_penalized(inputs, cfg.length_penalty)
            adv = self.estimator(inputs)
        # the trained completions' keys, in step order
        step_index = {(int(gr), int(s)): i for i, (gr, s) in enumerate(kept_N3[:, :2].tolist())}
        advantages = adv.advantages.tolist() if adv is not None else []
        records = []
        for rnd in rounds:
            # the reward call scored rnd.rollouts in their order: item i is rollout i's
            for i, r in enumerate(rnd.rollouts):
                pos = step_index.get(rollout_key(r))
                records.append(
                    ScoredRollout(
                        r,
                        rnd.prompts[i],
                        _item(rnd.scores, i),
                        None if pos is None else advantages[pos],
                        pos,
                    )
                )
        breakdown = _concat_breakdowns([r.scores for r in rounds])
        self._check_accuracy_range(breakdown)
        if self.curriculum is not None:  # before the next step's draw
            self._observe(table, rounds)
        sampled = [r.rollout for r in records]
        metrics = {
            **reward_metrics(breakdown, self.accuracy_name, self.format_name),
            **completion_metrics(sampled),
            **multiturn_metrics(sampled, breakdown.values),
            **times,
        }
        if adv is not None:
            metrics.update(advantage_metrics(adv))
        if self.curriculum is not None:
            metrics.update(self.curriculum.metrics())
        metrics["adv/zero_std_frac"] = 1.0 - signal_P.double().mean().item()  # every sampled group
        if cfg.dynamic_sampling:
            n_kept = int(keep_P.sum())
            metrics.update(
                {
                    "dynamic/rounds": float(len(rounds)),
                    "dynamic/groups_sampled": float(len(signal_P)),
                    "dynamic/groups_kept": float(n_kept),
                    "dynamic/prompts_consumed": float(len(signal_P)),
                    "dynamic/filtered_frac": 1.0 - n_kept / len(signal_P),
                    "dynamic/cap_hit": float(n_kept < cfg.prompts_per_step),
                    # groups with a spread of the total that the metric (accuracy) judged flat
                    "dynamic/dropped_total_spread": float((signal_P & ~filter_P).sum()),
                }
            )
        return ScoredStep(records, metrics)


def sampling_seed(
    seed: int, step: int, global_prompt: int, group_size: int, round_: int = 0
) -> int:
    """Seed of sample 0 of prompt ``global_prompt`` of a step (sample j: + j, the generators'
    convention). A pure function of (seed, step, round, prompt position), so runs are
    reproducible across resumes and process counts; linear in the position, so one generate
    call with ``SamplingConfig(seed=sampling_seed(..., first, ...))`` covers consecutive prompts.

    >>> sampling_seed(0, 3, 2, 8) - sampling_seed(0, 3, 0, 8)
    16
    """
    key = f"{seed}:{step}" + (f":{round_}" if round_ else "")
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    base = int.from_bytes(digest, "little") % 2**30  # + positions stays below vLLM's 2**31
    return (base + global_prompt * group_size) % 2**31  # ready for SamplingConfig(seed=...)


def _per_rollout(prompts: Sequence[Any], rollouts: Sequence[Rollout]) -> list[Any]:
    return [prompts[r.prompt_index] for r in rollouts]


def _component_names(rounds) -> tuple[tuple[str, ...], tuple[float, ...]]:
    scores = rounds[0].scores
    names = tuple(scores.components)
    return names, tuple(float(scores.weights.get(n, 1.0)) for n in names)


def filter_component(
    key: str | None, names: Sequence[str], accuracy: str | None, format_name: str | None
) -> str | None:
    """The reward component DAPO dynamic sampling judges a group's spread on (None: the
    weighted total), from ``rollout.dynamic_sampling_metric`` = ``key`` and the reward
    components ``names``: ``'total'`` is the total, another name that component; None picks the
    component reported as accuracy (:func:`grpo.metrics.report_names`) unless it is the only
    reward or also the format reward; the total when no reward is reported as accuracy.

    >>> filter_component(None, ["math_reward", "format_reward"], "math_reward", "format_reward")
    'math_reward'
    >>> filter_component("total", ["math_reward", "format_reward"], "math_reward", None) is None
    True
    """
    if key == "total":
        return None
    if key is not None:
        if key not in names:
            raise ValueError(
                f"rollout.dynamic_sampling_metric={key!r} is not a reward component: give one of "
                f"{['total', *names]} (or leave it unset for the accuracy component)"
            )
        return key
    if len(names) < 2 or accuracy is None or accuracy == format_name:
        return None
    return accuracy


def _filter_signal(table: torch.Tensor, cfg: RolloutConfig) -> torch.Tensor:
    """[P] bool: the groups of a sorted ``(group, sample, total, metric)`` table whose filter
    metric has signal; a group where the metric scored no completion is judged on the total."""
    g, tol = cfg.num_generations, cfg.dynamic_sampling_tol
    on_metric_P = groups_with_signal(table[:, 3], g, tol=tol)
    on_total_P = groups_with_signal(table[:, 2], g, tol=tol)
    scored_P = (~torch.isnan(table[:, 3])).view(-1, g).any(dim=1)
    return torch.where(scored_P, on_metric_P, on_total_P)


def _sorted(table: torch.Tensor, g: int) -> torch.Tensor:
    """Rows in (group, sample) order, checked to form complete groups: samples 0..G-1 once each."""
    table = table[torch.argsort(table[:, 0] * g + table[:, 1])]
    n = table.shape[0]
    ok = n % g == 0
    if ok:
        groups_PG, samples_PG = table[:, 0].view(-1, g), table[:, 1].view(-1, g)
        ok = bool((groups_PG == groups_PG[:, :1]).all()) and bool(
            (samples_PG == torch.arange(g, dtype=samples_PG.dtype)).all()
        )
    if not ok:
        raise RuntimeError(
            f"the step's completions do not form complete groups of {g} (group, sample) "
            "pairs: a generator returned a sample twice or a group incompletely"
        )
    return table


def _item(scores: RewardBreakdown, i: int) -> RewardBreakdown:
    """Item ``i`` of a breakdown, as a breakdown of one (without the batch's logged scalars)."""
    return RewardBreakdown(
        [scores.total[i]],
        {n: [rs[i]] for n, rs in scores.components.items()},
        scores.weights,
        {c: [vals[i]] for c, vals in scores.extra.items()},
    )


def _concat_breakdowns(parts: list[RewardBreakdown]) -> RewardBreakdown:
    """One breakdown of the parts' items in order (logged scalars: the first part's)."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return RewardBreakdown([], {}, {})
    first = parts[0]
    columns = dict.fromkeys(c for p in parts for c in p.extra)  # every part's, in order
    return replace(
        first,
        total=[t for p in parts for t in p.total],
        components={n: [x for p in parts for x in p.components[n]] for n in first.components},
        extra={
            c: [x for p in parts for x in p.extra.get(c, [None] * len(p.total))] for c in columns
        },
    )


__all__ = [
    "Collected",
    "RolloutSource",
    "ScoredRollout",
    "ScoredStep",
    "reward_inputs",
    "sampling_seed",
]
