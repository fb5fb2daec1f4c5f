"""transformers' Trainer conventions for :class:`grpo.GRPOTrainer`: ``TrainerCallback`` events,
``trainer.state`` (a ``transformers.TrainerState``) and ``trainer.control``.

The trainer calls, in this order (as ``transformers.Trainer`` does, with ``(args, state, control)``
and the keyword arguments ``model``, ``processing_class``, ``optimizer``, ``lr_scheduler``):

- ``on_train_begin`` once, before the first step (after a resume: ``state.global_step`` is the
  checkpoint's step);
- ``on_step_begin`` / ``on_step_end`` around every GRPO step (``state.global_step`` is already
  the finished step's number at ``on_step_end``);
- ``on_log`` with ``logs``, the step's metrics (grpo's names, e.g. ``loss/loss``,
  ``reward/total/mean``), on every logged step; ``state.log_history`` gets the same dict plus
  ``"step"`` and ``"epoch"``;
- ``on_evaluate`` with ``metrics``, the evaluation's (``eval/...``), also appended to
  ``log_history``;
- ``on_save`` after every checkpoint;
- ``on_train_end`` once, after the final evaluation and final model.

What a callback sets on ``control`` is honoured after ``on_step_end``: ``should_training_stop``
ends the run after that step (the final evaluation and final model follow, as at ``max_steps``;
no checkpoint is forced, set ``should_save`` too for one), ``should_save`` writes a checkpoint,
``should_evaluate`` evaluates, ``should_log`` logs the step's metrics, each besides the ones the
config schedules.

``args`` is grpo's :class:`grpo.GRPOConfig`, not a ``transformers.TrainingArguments``: a callback
reading a TrainingArguments attribute grpo has no field for (``metric_for_best_model``,
``logging_dir`` ...) gets an AttributeError naming it. ``output_dir``, ``seed``, ``max_steps`` and
``num_train_epochs`` exist under the same names.
"""

from __future__ import annotations

from typing import Any

from transformers.trainer_callback import CallbackHandler, TrainerControl, TrainerState

__all__ = ["Callbacks", "new_state", "TrainerControl", "TrainerState"]


class Callbacks(CallbackHandler):
    """transformers' ``CallbackHandler`` (the same events, the same ``control`` resets) without
    its ``DefaultFlowCallback``: grpo schedules logging, evaluation and saving from its config."""

    def __init__(self, callbacks, model, processing_class, optimizer, lr_scheduler):
        self.callbacks = []
        for cb in callbacks:
            self.add_callback(cb)
        self.model, self.processing_class = model, processing_class
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.train_dataloader = self.eval_dataloader = None


def new_state(
    *,
    max_steps: int,
    logging_steps: int,
    eval_steps: int,
    save_steps: int,
    train_batch_size: int,
    num_train_epochs: float,
    is_main: bool,
    is_local_main: bool,
) -> TrainerState:
    """The run's ``TrainerState`` before its first step (``best_metric`` stays None: grpo keeps
    no best model)."""
    return TrainerState(
        max_steps=max_steps,
        logging_steps=logging_steps,
        eval_steps=eval_steps,
        save_steps=save_steps,
        train_batch_size=train_batch_size,
        num_train_epochs=num_train_epochs,
        is_world_process_zero=is_main,
        is_local_process_zero=is_local_main,
    )


def log_entry(state: TrainerState, logs: dict[str, Any]) -> dict[str, Any]:
    """What ``transformers.Trainer.log`` appends to ``state.log_history``: the logs, the epoch
    and the step."""
    entry = {**logs, "epoch": state.epoch, "step": state.global_step}
    state.log_history.append(entry)
    return entry
