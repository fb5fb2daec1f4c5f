"""What a mistake in a recipe raises: :class:`RecipeError`, whose one-line message says what to
change, often with :func:`did_you_mean`'s suggestion. Its own module, below the rest of
:mod:`grpo.recipes`, so the schema and the dataset loaders can raise it without importing the
package that imports them."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["RecipeError", "did_you_mean"]


class RecipeError(ValueError):
    """A mistake in a recipe or its overrides; the message says what to change."""


def did_you_mean(word: str, options: Iterable[str], prefix: str = "") -> str:
    """``"; did you mean 'beta'?"`` for the closest option, or ``""``.

    >>> did_you_mean("betta", ["beta", "epsilon"], prefix="loss.")
    "; did you mean 'loss.beta'?"
    """
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""
