"""Held-out evaluation as R1 reports it: greedy accuracy, mean@k, pass@k, format rate, by column.

* ``greedy``: one greedy completion per prompt; the cheap, noiseless number to watch in training.
* ``mean@k``: the mean accuracy of k samples per prompt at the training temperature, which is how
  DeepSeek-R1 (arXiv:2501.12948, sec. 3) estimates pass@1 ("pass@1 ... averaged over k samples").
* ``pass@j`` (j <= k): the chance that at least one of j samples is correct, with the unbiased
  estimator of Chen et al. 2021 (arXiv:2107.03374, eq. 1) from the same k samples, averaged over
  prompts: ``1 - C(n - c, j) / C(n, j)`` for n samples of which c are correct
  (:func:`pass_at_k`). The gap between pass@k and mean@k is what RL can still turn into pass@1.

"Accuracy" is the score of one reward function (by default the trainer's first), so for 0/1
verifiers it is the fraction correct; a sample counts as *correct* for pass@j when that score is
at least ``correct_threshold`` (1.0). Unscorable samples (score None) are left out of every
mean; for pass@j a prompt counts with its scorable samples only, and a prompt with fewer than j
of them is left out of pass@j.

Every metric can also be broken down by dataset columns (``by=["difficulty"]``): the same
numbers over the prompts whose column has one value, under ``<metric>/<column>=<value>``, e.g.
``eval/greedy_accuracy/difficulty=hard``, with ``eval/num_prompts/difficulty=hard``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from grpo.data import reward_inputs
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


def scoring_reward(reward_funcs: Sequence[Any], weights: Sequence[float] | None = None):
    """The total reward of training and of ``grpo eval``: a :class:`grpo.rewards.CombinedReward`
    that is unscorable as soon as a component that applies is (``missing="propagate"``). An item
    whose correctness is unknown is excluded from its group (advantage 0), not trained on as if
    it were wrong; components that do not apply to a row (trl's None) are left out of its sum."""
    from grpo.rewards import CombinedReward

    return CombinedReward(reward_funcs, weights, missing="propagate")


def report_names(
    names: Sequence[str], accuracy: str | None = None, format_name: str | None = None
) -> tuple[str, str | None]:
    """(the reward reported as accuracy, the one reported as format rate) among the reward
    ``names``: by default the first reward, and the first whose name starts with "format".

    >>> report_names(["math_reward", "format_reward"])
    ('math_reward', 'format_reward')
    """
    accuracy = accuracy or names[0]
    format_name = format_name or next((n for n in names if n.startswith("format")), None)
    for n in (accuracy, format_name):
        if n is not None and n not in names:
            raise ValueError(f"reward {n!r} not among the reward functions {list(names)}")
    return accuracy, format_name


def eval_sampling(sampling: SamplingConfig, seed: int) -> SamplingConfig:
    """The sampling of ``mean@k`` / ``pass@k`` for a run: its ``sampling`` section (temperature,
    top-p/k, min-p, length, stop strings), seeded with the run's ``seed + EVAL_SEED_OFFSET``."""
    return replace(sampling, seed=(seed + EVAL_SEED_OFFSET) % 2**31)


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
    acc: Sequence[float | None],
    fmt: Sequence[float | None] | None,
    lengths: Sequence[int],
    pass_ks: Sequence[int],
    correct_threshold: float,
) -> dict[str, float]:
    """Metrics of one decoding (n completions per prompt, grouped by prompt) over ``prompts``."""
    rows = [range(p * n, (p + 1) * n) for p in prompts]
    flat = [i for r in rows for i in r]
    out = {f"{tag}_accuracy": _mean([acc[i] for i in flat])}
    if fmt is not None:
        out[f"{tag}_format_rate"] = _mean([fmt[i] for i in flat])
    out[f"{tag}_length"] = sum(lengths[i] for i in flat) / len(flat) if flat else float("nan")
    for j in pass_ks:
        per_prompt = []
        for r in rows:
            scored = [acc[i] for i in r if acc[i] is not None]
            if len(scored) >= j:
                per_prompt.append(
                    pass_at_k(len(scored), sum(s >= correct_threshold for s in scored), j)
                )
        out[f"pass@{j}"] = _mean(per_prompt)
    return out


def evaluate(
    generator,
    rows: Sequence[dict[str, Any]],
    reward,
    *,
    accuracy: str,
    format_name: str | None,
    k: int,
    sampling: SamplingConfig,
    prompt_key: str = "prompt",
    pass_ks: Sequence[int] | None = None,
    by: Sequence[str] = (),
    correct_threshold: float = 1.0,
) -> dict[str, float]:
    """Metrics under ``eval/`` (module docstring): greedy and mean@k accuracy, pass@j, format
    rate, mean length; each also per value of the ``by`` columns.

    Args:
        generator: a :class:`grpo.rollout.Generator` (``generate(prompts, n, sampling)``).
        rows: eval rows: the prompt under ``prompt_key`` and the reward columns.
        reward: a :class:`grpo.rewards.CombinedReward`; ``accuracy`` / ``format_name`` name its
            components.
        k: samples per prompt for mean@k and pass@j.
        sampling: how to sample them (:func:`eval_sampling` gives the trainer's).
        pass_ks: the j of pass@j, each <= k (default: just k; none when k = 1).
        by: dataset columns to break every metric down by.
        correct_threshold: an accuracy score >= this counts as correct for pass@j.
    """
    pass_ks = list(pass_ks) if pass_ks is not None else ([k] if k > 1 else [])
    bad = [j for j in pass_ks if not 1 <= j <= k]
    if bad:
        raise ValueError(
            f"pass_ks={pass_ks}: each must be between 1 and k={k} (the samples per prompt)"
        )
    prompts = [r[prompt_key] for r in rows]
    everyone = list(range(len(rows)))
    groups = _groups(rows, by)
    greedy = SamplingConfig(temperature=0.0, max_tokens=sampling.max_tokens, stop=sampling.stop)
    named: dict[str, float] = {}
    for tag, n, samp, ks in (("greedy", 1, greedy, []), (f"mean@{k}", k, sampling, pass_ks)):
        rollouts = generator.generate(prompts, n, samp)
        scores = reward.breakdown(**reward_inputs(rollouts, prompts, rows, prompt_key))
        acc = scores.component_values(accuracy)
        fmt = scores.component_values(format_name) if format_name is not None else None
        lengths = [len(r.completion_ids) for r in rollouts]
        named.update(_decoding_metrics(tag, everyone, n, acc, fmt, lengths, ks, correct_threshold))
        for group, idx in groups:
            sub = _decoding_metrics(tag, idx, n, acc, fmt, lengths, ks, correct_threshold)
            named.update({f"{name}/{group}": v for name, v in sub.items()})
    for group, idx in groups:
        named[f"num_prompts/{group}"] = float(len(idx))
    return {f"eval/{name}": v for name, v in named.items()}
