"""What a reward says about one completion: a :class:`ScoreResult` with a status and a reason.

Statuses: ``"ok"`` (a finite float), ``"n/a"`` (the reward does not apply to this row: left out
of a combined sum), and the four ways of failing to score a row it applies to, ``FAILED``:
``"unscorable"`` (the verifier could not decide), ``"error"`` (the reward raised, or returned
something that is not a finite number), ``"timeout"`` and ``"crashed"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# ScoreResult.status values.
OK = "ok"  # scored; value is a float
NOT_APPLICABLE = "n/a"  # the reward does not apply to this row: left out of a combined sum
UNSCORABLE = "unscorable"  # applies, but the verifier could not decide (no gold, timeout, ...)
ERROR = "error"  # the reward raised or returned something that is not a finite number
TIMEOUT = "timeout"  # the item ran past its time limit (worker killed / thread abandoned)
CRASHED = "crashed"  # the worker process died while scoring the item (segfault, OOM kill, ...)
STATUSES = (OK, NOT_APPLICABLE, UNSCORABLE, ERROR, TIMEOUT, CRASHED)
FAILED = (UNSCORABLE, ERROR, TIMEOUT, CRASHED)  # "applies, but could not be scored"


class Unscorable(Exception):
    """Raised inside ``score`` to say "this completion cannot be scored", with a reason.

    Use it for missing or unusable *reference data* and verifier failures (no gold answer,
    no tests, the verifier timed out), not for bad completions: a completion without an
    answer is wrong (0.0), not unscorable.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class NotApplicable(Exception):
    """Raised inside ``score`` to say "this reward is not for this row" (status ``"n/a"``).

    trl's convention for a reward function returning None: in a multi-task dataset the math
    reward does not apply to code rows. A combined total leaves such components out.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """One completion's score. ``value`` is None exactly when ``status`` is not ``"ok"``.

    ``reason`` says why a completion is unscorable, and may also explain a scored value
    (e.g. ``"no \\\\boxed{} or <answer> found"`` for a 0.0).
    """

    value: float | None
    status: str = OK
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")
        if (self.value is None) != (self.status != OK):
            raise ValueError(f"value={self.value!r} does not match status={self.status!r}")

    @property
    def scored(self) -> bool:
        return self.status == OK

    @property
    def failed(self) -> bool:
        """The reward applies to this item but could not score it."""
        return self.status in FAILED

    @classmethod
    def unscorable(cls, reason: str, status: str = UNSCORABLE) -> ScoreResult:
        return cls(None, status, reason)

    @classmethod
    def not_applicable(cls, reason: str | None = None) -> ScoreResult:
        return cls(None, NOT_APPLICABLE, reason)

    def record(self) -> dict[str, Any]:
        """JSON-ready ``{"value", "status"[, "reason"]}``."""
        out: dict[str, Any] = {"value": self.value, "status": self.status}
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def checked_value(value: Any, source: str) -> ScoreResult:
    """A value a reward returned, as a result: a finite real number is ``"ok"``; anything else
    (a string, a list, inf, NaN) is ``"error"`` with ``source`` and the value in the reason."""
    if isinstance(value, (str, bytes)) or not _is_number(value):
        return ScoreResult.unscorable(
            f"{source} returned {value!r:.80} ({type(value).__name__}); expected a float", ERROR
        )
    number = float(value)
    if not math.isfinite(number):
        return ScoreResult.unscorable(f"{source} returned {number}; expected a finite float", ERROR)
    return ScoreResult(number)


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True
