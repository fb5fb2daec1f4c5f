"""One padded record per step's completions: everything the learner needs, row by row.

A batch lays each completion after its (left-padded) prompt, completions right-padded::

    [pad pad p p p p | c c c c eos pad pad]      attention mask 0 on every pad
     <- prompt_len -> <- completion_len ->

so that every row's completion starts at the same column ``prompt_len`` and the hidden state at
column ``prompt_len - 1 + t`` predicts completion token ``t`` (see :mod:`grpo.policy`).

Every per-completion quantity lives *in* the batch, so selecting rows (a minibatch, a
micro-batch, the groups that dynamic sampling keeps) moves them all together and nothing is
re-joined by position later:

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
``policy_versions``   ``[B]``      the optimizer step whose weights sampled the row
====================  ===========  ===================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

_TOKEN_FIELDS = ("completion_ids", "completion_mask", "loss_mask", "rollout_logp", "old_logp", "ref_logp",
                 "teacher_logp")
_ROW_FIELDS = ("group_ids", "policy_versions")


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
    policy_versions: torch.Tensor  # [B] long
    prompt_len: int
    old_logp: torch.Tensor | None = None  # [B, T]
    ref_logp: torch.Tensor | None = None  # [B, T]
    teacher_logp: torch.Tensor | None = None  # [B, T] on-policy distillation's teacher

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def width(self) -> int:
        """T, the number of completion columns."""
        return self.completion_ids.shape[1]

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

    def with_advantages(self, advantages: torch.Tensor) -> RolloutBatch:
        """The same batch with per-sequence ``[B]`` or per-token ``[B, T]`` advantages."""
        if advantages.shape not in ((len(self),), (len(self), self.width)):
            raise ValueError(f"advantages must have shape ({len(self)},) or ({len(self)}, {self.width}), "
                             f"got {tuple(advantages.shape)}")
        return replace(self, advantages=advantages.to(self.input_ids.device, torch.float32))

    def with_logprobs(self, *, old: torch.Tensor | None = None, ref: torch.Tensor | None = None,
                      teacher: torch.Tensor | None = None) -> RolloutBatch:
        """The same batch carrying frozen old-policy, reference and/or teacher log-probs ``[B, T]``."""
        for name, t in (("old", old), ("ref", ref), ("teacher", teacher)):
            if t is not None and t.shape != self.completion_ids.shape:
                raise ValueError(f"{name} log-probs have shape {tuple(t.shape)}, expected "
                                 f"{tuple(self.completion_ids.shape)}")
        return replace(self, old_logp=self.old_logp if old is None else old,
                       ref_logp=self.ref_logp if ref is None else ref,
                       teacher_logp=self.teacher_logp if teacher is None else teacher)

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {name: getattr(self, name) for name in (*_TOKEN_FIELDS, *_ROW_FIELDS, "input_ids",
                                                         "attention_mask", "advantages")}
        moved = {k: None if v is None else v.to(device) for k, v in moved.items()}
        moved["completion_ids"] = moved["input_ids"][:, self.prompt_len:]
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
        input_ids = self.input_ids[idx, first:self.prompt_len + t]
        fields = {name: None if getattr(self, name) is None else getattr(self, name)[idx, :t]
                  for name in _TOKEN_FIELDS}
        fields["completion_ids"] = input_ids[:, self.prompt_len - first:]
        adv = self.advantages[idx]
        return RolloutBatch(
            input_ids=input_ids, attention_mask=mask[:, first:self.prompt_len + t],
            advantages=adv if adv.dim() == 1 else adv[:, :t],
            group_ids=self.group_ids[idx], policy_versions=self.policy_versions[idx],
            prompt_len=self.prompt_len - first, **fields,
        )


def collate_rollouts(rollouts: Sequence, advantages: torch.Tensor | None, pad_id: int) -> RolloutBatch:
    """Pad :class:`grpo.rollout.Rollout` records (prompt left, completion right) into a batch.

    ``advantages`` (``[B]`` or ``[B, T]``) may be None (zeros) when they are not known yet: the
    trainer collates while rewards are still being scored, then sets them with
    :meth:`RolloutBatch.with_advantages`. A rollout's ``loss_mask`` zeros become ``loss_mask``
    False; its ``group_id`` (None: its ``prompt_index``) and ``policy_version`` are kept per row.
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
        input_ids[i, p - n_p:p] = torch.tensor(r.prompt_ids, dtype=torch.long)
        attn[i, p - n_p:p + n_c] = 1
        if n_c:
            input_ids[i, p:p + n_c] = torch.tensor(r.completion_ids, dtype=torch.long)
            comp_mask[i, :n_c] = True
            lm = getattr(r, "loss_mask", None)
            loss_mask[i, :n_c] = True if lm is None else torch.tensor(lm, dtype=torch.bool)
            if r.logprobs is not None:
                rollout_logp[i, :n_c] = torch.tensor(r.logprobs, dtype=torch.float32)
    group_ids = torch.tensor([r.prompt_index if getattr(r, "group_id", None) is None else r.group_id
                              for r in rollouts], dtype=torch.long)
    versions = torch.tensor([getattr(r, "policy_version", 0) for r in rollouts], dtype=torch.long)
    batch = RolloutBatch(input_ids, attn, input_ids[:, p:], comp_mask, loss_mask, rollout_logp,
                         torch.zeros(b), group_ids, versions, p)
    return batch if advantages is None else batch.with_advantages(advantages)


__all__ = ["RolloutBatch", "collate_rollouts"]
