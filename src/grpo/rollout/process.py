"""``ProcessGenerator``: an HF generator in its own process, with its own copy of the weights.

The asynchronous trainer (:mod:`grpo.async_source`) samples the next steps while the learner
trains, so the sampler cannot be the trained model object itself (as :class:`HFGenerator` is).
This generator runs an :class:`HFGenerator` in a child process (``spawn``) on a copy of the
model, on the trainer's device unless told otherwise (the pattern of a separate inference
worker; on a CPU machine the child and the learner each keep a core busy).

**Weights.** At start the parent writes the model (config, tokenizer, full state dict) to a
temporary folder that the child loads once, and puts the tensors that training can change in
shared-memory CPU buffers: every parameter of a plain model; for a peft model only its
*trainable* tensors (the active adapter's ``lora_A`` / ``lora_B``, plus ``modules_to_save``
copies and any base parameter left trainable), since the frozen base never changes. The child
builds the same adapter (the same ``PeftConfig``, hence the same module names) on the base, so
LoRA is never merged. :meth:`sync_weights` copies those tensors into the buffers under a lock
and bumps a version counter: a memcpy of :attr:`sync_bytes` bytes (the adapter alone, for
LoRA: trl's AsyncGRPOTrainer pushes the adapter the same way). Before sampling, the child
copies the buffers into its model (on its device) if the version moved, under the same lock,
so it never reads half-written weights. Each :class:`Rollout` carries, as ``policy_version``,
the version it was sampled with.

**Multi-turn.** :meth:`ProcessGenerator.token_engine` is a :class:`grpo.rollout.engines.TokenEngine`
whose ``sample`` runs :class:`~grpo.rollout.engines.HFEngine` in the child, so a
:class:`grpo.rollout.MultiTurnGenerator` over a ProcessGenerator samples every turn there
(token-in, token-out) and runs its tools in the parent.

Failures are loud: a child that dies (its exit code is named) or does not answer within
``timeout`` seconds raises in the parent instead of hanging it; a training script without the
``__main__`` guard gets a one-line error; :meth:`close` ends the child (terminate, then kill)
and leaves no process behind.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from grpo.rollout.process_child import STATE_FILE, serve
from grpo.rollout.types import BaseGenerator, Prompt, Rollout, SamplingConfig
from grpo.rollout.weights import active_adapter, is_peft_model, unwrap_model

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


# ---------------------------------------------------------------------------------- parent side


def _synced_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a sync copies, by name: all parameters of a plain model; the trainable ones
    of a peft model (the frozen base is loaded once and never changes)."""
    params = dict(model.named_parameters())
    if not is_peft_model(model):
        return params
    return {n: p for n, p in params.items() if p.requires_grad}


def _peft_spec(model: torch.nn.Module) -> tuple[str, Any, list[str]]:
    """``(active adapter, its config, the other adapters' names)`` of a peft model (one active
    adapter, or :func:`~grpo.rollout.weights.active_adapter` refuses)."""
    name = active_adapter(model)
    return name, copy.deepcopy(model.peft_config[name]), [a for a in model.peft_config if a != name]


def _save_for_child(model: torch.nn.Module, tokenizer: Any, folder: str) -> None:
    """Config, generation config, tokenizer and the full state dict (peft names for a peft
    model: base weights, adapters, modules_to_save) for the child to load once."""
    base = model.get_base_model() if is_peft_model(model) else model
    base.config.save_pretrained(folder)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(folder, STATE_FILE))


# ------------------------------------------------------------------------------- the generator


