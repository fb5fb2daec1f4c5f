"""Prompt data for the trainer: a resumable, seeded sampler and the columns rewards receive.

A dataset is anything indexable that returns dicts (an HF ``datasets.Dataset`` or a list of
dicts). Each row has a ``prompt`` (text, or chat messages ``[{"role", "content"}]``) and any
other fields; those other fields are the *columns* that reward functions receive, repeated
for each of the prompt's G completions (trl's convention).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
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


def check_dataset(
    dataset: Any,
    name: str,
    prompt_key: str = "prompt",
    rewards: Sequence[Any] = (),
) -> None:
    """Fail at construction, naming the fix, for data the trainer cannot sample from: not rows
    (a dict of columns, a pandas DataFrame), empty, a row without a prompt, a prompt that is
    neither text nor chat messages with ``role`` and ``content``, and a column one of
    ``rewards`` requires (:func:`check_reward_columns`) that the dataset lacks.

    Every row's prompt is read once (an HF dataset's prompt column in one access): linear in
    the dataset's size, no tokenization (that is :func:`check_prompt_tokens`)."""
    if isinstance(dataset, Mapping):
        raise TypeError(
            f"{name} is a dict of columns ({sorted(dataset)[:5]}); pass rows: a list of dicts, or "
            "datasets.Dataset.from_dict(your_dict)"
        )
    if type(dataset).__module__.startswith("pandas"):
        raise TypeError(
            f"{name} is a pandas {type(dataset).__name__}, whose [i] is a column, not a row; pass "
            "datasets.Dataset.from_pandas(df) or df.to_dict('records')"
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
    for i, prompt in enumerate(prompt_column(dataset, prompt_key)):
        _check_prompt(prompt, f"{name} row {i}")
    check_reward_columns(rewards, dataset, name, prompt_key)


def prompt_column(dataset: Any, prompt_key: str = "prompt") -> list[Any]:
    """Every row's prompt, in order (an HF dataset's column in one access)."""
    if hasattr(dataset, "column_names") and prompt_key in dataset.column_names:
        return list(dataset[prompt_key])
    prompts = []
    for i in range(len(dataset)):
        row = dataset[i]
        if not isinstance(row, Mapping) or prompt_key not in row:
            fields = sorted(row) if isinstance(row, Mapping) else type(row).__name__
            raise KeyError(
                f"dataset row {i} has no {prompt_key!r} field (fields: {fields}); every row "
                "needs its prompt"
            )
        prompts.append(row[prompt_key])
    return prompts


def _check_prompt(prompt: Any, where: str) -> None:
    """A prompt is text, or chat messages: dicts with ``role`` and ``content`` (an assistant
    message with ``tool_calls`` may leave out ``content``)."""
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, (list, tuple)):
        raise TypeError(
            f"{where}: the prompt is a {type(prompt).__name__}; a prompt is a string or a list "
            'of chat messages {"role": ..., "content": ...}'
        )
    if not prompt:
        raise ValueError(f"{where}: the prompt is an empty list of chat messages")
    for j, message in enumerate(prompt):
        if not isinstance(message, Mapping):
            raise TypeError(
                f"{where}: chat message {j} is a {type(message).__name__}, not a dict "
                '{"role": ..., "content": ...}'
            )
        # None counts as missing: an HF dataset stores a key some messages lack as None
        keys = sorted(k for k, v in message.items() if v is not None)
        needed = ("role",) if message.get("tool_calls") is not None else ("role", "content")
        missing = [k for k in needed if k not in keys]
        if missing:
            raise KeyError(
                f"{where}: chat message {j} has no {missing[0]!r} (its keys: {keys}); "
                "every message needs 'role' and 'content'"
            )


