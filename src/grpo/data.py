"""Prompt data for the trainer: a resumable, seeded sampler and the columns rewards receive.

A dataset is anything indexable that returns dicts (an HF ``datasets.Dataset`` or a list of
dicts). Each row has a ``prompt`` (text, or chat messages ``[{"role", "content"}]``) and any
other fields; those other fields are the *columns* that reward functions receive, repeated
for each of the prompt's G completions (trl's convention).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from grpo.rollout import Rollout


class PromptSampler:
    """Epochs of seeded permutations of ``range(n)``; its position is saved in checkpoints.

    Every data-parallel process holds the same sampler and takes its own slice of each global
    batch, so a step's prompts are the same whatever the number of processes.
    """

    def __init__(self, n: int, seed: int = 0):
        if n < 1:
            raise ValueError("the training dataset is empty")
        self.n, self.seed = n, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def take(self, k: int) -> list[int]:
        """The next ``k`` indices, continuing into a new epoch's permutation when needed."""
        out: list[int] = []
        while len(out) < k:
            if self.position == self.n:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            step = min(k - len(out), self.n - self.position)
            out += self._order[self.position : self.position + step].tolist()
            self.position += step
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["n"] != self.n or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint sampler was for n={state['n']}, seed={state['seed']}; "
                f"this run has n={self.n}, seed={self.seed}"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)


def check_dataset(dataset: Any, name: str, prompt_key: str = "prompt") -> None:
    """Fail at construction, naming the fix, for data the trainer cannot sample from."""
    if isinstance(dataset, Mapping):
        raise TypeError(
            f"{name} is a dict of columns ({sorted(dataset)[:5]}); pass rows: a list of dicts, or "
            "datasets.Dataset.from_dict(your_dict)"
        )
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"{name} must be indexable rows (a datasets.Dataset or a list of dicts), "
            f"got {type(dataset).__name__}"
        )
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty")
    first = dataset[0]
    if not isinstance(first, Mapping):
        raise TypeError(f"{name} rows must be dicts, got {type(first).__name__}")
    if prompt_key not in first:
        raise KeyError(
            f"{name} rows have no {prompt_key!r} field (fields: {sorted(first)}); rename the field "
            f"or pass GRPOTrainer(..., prompt_key='<your field>')"
        )


def get_rows(dataset: Any, indices: Sequence[int], prompt_key: str = "prompt") -> list[dict]:
    """Rows as dicts, checking that each has a prompt."""
    rows = []
    for i in indices:
        row = dict(dataset[int(i)])
        if prompt_key not in row:
            raise KeyError(
                f"dataset row {i} has no {prompt_key!r} field (fields: {sorted(row)}); rename the "
                "field or pass GRPOTrainer(..., prompt_key='<your field>')"
            )
        rows.append(row)
    return rows


RESERVED_COLUMNS = frozenset(
    {
        "prompts",
        "completions",
        "completion_ids",
        "truncated",
        "trainer_state",
        "log_extra",
        "log_metric",
        "trajectory",
        "environments",
    }
)
"""Keywords the trainer itself passes to reward functions (trl's, plus grpo's ``truncated``)."""


def reward_columns(
    rows: Sequence[Mapping[str, Any]], repeat: int, prompt_key: str = "prompt"
) -> dict[str, list]:
    """Every non-prompt field as a column aligned with the completions (each row ``repeat``
    times). Like trl, a dataset's own ``completion`` / ``completion_ids`` fields are left out;
    a field named like a keyword the trainer passes (``completions``, ``truncated``, ...) is
    refused, since the reward function could not receive both."""
    keys = (
        [k for k in rows[0] if k not in (prompt_key, "completion", "completion_ids")]
        if rows
        else []
    )
    clash = sorted(set(keys) & RESERVED_COLUMNS)
    if clash:
        raise ValueError(
            f"dataset field(s) {clash} collide with the keywords reward functions receive "
            f"({sorted(RESERVED_COLUMNS)}); rename them in the dataset"
        )
    return {k: [row.get(k) for row in rows for _ in range(repeat)] for k in keys}


def reward_inputs(
    rollouts: Sequence[Rollout],
    prompts: Sequence[Any],
    rows: Sequence[dict],
    prompt_key: str = "prompt",
) -> dict[str, Any]:
    """The arguments trl gives reward functions, for rollouts of ``generate(prompts, G)``: chat
    prompts get their completion as one assistant message, text prompts as text;
    ``completion_ids`` always; every other dataset column aligned with the completions; and
    grpo's ``truncated`` (True where the completion was cut by the length limit)."""
    ordered_rows = [rows[r.prompt_index] for r in rollouts]
    completions = [
        r.text
        if isinstance(prompts[r.prompt_index], str)
        else [{"role": "assistant", "content": r.text}]
        for r in rollouts
    ]
    out = dict(
        prompts=[prompts[r.prompt_index] for r in rollouts],
        completions=completions,
        completion_ids=[list(r.completion_ids) for r in rollouts],
        truncated=[r.truncated for r in rollouts],
        **reward_columns(ordered_rows, 1, prompt_key),
    )
    if any(
        hasattr(r, "messages") for r in rollouts
    ):  # multi-turn: rewards see the whole trajectory
        from grpo.rollout.trajectory import trajectory_columns

        out.update(trajectory_columns(rollouts, prompts))
    return out


__all__ = [
    "PromptSampler",
    "RESERVED_COLUMNS",
    "check_dataset",
    "get_rows",
    "reward_columns",
    "reward_inputs",
]
