"""Held-out evaluation as R1 reports it: greedy accuracy, mean@k, pass@k, format rate, by column.

* ``greedy``: one greedy completion per prompt; the cheap, noiseless number to watch in training.
* ``mean@k``: the mean accuracy of k samples per prompt at the training temperature, which is how
  DeepSeek-R1 (arXiv:2501.12948, sec. 3) estimates pass@1 ("pass@1 ... averaged over k samples").
* ``pass@j`` (j <= k): the chance that at least one of j samples is correct, with the unbiased
  estimator of Chen et al. 2021 (arXiv:2107.03374, eq. 1) from the same k samples, averaged over
  prompts: ``1 - C(n - c, j) / C(n, j)`` for n samples of which c are correct
  (:func:`pass_at_k`). The gap between pass@k and mean@k is what RL can still turn into pass@1.
* ``cons@j`` (j <= k): majority vote, R1's cons@64 (self-consistency, Wang et al. 2022,
  arXiv:2203.11171): the j samples' final answers are grouped by the verifier's own
  equivalence, and the prompt counts as correct when the largest group's answer is
  (:func:`majority_vote`, :func:`consensus_score`). Reported only when the accuracy reward can
  vote (:class:`AnswerVoter`, e.g. :class:`grpo.rewards.MathReward`); by default for j = k.
  With j < k the k samples are cut into ``k // j`` consecutive blocks of j, each voting once.

R1's own evaluation sampling (temperature 0.6, top-p 0.95, k = 64 samples per prompt for pass@1
and cons@64) is :func:`r1_eval_sampling` and ``grpo eval --preset r1``.

"Accuracy" is the score of one reward function (:func:`grpo.metrics.report_names`: the one named
as such, by the trainer's ``accuracy_reward`` / ``reward.accuracy`` or by its name; none: no
accuracy metrics), so for 0/1 verifiers it is the fraction correct; a sample counts as *correct*
for pass@j when that score is at least ``correct_threshold`` (1.0). Unscorable samples (score
None) are left out of every mean; for pass@j a prompt counts with its scorable samples only, and
a prompt with fewer than j of them is left out of pass@j.

Every metric can also be broken down by dataset columns (``by=["difficulty"]``): the same
numbers over the prompts whose column has one value, under ``<metric>/<column>=<value>``, e.g.
``eval/greedy_accuracy/difficulty=hard``, with ``eval/num_prompts/difficulty=hard``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from grpo.data import reward_inputs
from grpo.metrics import report_names  # noqa: F401  (its home before; imported from here)
from grpo.rollout import SamplingConfig

EVAL_SEED_OFFSET = 12345
"""Sampled evaluation uses seed ``config.seed + EVAL_SEED_OFFSET``: the same samples at every
evaluation of a run, and different ones from the training samples of step 0."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, arXiv:2107.03374, eq. 1).

    ``1 - C(n - c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` so that no
    binomial coefficient (which overflows floats for large n) is formed.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 0, 4), pass_at_k(4, 3, 2)
    (0.25, 0.5, 0.0, 1.0)
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}: pass@k needs at least k samples")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    miss = 1.0  # probability that k samples drawn without replacement are all wrong
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


@runtime_checkable
class AnswerVoter(Protocol):
    """A reward that can take part in a majority vote (``cons@k``): it names each completion's
    final answer and says when two answers are the same. :class:`grpo.rewards.MathReward` is one.
    """

    def vote_answer(self, completion: str) -> str | None:
        """The completion's final answer, or None: it does not vote (none, or unparseable)."""

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two answers (as :meth:`vote_answer` gives them) are the same answer."""


def majority_vote(
    answers: Sequence[str | None], same: Callable[[str, str], bool]
) -> list[int] | None:
    """The indices of the largest group of equal answers, in order (its first is the group's
    representative), or None when no answer votes (every one None).

    Answers are grouped first by identical string (free), then each new distinct string joins
    the first existing group whose representative it is ``same`` as, else starts a group: one
    ``same`` call per (distinct string, group) pair at most. Ties between largest groups go to
    the group whose first member comes first.

    >>> majority_vote(["1/2", "0.5", None, "3", "3"], lambda a, b: a == b)
    [3, 4]
    >>> majority_vote(["1/2", "0.5", None, "3", "3"], lambda a, b: {a, b} <= {"1/2", "0.5"})
    [0, 1]
    >>> majority_vote([None, None], lambda a, b: True) is None
    True
    """
    groups: list[list[int]] = []
    group_of: dict[str, int] = {}  # distinct answer string -> its group
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        g = group_of.get(answer)
        if g is None:
            g = next((j for j, m in enumerate(groups) if same(answers[m[0]], answer)), None)
            if g is None:
                groups.append([])
                g = len(groups) - 1
            group_of[answer] = g
        groups[g].append(i)
    return max(groups, key=len) if groups else None  # max keeps the first of equal lengths


def consensus_score(
    answers: Sequence[str | None],
    scores: Sequence[float | None],
    same: Callable[[str, str], bool],
) -> float | None:
    """The score of a majority-voted answer: that of the first member of the
    :func:`majority_vote` group with a score. No vote at all scores 0.0 (like a completion
    without an answer); None (unscorable) when nothing in the group, or in the samples when
    none votes, has a score."""
    group = majority_vote(answers, same)
    members = range(len(answers)) if group is None else group
    scored = [scores[i] for i in members if scores[i] is not None]
    if not scored:
        return None
    return 0.0 if group is None else scored[0]


def answer_voter(reward: Any, accuracy: str) -> AnswerVoter | None:
    """The accuracy component of ``reward`` (a :class:`grpo.rewards.CombinedReward`, or a single
    reward) if it can vote (:class:`AnswerVoter`), else None."""
    components = getattr(reward, "rewards", [reward])
    found = next((r for r in components if getattr(r, "name", None) == accuracy), None)
    return found if isinstance(found, AnswerVoter) else None


def scoring_reward(reward_funcs: Sequence[Any], weights: Sequence[float] | None = None):
    """The total reward of training and of ``grpo eval``: a :class:`grpo.rewards.CombinedReward`
    that is unscorable as soon as a component that applies is (``missing="propagate"``). An item
    whose correctness is unknown is excluded from its group (advantage 0), not trained on as if
    it were wrong; components that do not apply to a row (trl's None) are left out of its sum."""
    from grpo.rewards import CombinedReward

    return CombinedReward(reward_funcs, weights, missing="propagate")


def eval_sampling(sampling: SamplingConfig, seed: int) -> SamplingConfig:
    """The sampling of ``mean@k`` / ``pass@k`` for a run: its ``sampling`` section (temperature,
    top-p/k, min-p, length, stop strings), seeded with the run's ``seed + EVAL_SEED_OFFSET``."""
    return replace(sampling, seed=(seed + EVAL_SEED_OFFSET) % 2**31)


R1_EVAL_TEMPERATURE = 0.6
R1_EVAL_TOP_P = 0.95
R1_EVAL_SAMPLES = 64
"""DeepSeek-R1's evaluation (arXiv:2501.12948, sec. 3.1 "Evaluation Setup"): sampling at
temperature 0.6 and top-p 0.95, k responses per prompt (64 for AIME's pass@1 and cons@64)."""


def r1_eval_sampling(sampling: SamplingConfig, seed: int) -> SamplingConfig:
    """:func:`eval_sampling` with R1's evaluation temperature (0.6) and top-p (0.95); the other
    settings (length, stop strings, top-k, min-p) stay the run's. R1 draws
    ``R1_EVAL_SAMPLES`` = 64 samples per prompt: set ``trainer.eval.samples`` (k) to match.

    >>> s = r1_eval_sampling(SamplingConfig(temperature=1.0, max_tokens=128), seed=0)
    >>> s.temperature, s.top_p, s.max_tokens, s.seed
    (0.6, 0.95, 128, 12345)
    """
    return replace(
        eval_sampling(sampling, seed), temperature=R1_EVAL_TEMPERATURE, top_p=R1_EVAL_TOP_P
    )


EVAL_PRESETS: dict[str, Callable[[SamplingConfig, int], SamplingConfig]] = {"r1": r1_eval_sampling}
"""Named evaluation samplings (``grpo eval --preset NAME``); by default :func:`eval_sampling`."""


def _mean(values: Sequence[float | None]) -> float:
    scored = [v for v in values if v is not None]
    return sum(scored) / len(scored) if scored else float("nan")


def _groups(rows: Sequence[dict[str, Any]], by: Sequence[str]) -> list[tuple[str, list[int]]]:
    """[("difficulty=hard", [prompt indices]), ...] in order of first appearance."""
    out: list[tuple[str, list[int]]] = []
    for col in by:
        found: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            if col not in row:
                raise KeyError(
                    f"eval breakdown column {col!r} is missing from eval row {i} "
                    f"(its columns: {sorted(row)})"
                )
            found.setdefault(str(row[col]), []).append(i)
        out += [(f"{col}={value}", idx) for value, idx in found.items()]
    return out


def _decoding_metrics(
    tag: str,
    prompts: Sequence[int],
    n: int,
    acc: Sequence[float | None] | None,
    fmt: Sequence[float | None] | None,
    lengths: Sequence[int],
    pass_ks: Sequence[int],
    correct_threshold: float,
    votes: Sequence[str | None] | None = None,
    voter: AnswerVoter | None = None,
    cons_ks: Sequence[int] = (),
) -> dict[str, float]:
    """Metrics of one decoding (n completions per prompt, grouped by prompt) over ``prompts``."""
    rows = [range(p * n, (p + 1) * n) for p in prompts]
    flat = [i for r in rows for i in r]
    out = {} if acc is None else {f"{tag}_accuracy": _mean([acc[i] for i in flat])}
    if fmt is not None:
        out[f"{tag}_format_rate"] = _mean([fmt[i] for i in flat])
    out[f"{tag}_length"] = sum(lengths[i] for i in flat) / len(flat) if flat else float("nan")
    for j in pass_ks if acc is not None else ():
        per_prompt = []
        for r in rows:
            scored = [acc[i] for i in r if acc[i] is not None]
            if len(scored) >= j:
                per_prompt.append(
                    pass_at_k(len(scored), sum(s >= correct_threshold for s in scored), j)
                )
        out[f"pass@{j}"] = _mean(per_prompt)
    if voter is not None and votes is not None and acc is not None:
        for j in cons_ks:
            per_prompt = []
            for r in rows:
                blocks = [r[b : b + j] for b in range(0, len(r) - j + 1, j)]
                verdicts = [
                    consensus_score([votes[i] for i in b], [acc[i] for i in b], voter.same_answer)
                    for b in blocks
                ]
                per_prompt.append(
                    _mean([float(v >= correct_threshold) for v in verdicts if v is not None])
                )
            out[f"cons@{j}"] = _mean([v for v in per_prompt if v == v])  # NaN: none scorable
    return out


def evaluate(
    generator,
    rows: Sequence[dict[str, Any]],
    reward,
    *,
    accuracy: str | None,
    format_name: str | None,
    k: int,
    sampling: SamplingConfig,
    prompt_key: str = "prompt",
    pass_ks: Sequence[int] | None = None,
    by: Sequence[str] = (),
    correct_threshold: float = 1.0,
    cons_ks: Sequence[int] | None = None,
) -> dict[str, float]:
    """Metrics under ``eval/`` (module docstring): greedy and mean@k accuracy, pass@j, cons@j,
    format rate, mean length; each also per value of the ``by`` columns.

    Args:
        generator: a :class:`grpo.rollout.Generator` (``generate(prompts, n, sampling)``).
        rows: eval rows: the prompt under ``prompt_key`` and the reward columns.
        reward: a :class:`grpo.rewards.CombinedReward`; ``accuracy`` / ``format_name`` name its
            components; None where no reward is (then no accuracy, pass@j or cons@j metrics).
        k: samples per prompt for mean@k and pass@j.
        sampling: how to sample them (:func:`eval_sampling` gives the trainer's).
        pass_ks: the j of pass@j, each <= k (default: just k; none when k = 1).
        by: dataset columns to break every metric down by.
        correct_threshold: an accuracy score >= this counts as correct for pass@j and cons@j.
        cons_ks: the j of cons@j (majority vote of j samples), each <= k. Default: just k (none
            when k = 1), and only if the accuracy reward can vote (:class:`AnswerVoter`); asked
            for of a reward that cannot, a ValueError.
    """
    if accuracy is None and (pass_ks or cons_ks):
        raise ValueError(
            f"pass_ks={pass_ks} / cons_ks={cons_ks} need an accuracy reward, and none of the "
            f"rewards is named as one: name it (reward.accuracy / GRPOTrainer(accuracy_reward=))"
        )
    pass_ks = list(pass_ks) if pass_ks is not None else ([k] if k > 1 and accuracy else [])
    voter = answer_voter(reward, accuracy) if accuracy is not None else None
    if cons_ks is None:
        cons_ks = [k] if k > 1 and voter is not None else []
    cons_ks = list(cons_ks)
    if cons_ks and voter is None:
        raise ValueError(
            f"cons_ks={cons_ks}: majority vote needs an accuracy reward that can compare answers "
            f"(vote_answer / same_answer, as MathReward has); {accuracy!r} cannot"
        )
    for name, ks in (("pass_ks", pass_ks), ("cons_ks", cons_ks)):
        if any(not 1 <= j <= k for j in ks):
            raise ValueError(
                f"{name}={ks}: each must be between 1 and k={k} (the samples per prompt)"
            )
    prompts = [r[prompt_key] for r in rows]
    everyone = list(range(len(rows)))
    groups = _groups(rows, by)
    greedy = SamplingConfig(temperature=0.0, max_tokens=sampling.max_tokens, stop=sampling.stop)
    named: dict[str, float] = {}
    decodings = (("greedy", 1, greedy, [], []), (f"mean@{k}", k, sampling, pass_ks, cons_ks))
    for tag, n, samp, ks, cks in decodings:
        rollouts = generator.generate(prompts, n, samp)
        inputs = reward_inputs(rollouts, prompts, rows, prompt_key)
        scores = reward.breakdown(**inputs)
        acc = scores.component_values(accuracy) if accuracy is not None else None
        fmt = scores.component_values(format_name) if format_name is not None else None
        lengths = [len(r.completion_ids) for r in rollouts]
        votes = None
        if cks and voter is not None:
            from grpo.rewards import completion_text

            votes = [voter.vote_answer(completion_text(c) or "") for c in inputs["completions"]]
        vote = dict(votes=votes, voter=voter, cons_ks=cks)
        named.update(
            _decoding_metrics(tag, everyone, n, acc, fmt, lengths, ks, correct_threshold, **vote)
        )
        for group, idx in groups:
            sub = _decoding_metrics(tag, idx, n, acc, fmt, lengths, ks, correct_threshold, **vote)
            named.update({f"{name}/{group}": v for name, v in sub.items()})
    for group, idx in groups:
        named[f"num_prompts/{group}"] = float(len(idx))
    return {f"eval/{name}": v for name, v in named.items()}
