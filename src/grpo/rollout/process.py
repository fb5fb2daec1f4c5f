"""``ProcessGenerator``: an HF generator in its own process, with its own copy of the weights.

The asynchronous trainer (:mod:`grpo.async_source`) samples the next steps while the learner
trains, so the sampler cannot be the trained model object itself (as :class:`HFGenerator` is).
This generator runs an :class:`HFGenerator` in a child process (``spawn``) on a copy of the
model; on a CPU machine the child and the learner each keep a core busy, and on a GPU it is the
pattern of a separate inference worker.

Weights travel through shared memory. At start the parent puts every parameter in a
shared-memory buffer; :meth:`sync_weights` copies the trained parameters into it under a lock
and bumps a version counter (a memcpy: the learner is held only for that copy). Before each
``generate`` the child copies the buffer into its model if the version moved, under the same
lock, so it never reads half-written weights. Each returned :class:`Rollout` carries, as
``policy_version``, the version it was sampled with.

Failures are loud: a child that dies (its exit code is named) or does not answer within
``timeout`` seconds raises in the parent instead of hanging it; :meth:`close` ends the child
(terminate, then kill) and leaves no process behind.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from grpo.rollout.types import BaseGenerator, Prompt, Rollout, SamplingConfig
from grpo.rollout.weights import is_peft_model, unwrap_model


NO_MAIN_GUARD_EXIT = 86
"""The exit code of a child that found itself re-running the training script at import."""

NO_MAIN_GUARD = (
    "async rollouts start a generator process that re-imports your script (multiprocessing "
    "'spawn'), and the script starts training at import: put the training under "
    '`if __name__ == "__main__":`'
)


def refuse_in_bootstrapping_child() -> None:
    """Inside a spawned child still importing the parent's ``__main__`` (a script without the
    ``__main__`` guard building a trainer at import): say so and end the child with
    :data:`NO_MAIN_GUARD_EXIT`, which the parent turns into a one-line error. Without this the
    child dies in multiprocessing's bootstrapping check and the parent sees a bare EOFError."""
    # multiprocessing's own flag for "still importing the parent's __main__" (what its
    # _check_not_importing_main reads); parent_process() is not set yet at that point
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        sys.stderr.write(f"grpo: {NO_MAIN_GUARD}\n")
        sys.stderr.flush()
        os._exit(NO_MAIN_GUARD_EXIT)


def _child(
    model_dir: str, buffers: dict[str, torch.Tensor], version, lock, conn, threads: int
) -> None:
    """The child's loop: ``("generate", prompts, n, sampling)`` -> ``("ok", rollouts)`` or
    ``("error", traceback)``; ``("close",)`` ends it."""
    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.rollout.hf import HFGenerator

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=next(iter(buffers.values())).dtype
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    params = dict(model.named_parameters())
    generator = HFGenerator(model, tokenizer)
    conn.send(("ready", None))
    have = -1
    while True:
        message = conn.recv()
        if message[0] == "close":
            return
        try:
            with lock:
                current = version.value
                if current != have:
                    with torch.no_grad():
                        for name, buf in buffers.items():
                            params[name].copy_(buf)
                    have = current
            _, prompts, n, sampling, chat_kwargs = message
            generator.chat_template_kwargs = chat_kwargs
            out = generator.generate(prompts, n, sampling)
            conn.send(("ok", [replace(r, policy_version=have) for r in out]))
        except Exception:  # noqa: BLE001 -- sent to the parent, which raises it
            conn.send(("error", traceback.format_exc()))


class ProcessGenerator(BaseGenerator):
    """A :class:`grpo.rollout.Generator` whose sampling runs in a child process.

    Args:
        model: the policy (a transformers causal LM, not a peft model); its current weights
            are the child's initial weights.
        tokenizer: its tokenizer (saved with a copy of the model for the child to load).
        timeout: seconds one ``generate`` may take before the child counts as stalled.
        startup_timeout: seconds the child may take to start and load the model.
        threads: torch threads in the child.
        chat_template_kwargs: extra variables for the chat template.
    """

    versioned = True
    """Its rollouts carry the weight version that sampled them (the rollout source keeps it)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        timeout: float = 600.0,
        threads: int = 1,
        chat_template_kwargs: dict | None = None,
        startup_timeout: float = 300.0,
    ):
        import torch.multiprocessing as mp

        refuse_in_bootstrapping_child()
        model = unwrap_model(model)
        if is_peft_model(model):
            raise ValueError(
                "ProcessGenerator needs a plain transformers model (merge LoRA adapters first)"
            )
        self.timeout = timeout
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self._dir = tempfile.TemporaryDirectory(prefix="grpo-generator-")
        model.save_pretrained(self._dir.name)
        tokenizer.save_pretrained(self._dir.name)
        with torch.no_grad():
            self._buffers = {
                n: p.detach().to("cpu", copy=True).share_memory_()
                for n, p in model.named_parameters()
            }
        ctx = mp.get_context("spawn")
        self._lock = ctx.Lock()
        self._version = ctx.Value("q", 0, lock=False)
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child,
            args=(self._dir.name, self._buffers, self._version, self._lock, child_conn, threads),
            daemon=True,
            name="grpo-generator",
        )
        self._proc.start()
        child_conn.close()
        self.version = 0
        self._receive(startup_timeout, "start")

    def _receive(self, timeout: float, what: str) -> Any:
        """The child's next answer; raises if it dies or takes longer than ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not self._conn.poll(0.5):
            self._check_alive()
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(
                    f"the generator process did not {what} within {timeout:.0f} s "
                    "(stalled); it was stopped"
                )
        try:
            status, payload = self._conn.recv()
        except EOFError:  # the child closed its end: it exited
            proc = self._proc
            proc.join(5)
            code = proc.exitcode
            self.close()
            if code == NO_MAIN_GUARD_EXIT:
                raise RuntimeError(NO_MAIN_GUARD) from None
            raise RuntimeError(
                f"the generator process died (exit code {code}) before it could {what}; see "
                "its output above"
            ) from None
        if status == "error":
            raise RuntimeError(f"the generator process failed:\n{payload}")
        return payload

    # ------------------------------------------------------------------ Generator protocol
    def generate(
        self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig
    ) -> list[Rollout]:
        self._check_alive()
        self._conn.send(("generate", list(prompts), n, sampling, self.chat_template_kwargs))
        return self._receive(self.timeout, "return rollouts")

    def sync_weights(self, model: torch.nn.Module, version: int | None = None) -> None:
        """Copy ``model``'s parameters into the shared buffer (the child picks them up before
        its next ``generate``); ``version`` (default: the next integer) tags later rollouts."""
        params = dict(unwrap_model(model).named_parameters())
        with self._lock, torch.no_grad():
            for name, buf in self._buffers.items():
                buf.copy_(params[name].detach())
            self.version = self.version + 1 if version is None else version
            self._version.value = self.version

    def close(self) -> None:
        """End the child (politely, then terminate, then kill); idempotent."""
        proc = getattr(self, "_proc", None)
        if proc is None:
            return
        if proc.is_alive():
            try:
                self._conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
            proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        self._proc = None
        self._dir.cleanup()

    @property
    def device(self) -> torch.device:
        """The child samples on the CPU (it never moves its copy of the model)."""
        return torch.device("cpu")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _check_alive(self) -> None:
        if self._proc is None:
            raise RuntimeError("the generator process is closed")
        if not self._proc.is_alive():
            code = self._proc.exitcode
            self.close()
            raise RuntimeError(
                f"the generator process died (exit code {code}); see its output above"
            )

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown: nothing left to report to
            pass
