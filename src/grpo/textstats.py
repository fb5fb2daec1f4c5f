"""Text statistics of completions that R1 plots over training (pure functions, no I/O).

* Reflection rate: DeepSeek-R1 (arXiv:2501.12948) sec. 2.2.4 reports the "aha moment", the
  model learning to re-evaluate ("Wait, wait. Wait. That's an aha moment I can flag here");
  we count completions containing a reflection phrase.
* Language mixing: R1 sec. 2.3.2 notes that the chain of thought mixes languages; we count
  completions whose text holds both Latin letters and CJK characters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

REFLECTION_PATTERN = re.compile(
    r"\b(wait|re-?check|re-?evaluate|re-?examine|double[- ]check|let me (?:verify|check|re-?think)|"
    r"verify|mistake|aha|hmm)\b",
    re.IGNORECASE,
)
_LATIN = re.compile(r"[A-Za-z]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def has_reflection(text: str) -> bool:
    """True if ``text`` contains a reflection phrase ("wait", "let me verify", ...).

    >>> has_reflection("x = 4. Wait, let me re-check: x = 5")
    True
    """
    return REFLECTION_PATTERN.search(text) is not None


def is_language_mixed(text: str) -> bool:
    """True if ``text`` mixes Latin letters and CJK characters.

    >>> is_language_mixed("The answer 是 4"), is_language_mixed("The answer is 4")
    (True, False)
    """
    return _LATIN.search(text) is not None and _CJK.search(text) is not None


def fraction(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0
