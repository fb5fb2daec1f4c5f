"""Supervised fine-tuning stages of DeepSeek-R1 (arXiv:2501.12948): cold start and distillation.

R1 fine-tunes on reasoning traces twice: the *cold start* (sec. 2.3.1: thousands of long
chain-of-thought samples before reasoning RL) and the SFT on ~800k rejection-sampled samples
(sec. 2.3.3: 2 epochs); its distilled models are the same SFT applied to Qwen / Llama bases
(sec. 2.4, "we only apply SFT and do not include an RL stage"). All are next-token
cross-entropy on the *completion* tokens of ``(prompt, completion)`` pairs.

:func:`sft` runs them through trl's ``SFTTrainer`` (prompt-completion data, so trl's
``completion_only_loss`` masks the prompt; the assistant turn's end token is trained, so the
model learns to stop). Rows are those :func:`grpo.pipeline.rejection_sample` writes:

    {"prompt": [{"role": "user", "content": ...}],
     "completion": [{"role": "assistant", "content": "<think>...</think>..."}]}

(``prompt``/``completion`` as plain strings also work), or conversations
``{"messages": [..., {"role": "assistant", ...}]}`` such as OpenR1-Math-220k's, split before the
last assistant turn. Any other column is dropped.

A component below the recipes and the pipeline (both use it: ``grpo sft``, pipeline stages, the
tiny model's warm-up), re-exported as ``grpo.pipeline.sft``; it imports no other grpo module.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Settings grpo imposes or defaults, and why.
_FORCED = {"completion_only_loss": True}  # the stage's definition: loss on completion tokens only
_DEFAULTS = {
    "report_to": "none",  # no tracker unless asked
    "save_strategy": "no",  # the stage saves its final model itself
    "logging_steps": 10,
    "dataset_num_proc": None,
}


@dataclass
class SFTResult:
    """What an SFT stage produced."""

    model_dir: Path
    """The fine-tuned model and tokenizer (``save_pretrained``)."""
    log_history: list[dict[str, Any]] = field(default_factory=list)
    """trl / transformers' logged records (``loss``, ``learning_rate``, ...)."""
    seconds: float = 0.0
    """Wall time of data preparation and training."""
    model: Any = None
    """The trained model object (in memory)."""


def to_sft_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``prompt`` / ``completion`` pairs from SFT rows, checking each; ValueError names the bad
    row."""
    out = []
    for i, row in enumerate(rows):
        if "messages" in row and "prompt" not in row:
            messages = list(row["messages"] or [])
            last = messages[-1] if messages else None
            if (
                not isinstance(last, Mapping)
                or last.get("role") != "assistant"
                or not last.get("content")
            ):
                raise ValueError(
                    f"SFT row {i}: its 'messages' must end with a non-empty "
                    f"assistant turn, got {str(last)[:120]}"
                )
            prompt, completion = messages[:-1], [dict(last)]
        else:
            if "prompt" not in row:
                raise ValueError(
                    f"SFT row {i} has no 'prompt' (nor 'messages'); fields: {sorted(row)}"
                )
            prompt, completion = row["prompt"], row.get("completion")
        if not _has_text(completion):
            raise ValueError(
                f"SFT row {i} has no completion (completion={completion!r}); prompt: "
                f"{str(prompt)[:120]}. Every SFT row needs the text to learn."
            )
        if not prompt:
            raise ValueError(f"SFT row {i} has an empty prompt")
        if isinstance(prompt, str) != isinstance(completion, str):
            raise ValueError(
                f"SFT row {i}: prompt and completion must both be text or both chat messages"
            )
        out.append({"prompt": prompt, "completion": completion})
    if not out:
        raise ValueError("the SFT dataset is empty")
    return out


def _has_text(completion: Any) -> bool:
    if isinstance(completion, str):
        return bool(completion)
    if isinstance(completion, Sequence) and completion:
        return all(
            isinstance(m, Mapping) and m.get("role") == "assistant" for m in completion
        ) and any(m.get("content") for m in completion)
    return False


def sft_config(output_dir: str | Path, **settings: Any):
    """A trl ``SFTConfig``: grpo's defaults, then ``settings``; CPU-safe when there is no GPU.

    trl defaults to bf16 (it refuses to start on a CPU without it); without CUDA this uses
    ``use_cpu=True, bf16=False`` unless set explicitly. Unknown settings raise ValueError.
    """
    import torch
    from trl import SFTConfig

    for key, value in _FORCED.items():
        if key in settings and settings[key] != value:
            raise ValueError(
                f"{key}={settings[key]!r}: grpo's SFT trains on completion tokens "
                f"only ({key}={value}); use trl's SFTTrainer directly for other "
                "losses"
            )
    kwargs: dict[str, Any] = {**_DEFAULTS, **settings, **_FORCED, "output_dir": str(output_dir)}
    if not torch.cuda.is_available():
        kwargs.setdefault("use_cpu", True)
        kwargs.setdefault("bf16", False)
    try:
        return SFTConfig(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad SFT setting: {e} (settings are trl.SFTConfig fields)") from None


def sft(
    model: Any,
    dataset: Any,
    output_dir: str | Path,
    *,
    tokenizer: Any = None,
    save: bool = True,
    callbacks: Sequence[Any] = (),
    print_logs: bool = True,
    **settings: Any,
) -> SFTResult:
    """Fine-tune ``model`` on SFT rows with trl's ``SFTTrainer``; save it to ``output_dir/model``.

    Args:
        model: path / hub id, or a loaded causal LM (then pass ``tokenizer`` unless it was
            loaded from a path).
        dataset: SFT rows (list of dicts or ``datasets.Dataset``), see the module docstring.
        output_dir: the stage folder; the model goes to ``output_dir/model``.
        tokenizer: the model's tokenizer (default: loaded from the model's path).
        save: save the model to ``output_dir/model`` (False: only train ``model`` in place).
        callbacks: transformers ``TrainerCallback``s (e.g. a progress display of your own).
        print_logs: False drops transformers' own log printing and progress bar (the raw
            ``{'loss': ...}`` dicts): for a caller that shows progress through ``callbacks``.
        **settings: ``trl.SFTConfig`` fields (``learning_rate``, ``num_train_epochs``,
            ``per_device_train_batch_size``, ``max_length``, ``seed`` ...).
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    t0 = time.perf_counter()
    rows = to_sft_rows(dataset)
    if isinstance(model, (str, Path)):
        source = str(model)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source)
    elif tokenizer is None:
        source = getattr(getattr(model, "config", None), "_name_or_path", None)
        if not source:
            raise ValueError("pass tokenizer=... when model is a loaded model without a saved path")
        tokenizer = AutoTokenizer.from_pretrained(source)
    output_dir = Path(output_dir)
    args = sft_config(output_dir / "trl", **settings)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=list(callbacks) or None,
    )
    if not print_logs:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    trainer.train()
    model_dir = output_dir / "model"
    if save:
        trainer.save_model(str(model_dir))
        tokenizer.save_pretrained(model_dir)
    return SFTResult(
        model_dir=model_dir,
        log_history=list(trainer.state.log_history),
        seconds=time.perf_counter() - t0,
        model=trainer.model,
    )
