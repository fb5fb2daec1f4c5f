"""One padded record per step's completions: everything the learner needs, row by row.

A batch lays each completion after its (left-padded) prompt, completions right-padded::

    [pad pad p p p p | c c c c eos pad pad]      attention mask 0 on every pad
     <- prompt_len -> <- completion_len ->

so that every row's completion starts at the same column ``prompt_len`` and the hidden state at
column ``prompt_len - 1 + t`` predicts completion token ``t`` (see :mod:`grpo.policy`).

Every per-completion quantity lives *in* the batch, so selecting rows (a minibatch, a
micro-batch, the groups that dynamic sampling keeps) moves them all together and nothing is
re-joined by position later. Each row carries its completion's key, ``(group, sample)``
(:func:`rollout_key`); :func:`join_scores` joins a step's scored records to the rows by that
key, once, and refuses a key that is missing or repeated:

====================  ===========  ===================================================
field                 shape        meaning
====================  ===========  ===================================================
``input_ids``         ``[B, L]``   prompt + completion token ids (``L = prompt_len + T``)
``attention_mask``    ``[B, L]``   1 on real tokens
``completion_ids``    ``[B, T]``   a view of the completion columns of ``input_ids``
``completion_mask``   ``[B, T]``   real completion tokens (bool)
``loss_mask``         ``[B, T]``   tokens trained on: real *and* chosen by the policy (bool)
``rollout_logp``      ``[B, T]``   the sampler's log-probs (0 at padding)
``old_logp``          ``[B, T]``   the old policy's log-probs, once computed (None: on-policy)
``ref_logp``          ``[B, T]``   the reference model's log-probs, once computed (None: beta 0)
``teacher_logp``      ``[B, T]``   on-policy distillation's teacher log-probs (None: no teacher)
``advantages``        ``[B]`` or   per sequence (broadcast over tokens) or per token
                      ``[B, T]``
``group_ids``         ``[B]``      the group (prompt) each row belongs to within the step
``sample_indices``    ``[B]``      the row's sample within its group: the key is
                                   ``(group_ids[i], sample_indices[i])``
``step_index``        ``[B]``      the row's position among the step's trained completions
                                   (every process's, in (group, sample) order); the learner
                                   puts it in minibatch ``step_index mod n``. Until
                                   :func:`join_scores` sets it: the row's position
``policy_versions``   ``[B]``      the optimizer step whose weights sampled the row
``teacher_prompt_ids`` ``[B, P']``  on-policy self-distillation's privileged prompts,
                                   left-padded (None: no self-distillation); with
``teacher_prompt_mask`` ``[B, P']`` 1 on their real tokens
====================  ===========  ===================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

_TOKEN_FIELDS = (
    "completion_ids",
    "completion_mask",
    "loss_mask",
    "rollout_logp",
    "old_logp",
    "ref_logp",
    "teacher_logp",
)
_ROW_FIELDS = ("group_ids", "sample_indices", "step_index", "policy_versions")
_TEACHER_PROMPT_FIELDS = ("teacher_prompt_ids", "teacher_prompt_mask")

Key = tuple[int, int]
"""A completion's identity within a step: (group, sample)."""


