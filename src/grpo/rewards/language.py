"""Language-consistency reward (DeepSeek-R1, arXiv:2501.12948, §2.3.2).

R1-Zero's chains of thought mixed languages; R1 adds "a language consistency reward during RL
training, which is calculated as the proportion of target language words in the CoT", summed
with the accuracy reward. Words are counted per Unicode *script*, which is what the mixing R1
describes (e.g. English and Chinese) changes (:func:`grpo.textstats.count_words`: tags, digits,
symbols, LaTeX commands and single ASCII letters are not words); the chain of thought is the
content of ``<think>...</think>`` (:func:`grpo.textstats.chain_of_thought`), else the whole
completion.

Limits: languages sharing a script are not told apart (English vs French both count as
Latin), so a target "en" rewards any Latin-script text. The share is undefined for a CoT with no
words (an empty ``<think></think>``, or digits only): such a CoT is unscorable unless ``no_words``
gives its score.
"""

from __future__ import annotations

from typing import Any

from grpo.rewards.base import Reward, Unscorable
from grpo.textstats import SCRIPTS, chain_of_thought, count_words

LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    **{
        lang: frozenset({"latin"})
        for lang in (
            "en",
            "fr",
            "de",
            "es",
            "pt",
            "it",
            "nl",
            "vi",
            "id",
            "tr",
            "pl",
            "sv",
            "ro",
            "cs",
        )
    },
    "zh": frozenset({"han"}),
    "ja": frozenset({"han", "kana"}),
    "ko": frozenset({"hangul", "han"}),
    "ru": frozenset({"cyrillic"}),
    "uk": frozenset({"cyrillic"}),
    "bg": frozenset({"cyrillic"}),
    "el": frozenset({"greek"}),
    "ar": frozenset({"arabic"}),
    "fa": frozenset({"arabic"}),
    "he": frozenset({"hebrew"}),
    "hi": frozenset({"devanagari"}),
    "th": frozenset({"thai"}),
    **{script: frozenset({script}) for script in SCRIPTS},  # a script name works too
}


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
        no_words: the score of a CoT without words (None: unscorable, so a weighted sum with this
            reward is unscorable too and the completion is not trained on). 0.0 treats an empty
            CoT as not written in the target language; 1.0 as nothing mixed.

    >>> LanguageReward("en").score("<think>We add 2 and 2, 得到 4</think><answer>4</answer>")
    0.6
    """

    def __init__(
        self,
        language: str | None = None,
        *,
        language_key: str = "language",
        think_in_prompt: bool = False,
        no_words: float | None = None,
        **kwargs: Any,
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
        if no_words is not None and not 0.0 <= no_words <= 1.0:
            raise ValueError(f"no_words must be None or a score in [0, 1], got {no_words}")
        self.no_words = no_words

    def score(self, completion: str, **example: Any) -> float:
        language = example.get(self.language_key) or self.language
        if not language:
            raise Unscorable(f"no target language (field {self.language_key!r} or constructor)")
        scripts = target_scripts(language)
        counts = count_words(chain_of_thought(completion, think_in_prompt=self.think_in_prompt))
        total = sum(counts.values())
        if total == 0:
            if self.no_words is not None:
                return self.no_words
            raise Unscorable("no words in the chain of thought (set no_words= to score such a CoT)")
        return sum(n for s, n in counts.items() if s in scripts) / total
