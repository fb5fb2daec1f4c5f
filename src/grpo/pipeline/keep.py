"""The keep rule of rejection sampling (DeepSeek-R1, arXiv:2501.12948 sec. 2.3.3).

R1 samples several responses per prompt from the RL checkpoint and "retain[s] only the correct
ones", then filters out "chain-of-thought with mixed languages, long paragraphs, and code
blocks". :class:`KeepRule` states such a rule; :func:`select` applies it to one prompt's scored
samples and says, for each sample, why it was dropped (the first failed check, in this order):

1. ``truncated``: cut by the length limit (an unfinished trace teaches the model not to stop);
2. ``incorrect``: a verifier in ``verifiers`` that applies to the row did not reach
   ``pass_threshold``, or the weighted total is under ``min_reward``;
   ``unscorable``: otherwise, when correctness is unknown: a verifier that applies could not
   score the sample (status unscorable, error, timeout, crashed), no verifier applies to the
   row (every one is trl's None, status ``"n/a"``), or ``min_reward`` is set and the total is
   unscorable;
3. ``language``: the chain of thought's share of words in ``language``'s script is under
   ``min_language_share`` (:class:`grpo.rewards.LanguageReward`, R1 sec. 2.3.2). A CoT with no
   words at all (digits and symbols only) has nothing to mix and passes;
4. ``too_short`` / ``too_long``: outside ``[min_tokens, max_tokens]`` completion tokens;
5. ``duplicate``: the same text (whitespace-normalised) as a kept sample of the same prompt;
6. ``over_limit``: the prompt already has ``max_per_prompt`` kept samples (first come, in
   sample order, which is seeded).

A verifier with status ``"n/a"`` (trl's None: it does not apply to this row, e.g. the math
verifier on a code row of a mixed dataset) is skipped, as the trainer's total leaves it out.

*Correct* (checks 1-2, truncation included) is also what the prompt's pass rate counts, the
number open-r1's ``scripts/pass_rate_filtering`` uses to choose RL prompts. Like evaluation's
accuracy (:mod:`grpo.evaluation`), the pass rate is taken over the *scorable* samples only: an
unscorable sample is neither right nor wrong, and a prompt with no scorable sample has no pass
rate (None), not 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from grpo.rewards.result import NOT_APPLICABLE, OK, UNSCORABLE

REASONS = (
    "truncated",
    "incorrect",
    "unscorable",
    "language",
    "too_short",
    "too_long",
    "duplicate",
    "over_limit",
)


class KeepRule(BaseModel):
    """Which sampled completions become SFT rows. Defaults: every verifier passes, finished,
    deduplicated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verifiers: list[str] | None = Field(
        None,
        description="Reward components that must each reach pass_threshold (None: all of them; "
        "[]: none, e.g. to select by min_reward alone).",
    )
    pass_threshold: float = Field(
        1.0, description="Score a verifier must reach to pass (1.0 for 0/1 verifiers)."
    )
    min_reward: float | None = Field(
        None, description="Also require the weighted total reward >= this."
    )
    language: str | None = Field(
        None,
        description="Target language of the chain of thought ('en', 'zh', ...); "
        "None: no language filter.",
    )
    min_language_share: float = Field(
        1.0, ge=0, le=1, description="Least share of CoT words in the target script."
    )
    drop_truncated: bool = Field(True, description="Drop completions cut by the length limit.")
    min_tokens: int = Field(1, ge=0, description="Fewest completion tokens kept.")
    max_tokens: int | None = Field(
        None, ge=1, description="Most completion tokens kept (None: no bound)."
    )
    dedup: bool = Field(True, description="Drop repeated texts within a prompt's samples.")
    max_per_prompt: int | None = Field(
        None, ge=1, description="k: most rows kept per prompt (None: all)."
    )

    @model_validator(mode="after")
    def _check(self) -> KeepRule:
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError(f"max_tokens={self.max_tokens} < min_tokens={self.min_tokens}")
        if self.language is not None:
            from grpo.rewards import LanguageReward

            LanguageReward(self.language)  # ValueError for an unknown code
        return self


@dataclass
class Sample:
    """One scored completion of a prompt (what :func:`select` reads)."""

    text: str
    n_tokens: int
    truncated: bool
    total: float | None
    components: dict[str, float | None]
    reasons: dict[str, str | None] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    """Per component, its :class:`~grpo.rewards.ScoreResult` status (``"ok"``, ``"n/a"``,
    ``"unscorable"``, ...). Missing (samples stored before statuses were): ``"ok"`` where there
    is a value, else ``"unscorable"``."""

    def status(self, name: str) -> str:
        if name in self.statuses:
            return self.statuses[name]
        return OK if self.components[name] is not None else UNSCORABLE


def is_correct(sample: Sample, rule: KeepRule) -> bool | None:
    """Checks 1-2 of the module docstring: True (correct), False (incorrect or truncated), or
    None (unscorable: neither, left out of the pass rate).

    Verifiers that do not apply (``"n/a"``) are skipped. A verifier that applies and fails the
    threshold makes the sample incorrect even if another could not be scored; otherwise a
    verifier that could not score it, or no verifier applying at all, makes it unscorable."""
    names = list(sample.components) if rule.verifiers is None else rule.verifiers
    applicable = [n for n in names if sample.status(n) != NOT_APPLICABLE]
    unknown = bool(names) and not applicable  # no verifier applies to this row
    for name in applicable:
        value = sample.components[name]
        if sample.status(name) != OK or value is None:
            unknown = True
        elif value < rule.pass_threshold:
            return False
    if rule.min_reward is not None:
        if sample.total is None:
            unknown = True
        elif sample.total < rule.min_reward:
            return False
    if unknown:
        return None
    return not (rule.drop_truncated and sample.truncated)


def language_share(text: str, language: str) -> float | None:
    """Share of the CoT's words in ``language``'s script; None if it has no words."""
    from grpo.rewards import LanguageReward, Unscorable

    try:
        return LanguageReward(language).score(text)
    except Unscorable:  # no words in the chain of thought: nothing to mix
        return None


def select(samples: list[Sample], rule: KeepRule) -> list[str | None]:
    """Per sample: None if kept, else the reason it was dropped (one of ``REASONS``)."""
    out: list[str | None] = []
    seen: set[str] = set()
    kept = 0
    for s in samples:
        reason = _first_failure(s, rule)
        if reason is None and rule.dedup:
            key = re.sub(r"\s+", " ", s.text).strip()
            reason = "duplicate" if key in seen else None
            seen.add(key)
        if reason is None and rule.max_per_prompt is not None and kept >= rule.max_per_prompt:
            reason = "over_limit"
        kept += reason is None
        out.append(reason)
    return out


def _first_failure(s: Sample, rule: KeepRule) -> str | None:
    if rule.drop_truncated and s.truncated:
        return "truncated"
    correct = is_correct(s, rule)
    if correct is None:
        return "unscorable"
    if not correct:
        return "incorrect"
    if rule.language is not None:
        share = language_share(s.text, rule.language)
        if share is not None and share < rule.min_language_share:
            return "language"
    if s.n_tokens < rule.min_tokens:
        return "too_short"
    if rule.max_tokens is not None and s.n_tokens > rule.max_tokens:
        return "too_long"
    return None


def check_verifiers(rule: KeepRule, names: list[str]) -> None:
    """ValueError when the rule names a verifier that is not among the rewards."""
    unknown = sorted(set(rule.verifiers or ()) - set(names))
    if unknown:
        raise ValueError(f"keep rule verifiers {unknown} are not among the rewards {names}")
