"""A trained reward model as a reward: DeepSeek-R1's all-scenario RL (arXiv:2501.12948 sec. 2.3.4).

R1's last RL stage mixes rule rewards (math, code, format) with *reward models* for general
data, "to capture human preferences in complex and nuanced scenarios" (helpfulness judged on
the final summary, harmlessness on the whole response). :class:`RewardModelReward` scores
``(prompt, completion)`` with a Hugging Face sequence-classification model, the format trl's
``RewardTrainer`` produces (one logit per sequence, read at its last non-padding token), so it
sits beside rule rewards in :class:`grpo.rewards.CombinedReward`.

Scoring is batched (it implements ``score_batch``, which the inherited ``evaluate`` calls; one
forward per ``batch_size`` items, each batch padded to its own longest item; ``score`` on one
item is a batch of one) and runs in this process under ``torch.no_grad`` (a model
is not sent to the reward process pool). Inputs are right-padded, so the classifier reads the
last real token, which is where transformers' ``*ForSequenceClassification`` heads look
(the last token that is not ``pad_token_id``).

Unscorable items (never a silent number): a missing prompt, and a sequence longer than
``max_length`` (truncating would score a different response).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from grpo.rewards.base import Reward, ScoreResult


class RewardModelReward(Reward):
    """The score a sequence-classification reward model gives ``prompt + completion``.

    Args:
        model: path / hub id of a ``AutoModelForSequenceClassification`` checkpoint, or a loaded
            model.
        tokenizer: its tokenizer (default: loaded from ``model``'s path). Chat prompts are
            rendered with its chat template as ``prompt + [assistant completion]``; text prompts
            are concatenated with the completion.
        batch_size: items per forward pass.
        max_length: longest tokenized item scored (default: the tokenizer's
            ``model_max_length`` or the model's ``max_position_embeddings``); longer: unscorable.
        label: which output logit is the reward, for heads with ``num_labels > 1`` (e.g. 1 for
            a "good" class of a 2-way classifier); must be given then.
        device: where to run (default: CUDA if available, else CPU).
        name: metric key (default ``"reward_model"``).

    >>> rm = RewardModelReward("OpenAssistant/reward-model-deberta-v3-large-v2")  # doctest: +SKIP
    >>> value = rm.score(  # doctest: +SKIP
    ...     "Paris.", prompt=[{"role": "user", "content": "Capital of France?"}]
    ... )
    """

    name = "reward_model"

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        label: int | None = None,
        device: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name, parallel=False)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(model, (str, Path)):
            source = str(model)
            model = AutoModelForSequenceClassification.from_pretrained(source)
        else:
            source = getattr(getattr(model, "config", None), "_name_or_path", None)
        if tokenizer is None:
            if not source:
                raise ValueError(
                    "pass tokenizer=... for a loaded reward model without a saved path"
                )
            tokenizer = AutoTokenizer.from_pretrained(source)
        num_labels = model.config.num_labels
        if label is None and num_labels != 1:
            raise ValueError(
                f"the reward model has {num_labels} output labels: say which one is the reward "
                f"with label=0..{num_labels - 1}"
            )
        if label is not None and not 0 <= label < num_labels:
            raise ValueError(f"label={label} is not one of the model's {num_labels} outputs")
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ValueError(
                    "the reward model's tokenizer has neither a pad nor an eos token to pad with"
                )
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:  # the head finds the last token by the pad id
            model.config.pad_token_id = tokenizer.pad_token_id
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.label = label or 0
        limits = [
            tokenizer.model_max_length if tokenizer.model_max_length < 1e9 else None,
            getattr(model.config, "max_position_embeddings", None),
        ]
        self.max_length = max_length or min((x for x in limits if x), default=None)

    def text(self, prompt: Any, completion: str) -> str:
        """The string the reward model reads for one item."""
        if isinstance(prompt, str):
            return prompt + completion
        messages = [*prompt, {"role": "assistant", "content": completion}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def score_batch(
        self, completions: Sequence[str | None], examples: Sequence[Mapping[str, Any]] | None = None
    ) -> list[ScoreResult]:
        """One forward per ``batch_size`` scorable items; the rest get a reason."""
        import torch

        examples = examples if examples is not None else [{} for _ in completions]
        if len(examples) != len(completions):
            raise ValueError(f"{len(examples)} examples for {len(completions)} completions")
        results: list[ScoreResult | None] = [None] * len(completions)
        todo: list[tuple[int, list[int]]] = []
        for i, (c, ex) in enumerate(zip(completions, examples, strict=True)):
            if c is None:
                results[i] = ScoreResult.unscorable("completion is None")
            elif ex.get("prompt") is None:
                results[i] = ScoreResult.unscorable(
                    "no prompt: a reward model scores prompt + completion"
                )
            else:
                ids = self.tokenizer(
                    self.text(ex["prompt"], c), add_special_tokens=isinstance(ex["prompt"], str)
                )["input_ids"]
                if self.max_length is not None and len(ids) > self.max_length:
                    results[i] = ScoreResult.unscorable(
                        f"{len(ids)} tokens > max_length={self.max_length} of the reward model"
                    )
                else:
                    todo.append((i, ids))
        pad = self.tokenizer.pad_token_id
        with torch.no_grad():
            for s in range(0, len(todo), self.batch_size):
                chunk = todo[s : s + self.batch_size]
                width = max(len(ids) for _, ids in chunk)
                ids_BL = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask_BL = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, (_, ids) in enumerate(
                    chunk
                ):  # right padding: the head reads the last real token
                    ids_BL[row, : len(ids)] = torch.tensor(ids)
                    mask_BL[row, : len(ids)] = 1
                logits_BK = self.model(
                    input_ids=ids_BL.to(self.device), attention_mask=mask_BL.to(self.device)
                ).logits
                for (i, _), value in zip(
                    chunk, logits_BK[:, self.label].float().tolist(), strict=True
                ):
                    results[i] = ScoreResult(value)
        return results  # type: ignore[return-value]
