"""The lab task: graded chains of additions and subtractions, a CPU task with headroom.

The CPU R1-Zero demo's task (:mod:`grpo.recipes.tiny_task`, sums of three digits) is solved by
step ~25-50, so no algorithmic choice can show a difference on it. The lab task keeps its
format, tokenizer, rewards and warm-up (the sloppy teacher, :func:`tiny_task.warmup_sft`) and
grades the arithmetic: a level is a chain of ``terms`` numbers in ``0..max_value`` joined by the
operators ``ops``, and the worked path (``<think>4-3=1,1+9=10</think><answer>10</answer>``)
has one step per operator, each a fact the 0.5M-parameter model must get right:

=====  =====  =========  ====  =====================
level  terms  max_value  ops   example
=====  =====  =========  ====  =====================
1      3      9          \\+    ``4+3+9=?`` (the demo's)
2      4      9          \\+    ``4+3+9+1=?``
3      4      9          \\+-   ``4+3-9+1=?``
4      5      9          \\+-   ``4-3+9-8+1=?``
=====  =====  =========  ====  =====================

More terms mean more steps to chain (each must copy the right term and add it); subtraction
brings negative running values. Numbers above 9 made the warm-up itself fail: with levels of
3-5 terms in 0..19, 800 warm-up steps left the worked path right ~5% of the time even at level 1,
and GRPO had nothing to select. The measured headroom curves (held-out greedy accuracy per
level against GRPO steps, and against warm-up compute: the 800-step warm-up's plateau of ~32%
becomes ~66% at 2,400 steps and ~97% at 7,200) are in benchmarks/README.md, "Lab task headroom"
(``benchmarks/lab_headroom.py``).

Held-out split: a problem is held out when the CRC-32 of its question (``"4+3-9+1=?"``) is 0
mod 10, whatever the seed: train and test are disjoint by construction, and every seed's test
rows come from the same ~10% of each level's problems. ``seed`` picks which problems and their
order; pass the same seed for the held-out rows of runs you compare (the examples pass 0).
"""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

HELD_OUT_MOD = 10
"""A problem is held out when ``crc32(question) % HELD_OUT_MOD == 0`` (~10% of each level)."""
DEFAULT_SIZE = {"train": 2000, "test": 50}
"""Rows per level when ``size`` is None."""
_ENUMERATE_BELOW = 50_000  # levels with fewer problems are enumerated, larger ones sampled


@dataclass(frozen=True)
class Level:
    """One difficulty level: ``terms`` numbers in ``0..max_value`` joined by ``ops``."""

    terms: int
    max_value: int
    ops: str

    @property
    def space(self) -> int:
        """How many distinct problems the level has."""
        return (self.max_value + 1) ** self.terms * len(self.ops) ** (self.terms - 1)


LEVELS: dict[int, Level] = {
    1: Level(terms=3, max_value=9, ops="+"),
    2: Level(terms=4, max_value=9, ops="+"),
    3: Level(terms=4, max_value=9, ops="+-"),
    4: Level(terms=5, max_value=9, ops="+-"),
}


def question(terms: Sequence[int]) -> str:
    """``[14, -3, 19]`` -> ``"14-3+19=?"`` (the first term is never negative)."""
    text = str(terms[0])
    for x in terms[1:]:
        text += f"-{-x}" if x < 0 else f"+{x}"
    return text + "=?"


def split_of(terms: Sequence[int]) -> str:
    """ "test" for the held-out ~10% of problems (by the CRC-32 of the question), else "train"."""
    held = zlib.crc32(question(terms).encode()) % HELD_OUT_MOD == 0
    return "test" if held else "train"


def lab_row(terms: Sequence[int], level: int) -> dict:
    """A dataset row: ``prompt`` (the user turn), gold ``answer``, signed ``terms``, ``level``."""
    return {
        "prompt": [{"role": "user", "content": question(terms)}],
        "answer": str(sum(terms)),
        "terms": list(terms),
        "level": level,
    }


def _level(level: int) -> Level:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    return LEVELS[level]


def _draw(spec: Level, rng: random.Random) -> tuple[int, ...]:
    numbers = [rng.randint(0, spec.max_value) for _ in range(spec.terms)]
    signs = [1] + [1 if rng.choice(spec.ops) == "+" else -1 for _ in range(spec.terms - 1)]
    return tuple(s * x for s, x in zip(signs, numbers, strict=True))


def _all(spec: Level) -> Iterable[tuple[int, ...]]:
    numbers = range(spec.max_value + 1)
    signs = [1] if spec.ops == "+" else [1, -1]
    for xs in itertools.product(numbers, repeat=spec.terms):
        for ss in itertools.product(signs, repeat=spec.terms - 1):
            yield (xs[0], *(s * x for s, x in zip(ss, xs[1:], strict=True)))


def make_lab_problems(
    level: int = 1, split: str = "train", seed: int = 0, size: int | None = None
) -> list[dict]:
    """``size`` distinct problems of ``level`` from ``split`` ("train" or "test"), drawn with
    ``seed`` (default size: :data:`DEFAULT_SIZE`, or all of a smaller split). Raises when an
    explicit ``size`` exceeds the split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec = _level(level)
    default = size is None
    size = DEFAULT_SIZE[split] if size is None else size
    rng = random.Random(f"lab-{level}-{split}-{seed}")
    if spec.space < _ENUMERATE_BELOW:
        pool = [t for t in _all(spec) if split_of(t) == split]
        size = min(size, len(pool)) if default else size
        if size > len(pool):
            raise ValueError(
                f"level {level} has only {len(pool)} {split} problems; asked for size={size}"
            )
        chosen = rng.sample(pool, size)
    else:
        found: dict[tuple[int, ...], None] = {}
        for _ in range(50 * size + 1000):
            if len(found) == size:
                break
            t = _draw(spec, rng)
            if split_of(t) == split:
                found.setdefault(t)
        if len(found) < size:
            raise ValueError(f"level {level}: could not draw {size} distinct {split} problems")
        chosen = list(found)
    return [lab_row(t, level) for t in chosen]


def make_lab_dataset(
    levels: Sequence[int] = tuple(LEVELS),
    split: str = "train",
    seed: int = 0,
    size: int | None = None,
) -> list[dict]:
    """Rows of every level in ``levels`` (``size`` per level); the train split is shuffled
    across levels with ``seed``, the test split stays in level order."""
    if not levels:
        raise ValueError(f"levels must name at least one of {sorted(LEVELS)}")
    rows = [r for lv in levels for r in make_lab_problems(lv, split, seed, size)]
    if split == "train":
        random.Random(seed).shuffle(rows)
    return rows
