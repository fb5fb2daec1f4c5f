"""Rule-based rewards (verifiers) behind one API, usable alone, in ``grpo`` or in trl.

============================  ===============================================================
``Reward``                    base class: implement ``score(completion, **example)``
``ScoreResult``, ``Unscorable``  a score with status and reason; "cannot score" with a reason
``as_reward``                 wrap a trl-style function ``f(completions, **kw) -> list``
``CombinedReward``            weighted sum keeping each component (``RewardBreakdown``)
``MathReward``                final answer vs gold with math-verify (R1 accuracy reward)
``CodeReward``                program vs tests in the sandbox (``grpo.rewards.sandbox``)
``FormatReward``              R1-Zero ``<think>..</think><answer>..</answer>`` template
``LanguageReward``            R1 language consistency: share of CoT words in the target script
``OverlongPenalty``           DAPO soft overlong punishment (by tokens)
``CosineLengthReward``        cosine length-scaled correctness (Yeo et al. 2025)
``RepetitionPenalty``         n-gram repetition penalty
``ScoringPool``, ``get_pool``  the persistent process pool parallel rewards score in
============================  ===============================================================

Importing this package is cheap: math-verify, sympy and the sandbox load on first use.
"""

from grpo.rewards.base import (
    CRASHED,
    ERROR,
    OK,
    TIMEOUT,
    UNSCORABLE,
    FunctionReward,
    Reward,
    ScoreResult,
    Unscorable,
    as_reward,
    completion_text,
)
from grpo.rewards.code import CodeReward, extract_code
from grpo.rewards.combine import CombinedReward, RewardBreakdown
from grpo.rewards.format import FormatReward
from grpo.rewards.language import LanguageReward
from grpo.rewards.length import CosineLengthReward, OverlongPenalty, RepetitionPenalty
from grpo.rewards.math import MathReward, extract_answer
from grpo.rewards.pool import ScoringPool, get_pool, set_pool, shutdown_pool
from grpo.rewards.sandbox import SandboxLimits, run_python, run_tests, sandbox_layers

__all__ = [
    "CRASHED", "ERROR", "OK", "TIMEOUT", "UNSCORABLE",
    "CodeReward", "CombinedReward", "CosineLengthReward", "FormatReward", "FunctionReward",
    "LanguageReward", "MathReward", "OverlongPenalty", "RepetitionPenalty", "Reward",
    "RewardBreakdown", "SandboxLimits", "ScoreResult", "ScoringPool", "Unscorable", "as_reward",
    "completion_text", "extract_answer", "extract_code", "get_pool", "run_python", "run_tests",
    "sandbox_layers", "set_pool", "shutdown_pool",
]