class ProcessGenerator(BaseGenerator):
    """A :class:`grpo.rollout.Generator` whose sampling runs in a child process.

    Args:
        model: the policy: a transformers causal LM or a peft model over one (either possibly
            wrapped by DDP / accelerate / compile); its current weights are the child's
            initial weights. A peft model keeps its adapter unmerged: the child builds the
            same adapter and syncs copy its trainable tensors only.
        tokenizer: its tokenizer (saved with a copy of the model for the child to load).
        device: where the child samples (default: the device of ``model``'s parameters, i.e.
            the trainer's). The shared buffers stay on the CPU either way.
        timeout: seconds one ``generate`` / ``sample`` may take before the child counts as
            stalled.
        startup_timeout: seconds the child may take to start and load the model.
        threads: torch threads in the child.
        chat_template_kwargs: extra variables for the chat template.
        max_batch_size, share_prompt_prefill: passed to the child's :class:`HFGenerator`.
    """

    versioned = True
    """Its rollouts carry the weight version that sampled them (the rollout source keeps it)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        device: str | torch.device | None = None,
        timeout: float = 600.0,
        threads: int = 1,
        chat_template_kwargs: dict | None = None,
        startup_timeout: float = 300.0,
        max_batch_size: int | None = None,
        share_prompt_prefill: bool = True,
    ):
        import torch.multiprocessing as mp

        refuse_in_bootstrapping_child()
        model = unwrap_model(model)
        first = next(model.parameters())
        self._device = torch.device(device) if device is not None else first.device
        if self._device.type == "cuda" and self._device.index is None:
            self._device = torch.device("cuda", torch.cuda.current_device())
        peft = _peft_spec(model) if is_peft_model(model) else None
        self.tokenizer = tokenizer
        self.timeout = timeout
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self._dir = tempfile.TemporaryDirectory(prefix="grpo-generator-")
        self._proc = None
        _save_for_child(model, tokenizer, self._dir.name)
        with torch.no_grad():
            self._buffers = {
                n: p.detach().to("cpu", copy=True).share_memory_()
                for n, p in _synced_tensors(model).items()
            }
        base = model.get_base_model() if peft is not None else model
        options = {
            "threads": threads,
            "device": str(self._device),
            "dtype": first.dtype if peft is None else next(base.parameters()).dtype,
            "attn": getattr(base.config, "_attn_implementation", None),
            "peft": peft,
            "generator": {
                "max_batch_size": max_batch_size,
                "share_prompt_prefill": share_prompt_prefill,
            },
        }
        ctx = mp.get_context("spawn")
        self._lock = ctx.Lock()
        self._calls = threading.Lock()  # one round trip on the pipe at a time
        self._version = ctx.Value("q", 0, lock=False)
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(
            target=serve,
            args=(self._dir.name, self._buffers, self._version, self._lock, child_conn, options),
            daemon=True,
            name="grpo-generator",
        )
        self._proc.start()
        child_conn.close()
        self.version = 0
        self.last_sync_seconds: float | None = None
        """Seconds the last :meth:`sync_weights` held the learner (the copy into the buffers)."""
        try:
            self._engine_info = self._receive(startup_timeout, "start")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ Generator protocol
    def generate(
        self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig
    ) -> list[Rollout]:
        return self._call(
            ("generate", list(prompts), n, sampling, self.chat_template_kwargs),
            "return rollouts",
        )

    def sync_weights(self, model: torch.nn.Module, version: int | None = None) -> None:
        """Copy ``model``'s synced tensors (:attr:`buffer_names`) into the shared buffers (the
        child picks them up before it next samples); ``version`` (default: the next integer)
        tags later rollouts. Raises if the model's trainable tensors are no longer the ones
        the generator was built with (a parameter unfrozen since: it would never be synced)."""
        tensors = _synced_tensors(unwrap_model(model))
        if tensors.keys() != self._buffers.keys():
            added = sorted(tensors.keys() - self._buffers.keys())[:3]
            gone = sorted(self._buffers.keys() - tensors.keys())[:3]
            raise ValueError(
                "the model's synced tensors changed since the ProcessGenerator was built "
                f"(new {added}, missing {gone}): freeze / unfreeze parameters before building it"
            )
        t0 = time.perf_counter()
        with self._lock, torch.no_grad():
            for name, buf in self._buffers.items():
                t = tensors[name].detach()
                # an FSDP2 shard: gathered whole (a collective: every process pushes at once)
                buf.copy_(t.full_tensor() if hasattr(t, "full_tensor") else t)
            self.version = self.version + 1 if version is None else version
            self._version.value = self.version
        self.last_sync_seconds = time.perf_counter() - t0

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
        """Where the child samples (its model's device)."""
        return self._device

    def token_engine(self) -> ProcessEngine:
        return ProcessEngine(self)

    # ------------------------------------------------------------------ introspection
    @property
    def buffer_names(self) -> tuple[str, ...]:
        """The names of the tensors a sync copies (peft names for a peft model)."""
        return tuple(self._buffers)

    @property
    def sync_bytes(self) -> int:
        """Bytes one :meth:`sync_weights` copies."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def child_device(self) -> str:
        """The device of the child's model, as the child reports it."""
        return self.child_stats()["device"]

    def child_stats(self) -> dict:
        """The child's view: ``device``, ``version`` it holds, ``loads`` (copies from the
        buffers so far), ``load_seconds`` (the last one's duration)."""
        return self._call(("stats",), "report its state")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    # ------------------------------------------------------------------ the pipe
    def _call(self, message: tuple, what: str) -> Any:
        with self._calls:
            self._check_alive()
            self._conn.send(message)
            return self._receive(self.timeout, what)

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


class ProcessEngine:
    """A :class:`grpo.rollout.engines.TokenEngine` whose ``sample`` runs in the generator
    process (:class:`~grpo.rollout.engines.HFEngine` on its HFGenerator): per-row seeds,
    contexts and limits as in-process, on the child's copy of the weights.

    Each ``sample`` first loads newly synced weights, so the turns of one trajectory may be
    sampled by different versions; inside :meth:`session` only the first ``sample`` loads
    them. :attr:`policy_version` is the version that sampled the last call.
    """

    def __init__(self, generator: ProcessGenerator):
        info = generator._engine_info
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self.eos_ids: list[int] = list(info["eos_ids"])
        self.max_context: int | None = info["max_context"]
        self.policy_version: int | None = None
        self._pinned: bool | None = None  # None: no session; False: session, not yet loaded

    def sample(
        self,
        contexts: Sequence[list[int]],
        seeds: Sequence[int | None],
        limits: Sequence[int],
        sampling: SamplingConfig,
    ) -> list[tuple[list[int], list[float]]]:
        refresh = not self._pinned
        message = (
            "sample",
            [list(c) for c in contexts],
            list(seeds),
            list(limits),
            sampling,
            refresh,
        )
        version, rows = self.generator._call(message, "return sampled tokens")
        if self._pinned is False:
            self._pinned = True
        self.policy_version = version
        return rows

    @contextmanager
    def session(self) -> Iterator[ProcessEngine]:
        """Keep one weight version for every ``sample`` inside (one multi-turn ``generate``):
        the first call loads the latest synced weights, the others reuse them."""
        self._pinned = False
        try:
            yield self
        finally:
            self._pinned = None


def device_check(model: torch.nn.Module, tokenizer: Any, *, timeout: float = 300.0) -> dict:
    """For the GPU check: start a :class:`ProcessGenerator` on ``model`` (default device: the
    trainer's), assert the child's model sits on that device, sample, sync once and sample
    again; returns the devices and timings."""
    trainer_device = next(unwrap_model(model).parameters()).device
    t0 = time.perf_counter()
    gen = ProcessGenerator(model, tokenizer, timeout=timeout, startup_timeout=timeout)
    try:
        started = time.perf_counter() - t0
        child = gen.child_device()
        assert torch.device(child) == trainer_device, (child, str(trainer_device))
        sampling = SamplingConfig(max_tokens=16, seed=0)
        t0 = time.perf_counter()
        gen.generate(["1 + 1 ="], 2, sampling)
        first = time.perf_counter() - t0
        gen.sync_weights(model)
        out = gen.generate(["1 + 1 ="], 2, sampling)
        stats = gen.child_stats()
        assert {r.policy_version for r in out} == {1} and stats["loads"] == 2, stats
    finally:
        gen.close()
    return {
        "trainer_device": str(trainer_device),
        "child_device": child,
        "start_seconds": started,
        "generate_seconds": first,
        "sync_bytes": gen.sync_bytes,
        "sync_seconds": gen.last_sync_seconds,
        "child_load_seconds": stats["load_seconds"],
    }
