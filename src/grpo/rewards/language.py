"""Language-consistency reward (DeepSeek-R1, arXiv:2501.12948, §2.3.2).

R1-Zero's chains of thought mixed languages; R1 adds "a language consistency reward during RL
training, which is calculated as the proportion of target language words in the CoT", summed
with the accuracy reward. This implementation decides a word's language by its Unicode
*script*, which is what the mixing R1 describes (e.g. English and Chinese) changes:

* words: a run of letters of one spaced script (Latin, Cyrillic, Greek, Arabic, Hebrew,
  Devanagari, Hangul) is one word; each Han, kana or Thai character is one word (those scripts
  are written without spaces);
* not words: digits, punctuation, math symbols, LaTeX commands (``\\frac``), and single ASCII
  letters (``x``, ``n``: math variables in any language);
* the chain of thought is the content of ``<think>...</think>`` (the text before
  ``</think>`` when the prompt opened the block), else the whole completion.

Limits: languages sharing a script are not told apart (English vs French both count as
Latin), so a target "en" rewards any Latin-script text. A CoT with no words is unscorable.
"""

from __future__ import annotations

import re
from typing import Any

from grpo.rewards.base import Reward, Unscorable

# (pattern of one "word", per-character?) for each script
_SCRIPTS: dict[str, str] = {
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
    for name, chars in _SCRIPTS.items()
}
_LATEX_CMD_RE = re.compile(r"\\[A-Za-z]+")
_SINGLE_ASCII_RE = re.compile(r"(?<![A-Za-z\u00c0-\u024f])[A-Za-z](?![A-Za-z\u00c0-\u024f])")

LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    **{lang: frozenset({"latin"}) for lang in
       ("en", "fr", "de", "es", "pt", "it", "nl", "vi", "id", "tr", "pl", "sv", "ro", "cs")},
    "zh": frozenset({"han"}),
    "ja": frozenset({"han", "kana"}),
    "ko": frozenset({"hangul", "han"}),
    "ru": frozenset({"cyrillic"}), "uk": frozenset({"cyrillic"}), "bg": frozenset({"cyrillic"}),
    "el": frozenset({"greek"}), "ar": frozenset({"arabic"}), "fa": frozenset({"arabic"}),
    "he": frozenset({"hebrew"}), "hi": frozenset({"devanagari"}), "th": frozenset({"thai"}),
    **{script: frozenset({script}) for script in _SCRIPTS},  # a script name works too
}


def chain_of_thought(text: str, *, think_in_prompt: bool = False) -> str:
    """The CoT part of a completion: inside <think>...</think>, else everything."""
    end = text.find("</think>")
    if end < 0:
        return text
    start = text.rfind("<think>", 0, end)
    if start >= 0:
        return text[start + len("<think>"):end]
    return text[:end] if think_in_prompt else text


def count_words(text: str) -> dict[str, int]:
    """Words per script (see module docstring for what counts as a word).

    >>> count_words("设 x 为 the answer")
    {'latin': 2, 'han': 2}
    """
    text = _LATEX_CMD_RE.sub(" ", text)
    text = _SINGLE_ASCII_RE.sub(" ", text)
    counts = {name: len(r.findall(text)) for name, r in _WORD_RES.items()}
    return {k: v for k, v in counts.items() if v}


def target_scripts(language: str) -> frozenset[str]:
    try:
        return LANGUAGE_SCRIPTS[language.lower().split("-")[0].split("_")[0]]
    except KeyError:
        raise Unscorable(f"unknown target language {language!r}") from None


class LanguageReward(Reward):
    """Proportion of the CoT's words written in the target language's script (R1 §2.3.2).

    Args:
        language: target language code (``"en"``, ``"zh"``, ``"zh-CN"``, ...) or script name,
            used when the example has no ``language_key`` field.
        language_key: example field with a per-row target language (wins when present).
        think_in_prompt: the prompt opened ``<think>``; the CoT is the text before ``</think>``.

    >>> LanguageReward("en").score("<think>We add 2 and 2, 得到 4</think><answer>4</answer>")
    0.6
    """

    def __init__(
        self, language: str | None = None, *, language_key: str = "language",
        think_in_prompt: bool = False, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if language is not None:
            try:
                target_scripts(language)  # fail early on an unknown code
            except Unscorable as u:
                raise ValueError(u.reason) from None
        self.language = language
        self.language_key = language_key
        self.think_in_prompt = think_in_prompt

    def score(self, completion: str, **example: Any) -> float:
        language = example.get(self.language_key) or self.language
        if not language:
            raise Unscorable(f"no target language (field {self.language_key!r} or constructor)")
        scripts = target_scripts(language)
        counts = count_words(chain_of_thought(completion, think_in_prompt=self.think_in_prompt))
        total = sum(counts.values())
        if total == 0:
            raise Unscorable("no words in the chain of thought")
        return sum(n for s, n in counts.items() if s in scripts) / total
