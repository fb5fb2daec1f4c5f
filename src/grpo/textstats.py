"""Text statistics of completions that R1 plots over training (pure functions, no I/O).

* Reflection rate: DeepSeek-R1 (arXiv:2501.12948) sec. 2.2.4 reports the "aha moment", the
  model learning to re-evaluate ("Wait, wait. Wait. That's an aha moment I can flag here");
  we count completions containing a reflection phrase.
* Language mixing: R1 sec. 2.3.2 notes that the chain of thought mixes languages; we count
  completions whose chain of thought holds words of two or more scripts.

Words and scripts (shared with :class:`grpo.rewards.LanguageReward`), decided by Unicode script:

* a run of letters of one spaced script (Latin, Cyrillic, Greek, Arabic, Hebrew, Devanagari,
  Hangul) is one word; each Han, kana or Thai character is one word (written without spaces);
* not words: digits, punctuation, math symbols, LaTeX commands (``\\frac``), single ASCII
  letters (``x``, ``n``: math variables in any language), and tags such as ``<think>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

REFLECTION_PATTERN = re.compile(
    r"\b(wait|re-?check|re-?evaluate|re-?examine|double[- ]check|let me (?:verify|check|re-?think)|"
    r"verify|mistake|aha|hmm)\b",
    re.IGNORECASE,
)
# (pattern of one "word", per-character?) for each script
SCRIPTS: dict[str, str] = {
    "latin": "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff",
    "cyrillic": "\u0400-\u052f",
    "greek": "\u0370-\u03ff\u1f00-\u1fff",
    "arabic": "\u0600-\u06ff\u0750-\u077f",
    "hebrew": "\u0590-\u05ff",
    "devanagari": "\u0900-\u097f",
    "hangul": "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af",
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df",
    "kana": "\u3040-\u30ff\u31f0-\u31ff",
    "thai": "\u0e00-\u0e7f",
}
_UNSPACED = {"han", "kana", "thai"}
_WORD_RES = {
    name: re.compile(f"[{chars}]" if name in _UNSPACED else f"[{chars}]+")
    for name, chars in SCRIPTS.items()
}
_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+")
_SINGLE_ASCII_RE = re.compile(r"(?<![A-Za-z\u00c0-\u024f])[A-Za-z](?![A-Za-z\u00c0-\u024f])")
_TAG_RE = re.compile(r"</?[A-Za-z_][\w|]*>")


def chain_of_thought(text: str, *, think_in_prompt: bool = False) -> str:
    """The CoT part of a completion: inside <think>...</think>, else everything."""
    end = text.find("</think>")
    if end < 0:
        return text
    start = text.rfind("<think>", 0, end)
    if start >= 0:
        return text[start + len("<think>") : end]
    return text[:end] if think_in_prompt else text


def count_words(text: str) -> dict[str, int]:
    """Words per script (see module docstring for what counts as a word).

    >>> count_words("设 x 为 the answer")
    {'latin': 2, 'han': 2}
    """
    text = _TAG_RE.sub(" ", text)
    text = _LATEX_CMD_RE.sub(" ", text)
    text = _SINGLE_ASCII_RE.sub(" ", text)
    counts = {name: len(r.findall(text)) for name, r in _WORD_RES.items()}
    return {k: v for k, v in counts.items() if v}


def has_reflection(text: str) -> bool:
    """True if ``text`` contains a reflection phrase ("wait", "let me verify", ...).

    >>> has_reflection("x = 4. Wait, let me re-check: x = 5")
    True
    """
    return REFLECTION_PATTERN.search(text) is not None


def is_language_mixed(text: str) -> bool:
    """True if the chain of thought of ``text`` (see :func:`chain_of_thought`) holds words of two
    or more scripts; tags are not words.

    >>> is_language_mixed("The answer 是 4"), is_language_mixed("The answer is 4")
    (True, False)
    >>> is_language_mixed("<think>4加3得7</think><answer>7</answer>")
    False
    """
    return len(count_words(chain_of_thought(text))) >= 2


def fraction(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0
