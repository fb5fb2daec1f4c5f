"""Rule-based rewards (verifiers) behind one API, usable alone, in ``grpo`` or in trl.

============================  ===============================================================
``Reward``                    base class: implement ``score(completion, **example)`` (per item)
                              or ``evaluate(prompts=, completions=, **columns)`` (per batch);
                              every caller uses ``evaluate`` (or trl's ``reward(...)``)
``ScoreResult``               a score with status (ok, n/a, unscorable, error, ...) and reason
``Unscorable``, ``NotApplicable``  raised in ``score``: "cannot be told" / "not for this row"
``as_reward``                 wrap a trl-style function ``f(completions, **kw) -> list``
``CombinedReward``            weighted sum; ``breakdown(...)`` keeps each component's records
``RewardMonitor``             raises ``RewardFailure`` when a reward scores nothing for k steps
``MathReward``                final answer vs gold with math-verify (R1 accuracy reward)
``CodeReward``                program vs tests in the sandbox (``grpo.sandbox``)
``FormatReward``              R1-Zero ``<think>..</think><answer>..</answer>`` template
``LanguageReward``            R1 language consistency: share of CoT words in the target script
``OverlongPenalty``           DAPO soft overlong punishment (by tokens)
``CosineLengthReward``        cosine length-scaled correctness (Yeo et al. 2025)
``RepetitionPenalty``         n-gram repetition penalty
``RewardModelReward``         a HF sequence-classification reward model (R1 all-scenario RL)
``ScoringPool``, ``get_pool``  the persistent process pool parallel rewards score in
============================  ===============================================================

Importing this package is cheap: math-verify, sympy and the sandbox load on first use.
"""

from grpo.rewards.base import (
    CRASHED,
    ERROR,
    FAILED,
    NOT_APPLICABLE,
    OK,
    STATUSES,
    TIMEOUT,
    UNSCORABLE,
    NotApplicable,
    Reward,
    ScoreResult,
    Unscorable,
    completion_text,
)
from grpo.rewards.code import CodeReward, extract_code
from grpo.rewards.combine import CombinedReward, RewardBreakdown
from grpo.rewards.function import FunctionReward, as_reward
from grpo.rewards.format import FormatReward
from grpo.rewards.language import LanguageReward
from grpo.rewards.length import CosineLengthReward, OverlongPenalty, RepetitionPenalty
from grpo.rewards.math import MathReward, extract_answer
from grpo.rewards.monitor import RewardFailure, RewardMonitor
from grpo.rewards.pool import ScoringPool, get_pool, set_pool, shutdown_pool
from grpo.rewards.reward_model import RewardModelReward
from grpo.sandbox import SandboxLimits, run_python, run_tests, sandbox_layers

__all__ = [
    "CRASHED",
    "ERROR",
    "FAILED",
    "NOT_APPLICABLE",
    "OK",
    "STATUSES",
    "TIMEOUT",
    "UNSCORABLE",
    "CodeReward",
    "CombinedReward",
    "CosineLengthReward",
    "FormatReward",
    "FunctionReward",
    "LanguageReward",
    "MathReward",
    "NotApplicable",
    "OverlongPenalty",
    "RepetitionPenalty",
    "Reward",
    "RewardBreakdown",
    "RewardFailure",
    "RewardModelReward",
    "RewardMonitor",
    "SandboxLimits",
    "ScoreResult",
    "ScoringPool",
    "Unscorable",
    "as_reward",
    "completion_text",
    "extract_answer",
    "extract_code",
    "get_pool",
    "run_python",
    "run_tests",
    "sandbox_layers",
    "set_pool",
    "shutdown_pool",
]