@dataclass(frozen=True)
class RolloutBatch:
    """Padded tensors for a list of rollouts (see the module docstring for the fields)."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    completion_ids: torch.Tensor  # [B, T]
    completion_mask: torch.Tensor  # [B, T] bool
    loss_mask: torch.Tensor  # [B, T] bool
    rollout_logp: torch.Tensor  # [B, T]
    advantages: torch.Tensor  # [B] or [B, T]
    group_ids: torch.Tensor  # [B] long
    sample_indices: torch.Tensor  # [B] long
    step_index: torch.Tensor  # [B] long
    policy_versions: torch.Tensor  # [B] long
    prompt_len: int
    old_logp: torch.Tensor | None = None  # [B, T]
    ref_logp: torch.Tensor | None = None  # [B, T]
    teacher_logp: torch.Tensor | None = None  # [B, T] on-policy distillation's teacher
    teacher_prompt_ids: torch.Tensor | None = None  # [B, P'] self-distillation, left-padded
    teacher_prompt_mask: torch.Tensor | None = None  # [B, P']

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def width(self) -> int:
        """T, the number of completion columns."""
        return self.completion_ids.shape[1]

    def keys(self) -> list[Key]:
        """Each row's ``(group, sample)`` key, the one :func:`rollout_key` gives its rollout."""
        return list(zip(self.group_ids.tolist(), self.sample_indices.tolist(), strict=True))

    def distinct_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the first row holding each distinct prompt ``[U]``, each row's prompt index ``[B]``),
        prompts in ``torch.unique`` order of their (ids, mask) columns: a GRPO group's G rows
        share one prompt, which the shared-prompt and packed forwards run once."""
        p = self.prompt_len
        key_BK = torch.cat([self.input_ids[:, :p], self.attention_mask[:, :p]], dim=1)
        _, row_to_prompt_B = torch.unique(key_BK, dim=0, return_inverse=True)
        rows_B = torch.arange(len(self), device=row_to_prompt_B.device)
        first_U = torch.full((int(row_to_prompt_B.max()) + 1,), len(self), device=rows_B.device)
        first_U.scatter_reduce_(0, row_to_prompt_B, rows_B, reduce="amin")
        return first_U, row_to_prompt_B

    def teacher_view(self) -> RolloutBatch:
        """On-policy self-distillation's teacher batch: every row's completion columns exactly
        as here (ids, masks, log-probs, keys), after its privileged prompt instead of its own,
        ``[pad p' p' p' | c c c eos pad]``: the hidden state at column ``P' - 1 + t`` predicts
        completion token ``t``, so the teacher's log-probs line up with the student's."""
        if self.teacher_prompt_ids is None:
            raise ValueError("this batch has no privileged prompts (distill.self_context unset)")
        p = self.prompt_len
        return replace(
            self,
            input_ids=torch.cat([self.teacher_prompt_ids, self.input_ids[:, p:]], dim=1),
            attention_mask=torch.cat([self.teacher_prompt_mask, self.attention_mask[:, p:]], dim=1),
            prompt_len=self.teacher_prompt_ids.shape[1],
            teacher_prompt_ids=None,
            teacher_prompt_mask=None,
        )

    def with_advantages(self, advantages: torch.Tensor) -> RolloutBatch:
        """The same batch with per-sequence ``[B]`` or per-token ``[B, T]`` advantages."""
        if advantages.shape not in ((len(self),), (len(self), self.width)):
            raise ValueError(
                f"advantages must have shape ({len(self)},) or ({len(self)}, {self.width}), "
                f"got {tuple(advantages.shape)}"
            )
        return replace(self, advantages=advantages.to(self.input_ids.device, torch.float32))

    def with_logprobs(
        self,
        *,
        old: torch.Tensor | None = None,
        ref: torch.Tensor | None = None,
        teacher: torch.Tensor | None = None,
    ) -> RolloutBatch:
        """The same batch carrying frozen old-policy, reference and/or teacher log-probs
        ``[B, T]``."""
        for name, t in (("old", old), ("ref", ref), ("teacher", teacher)):
            if t is not None and t.shape != self.completion_ids.shape:
                raise ValueError(
                    f"{name} log-probs have shape {tuple(t.shape)}, expected "
                    f"{tuple(self.completion_ids.shape)}"
                )
        return replace(
            self,
            old_logp=self.old_logp if old is None else old,
            ref_logp=self.ref_logp if ref is None else ref,
            teacher_logp=self.teacher_logp if teacher is None else teacher,
        )

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {
            name: getattr(self, name)
            for name in (
                *_TOKEN_FIELDS,
                *_ROW_FIELDS,
                *_TEACHER_PROMPT_FIELDS,
                "input_ids",
                "attention_mask",
                "advantages",
            )
        }
        moved = {k: None if v is None else v.to(device) for k, v in moved.items()}
        moved["completion_ids"] = moved["input_ids"][:, self.prompt_len :]
        return replace(self, **moved)

    def select(self, idx: slice | torch.Tensor | Sequence[int]) -> RolloutBatch:
        """Rows ``idx``, every field together, trimmed of columns that are padding in every
        selected row (trailing completion columns, leading prompt columns)."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long)
        mask = self.attention_mask[idx]
        comp_mask = self.completion_mask[idx]
        t = int(comp_mask.any(0).nonzero().max().item()) + 1 if comp_mask.any() else 1
        first = int(mask.any(0).nonzero().min().item()) if mask.any() else 0
        first = min(first, self.prompt_len - 1)
        input_ids = self.input_ids[idx, first : self.prompt_len + t]
        fields = {
            name: None if getattr(self, name) is None else getattr(self, name)[idx, :t]
            for name in _TOKEN_FIELDS
        }
        fields["completion_ids"] = input_ids[:, self.prompt_len - first :]
        fields.update({name: getattr(self, name)[idx] for name in _ROW_FIELDS})
        fields.update(
            {
                name: None if getattr(self, name) is None else getattr(self, name)[idx]
                for name in _TEACHER_PROMPT_FIELDS
            }
        )
        adv = self.advantages[idx]
        return RolloutBatch(
            input_ids=input_ids,
            attention_mask=mask[:, first : self.prompt_len + t],
            advantages=adv if adv.dim() == 1 else adv[:, :t],
            prompt_len=self.prompt_len - first,
            **fields,
        )


def rollout_key(rollout: Any) -> Key:
    """A rollout's key within a step, ``(group, sample)``: its ``group_id`` (set by the rollout
    source; None: the ``prompt_index`` of its ``generate`` call) and its ``sample_index``.

    >>> from grpo.rollout import Rollout
    >>> r = Rollout([1], [2], [0.0], "x", "stop", prompt_index=3, sample_index=1)
    >>> rollout_key(r), rollout_key(replace(r, group_id=7))
    ((3, 1), (7, 1))
    """
    group = rollout.prompt_index if rollout.group_id is None else rollout.group_id
    return int(group), int(rollout.sample_index)


class ScoredRecord(Protocol):
    """What :func:`join_scores` reads of a scored completion
    (:class:`grpo.source.ScoredRollout`)."""

    @property
    def key(self) -> Key: ...
    @property
    def advantage(self) -> float | None: ...
    @property
    def step_index(self) -> int | None: ...


def join_scores(batch: RolloutBatch, scored: Iterable[ScoredRecord]) -> RolloutBatch:
    """The rows of ``batch`` that are trained, with their advantages, joined to ``scored`` by key.

    ``scored`` holds one record per completion of the step (a :class:`grpo.source.ScoredStep`
    or its records): its ``key`` (:func:`rollout_key`), its ``advantage`` (None: not trained,
    e.g. its group was dropped by DAPO dynamic sampling) and its ``step_index``. The result
    holds the rows of the trained records in step order (by ``step_index``), whatever the order
    of the rows and of the records, with ``advantages`` and ``step_index`` set; the rows of
    untrained records are left out.

    Raises ValueError, naming the key, when a key appears twice (among the rows or among the
    records), when a row has no record, or when a trained record has no row.
    """
    rows: dict[Key, int] = {}
    for i, key in enumerate(batch.keys()):
        if key in rows:
            raise ValueError(
                f"join_scores: batch rows {rows[key]} and {i} have the same key "
                f"(group, sample) = {key}; each completion must appear once"
            )
        rows[key] = i
    seen: set[Key] = set()
    trained: list[tuple[int, int, float]] = []  # (step index, row, advantage)
    for record in scored:
        key = record.key
        if key in seen:
            raise ValueError(
                f"join_scores: two scored records have the key (group, sample) = "
                f"{key}; each completion must be scored once"
            )
        seen.add(key)
        if record.advantage is None:
            continue
        if key not in rows:
            raise ValueError(
                f"join_scores: the trained completion (group, sample) = {key} has "
                "no row in the batch"
            )
        if record.step_index is None:
            raise ValueError(f"join_scores: the trained completion {key} has no step_index")
        trained.append((record.step_index, rows[key], record.advantage))
    unscored = sorted(rows.keys() - seen)
    if unscored:
        more = " ..." if len(unscored) > 4 else ""
        raise ValueError(
            f"join_scores: {len(unscored)} batch row(s) have no scored record, "
            f"keys (group, sample) {unscored[:4]}{more}"
        )
    trained.sort()
    steps = [s for s, _, _ in trained]
    if len(set(steps)) != len(steps):
        raise ValueError("join_scores: two trained records have the same step_index")
    idx = [row for _, row, _ in trained]
    out = batch if idx == list(range(len(batch))) else batch.select(idx)
    out = out.with_advantages(torch.tensor([a for _, _, a in trained], dtype=torch.float32))
    step_index = torch.tensor(steps, dtype=torch.long, device=out.step_index.device)
    return replace(out, step_index=step_index)


def collate_rollouts(
    rollouts: Sequence, advantages: torch.Tensor | None, pad_id: int
) -> RolloutBatch:
    """Pad :class:`grpo.rollout.Rollout` records (prompt left, completion right) into a batch,
    row ``i`` from ``rollouts[i]``.

    ``advantages`` (``[B]`` or ``[B, T]``, aligned with ``rollouts``) may be None (zeros) when
    they are not known yet: the trainer collates while rewards are still being scored, then
    joins the scores with :func:`join_scores`. A rollout's ``loss_mask`` zeros become
    ``loss_mask`` False; its key (:func:`rollout_key`) and ``policy_version`` are kept per row;
    ``step_index`` is the row's position.
    """
    if not rollouts:
        raise ValueError("collate_rollouts needs at least one rollout")
    p = max(len(r.prompt_ids) for r in rollouts)
    t = max(1, max(len(r.completion_ids) for r in rollouts))
    b = len(rollouts)
    input_ids = torch.full((b, p + t), pad_id, dtype=torch.long)
    attn = torch.zeros((b, p + t), dtype=torch.long)
    comp_mask = torch.zeros((b, t), dtype=torch.bool)
    loss_mask = torch.zeros((b, t), dtype=torch.bool)
    rollout_logp = torch.zeros((b, t), dtype=torch.float32)
    for i, r in enumerate(rollouts):
        n_p, n_c = len(r.prompt_ids), len(r.completion_ids)
        input_ids[i, p - n_p : p] = torch.tensor(r.prompt_ids, dtype=torch.long)
        attn[i, p - n_p : p + n_c] = 1
        if n_c:
            input_ids[i, p : p + n_c] = torch.tensor(r.completion_ids, dtype=torch.long)
            comp_mask[i, :n_c] = True
            lm = getattr(r, "loss_mask", None)
            loss_mask[i, :n_c] = True if lm is None else torch.tensor(lm, dtype=torch.bool)
            if r.logprobs is not None:
                rollout_logp[i, :n_c] = torch.tensor(r.logprobs, dtype=torch.float32)
    groups, samples = zip(*(rollout_key(r) for r in rollouts), strict=True)
    teacher_ids, teacher_mask = _teacher_prompts(rollouts, pad_id)
    batch = RolloutBatch(
        input_ids,
        attn,
        input_ids[:, p:],
        comp_mask,
        loss_mask,
        rollout_logp,
        advantages=torch.zeros(b),
        group_ids=torch.tensor(groups, dtype=torch.long),
        sample_indices=torch.tensor(samples, dtype=torch.long),
        step_index=torch.arange(b),
        policy_versions=torch.tensor([r.policy_version for r in rollouts], dtype=torch.long),
        prompt_len=p,
        teacher_prompt_ids=teacher_ids,
        teacher_prompt_mask=teacher_mask,
    )
    return batch if advantages is None else batch.with_advantages(advantages)


def _teacher_prompts(
    rollouts: Sequence, pad_id: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The rollouts' privileged prompts (``Rollout.teacher_prompt_ids``), left-padded ``[B, P']``
    with their mask; (None, None) when no rollout has one. All or none must."""
    ids = [getattr(r, "teacher_prompt_ids", None) for r in rollouts]
    if all(x is None for x in ids):
        return None, None
    if any(x is None for x in ids):
        raise ValueError(
            f"{sum(x is None for x in ids)} of {len(ids)} rollouts have no teacher_prompt_ids: "
            "self-distillation needs a privileged prompt for every completion"
        )
    p = max(len(x) for x in ids)
    out = torch.full((len(ids), p), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), p), dtype=torch.long)
    for i, x in enumerate(ids):
        if x:
            out[i, p - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[i, p - len(x) :] = 1
    return out, mask


__all__ = ["Key", "RolloutBatch", "ScoredRecord", "collate_rollouts", "join_scores", "rollout_key"]