def check_reward_columns(
    rewards: Sequence[Any], dataset: Any, name: str, prompt_key: str = "prompt"
) -> None:
    """Refuse a trl-style reward function whose signature requires a keyword (a parameter
    without a default) that neither the trainer (:data:`RESERVED_COLUMNS`) nor the dataset's
    columns supply: it would fail on every call, found only after ``reward.failure_patience``
    steps. ``rewards`` are plain functions or :func:`grpo.rewards.as_reward` wrappings of them;
    Reward classes and functions whose signature cannot be read are not checked."""
    if hasattr(dataset, "column_names"):
        columns = list(dataset.column_names)
    else:
        columns = list(dataset[0]) if len(dataset) else []
    given = (set(columns) - {prompt_key, "completion"}) | RESERVED_COLUMNS
    for reward in rewards:
        fn = getattr(reward, "fn", reward)
        if not callable(fn) or isinstance(fn, type):
            continue
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # some builtins have no signature
            continue
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        for p in params:
            if p.kind in kinds and p.default is p.empty and p.name not in given:
                who = getattr(reward, "name", None) or getattr(fn, "__name__", repr(fn))
                raise ValueError(
                    f"reward function {who!r} requires the column {p.name!r}, which {name} "
                    f"does not have (its columns: {sorted(columns)}); add the column to the "
                    "dataset, or give the parameter a default"
                )


def check_self_context_columns(dataset: Any, name: str, template: str) -> None:
    """Refuse, at start, a dataset lacking a column that ``distill.self_context`` = ``template``
    reads (:func:`grpo.distill.self_context_columns`), naming the column, the template and the
    first row without it: the teacher's privileged prompt could not be built at the step that
    samples that row. An HF dataset is checked by its column names, rows (a list of dicts) one
    by one."""
    from grpo.distill import self_context_columns

    needed = self_context_columns(template)
    if hasattr(dataset, "column_names"):
        rows: Any = [(None, set(dataset.column_names))]
    else:
        rows = ((i, set(dataset[i])) for i in range(len(dataset)))
    for i, columns in rows:
        missing = [c for c in needed if c not in columns]
        if missing:
            where = name if i is None else f"{name} row {i}"
            raise ValueError(
                f"distill.self_context={template!r} reads the column {missing[0]!r}, which "
                f"{where} does not have (its columns: {sorted(columns)}); add the column or "
                "change the template"
            )


def check_prompt_tokens(
    dataset: Any,
    name: str,
    tokenizer: Any,
    max_prompt_length: int,
    prompt_key: str = "prompt",
    chat_template_kwargs: dict | None = None,
    encode: Callable[[Any], Sequence[int]] | None = None,
    batch_size: int = 1024,
) -> None:
    """Refuse, at start, a dataset with a prompt longer than ``rollout.max_prompt_length``
    tokens (it would stop the run at the step that samples it), naming the first such row.

    Prompts are measured as the generator encodes them: ``encode`` (a generator's own
    ``encode_prompt``, e.g. one that renders tool schemas, one prompt at a time) or
    :func:`grpo.rollout.tokens.prompt_lengths` (the chat template rendered per prompt, then
    tokenized ``batch_size`` at a time). Cost: one pass over the dataset; with a fast tokenizer
    roughly a second per ~10-50k chat prompts of a few hundred tokens."""
    from grpo.rollout.tokens import prompt_lengths

    prompts = prompt_column(dataset, prompt_key)
    if encode is not None:
        lengths = [len(encode(p)) for p in prompts]
    else:
        lengths = prompt_lengths(tokenizer, prompts, chat_template_kwargs, batch_size)
    over = [i for i, n in enumerate(lengths) if n > max_prompt_length]
    if over:
        i = over[0]
        more = (
            f" ({len(over)} rows exceed it; the longest has {max(lengths)} tokens)"
            if len(over) > 1
            else ""
        )
        raise ValueError(
            f"the prompt of {name} row {i} has {lengths[i]} tokens, more than "
            f"rollout.max_prompt_length={max_prompt_length}{more}: raise "
            "rollout.max_prompt_length or drop prompts that long from the dataset"
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
    "check_prompt_tokens",
    "check_reward_columns",
    "get_rows",
    "prompt_column",
    "reward_columns",
    "reward_inputs",
]
