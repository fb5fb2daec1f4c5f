"""Peak memory and time of chunked vs naive per-token log-probs, forward + backward.

Compares :func:`grpo.logprobs.token_logprobs` (chunked over the ``B*T`` rows, logits
recomputed in backward) with :func:`grpo.logprobs.naive_token_logprobs` (full float32
``[B, T, V]`` logits, ``log_softmax``, ``gather``) at Qwen2.5-0.5B shapes (hidden 896, vocab
151,936). Gradients flow to both the hidden states and the LM-head weight, as in training; the
upstream gradient is a fixed random ``[B, T]`` tensor (a policy loss gives one value per token).

Each (size, method) runs in a fresh subprocess, so one run's allocator state cannot leak into
another's. Memory: inside that process, after the inputs exist and a tiny warm-up ran, the
kernel's peak-RSS counter is reset (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) and
``VmHWM - VmRSS`` (``/proc/self/status``) after forward + backward is the *extra* peak
resident memory. It counts everything the step allocates, including the gradients it returns
(the float32 weight gradient alone is V x H x 4 bytes = 0.51 GiB at these shapes, for both
methods). Where ``clear_refs`` is not writable it falls back to ``ru_maxrss`` before/after, which
cannot be reset, so later repeats are then not measured (the first one is).

Time: wall-clock seconds and the CPU seconds of the process (all threads). On a machine shared
with other jobs the wall time measures the scheduler as much as the code; the CPU time is
steadier, and running the command at a raised priority (``nice -n -15``) makes both agree.

Usage::

    python benchmarks/bench_logprobs.py                       # 3 sizes, 2 repeats: ~4 min, 2 cores
    python benchmarks/bench_logprobs.py --repeats 3 --chunk-sizes auto 110 883   # ~12 min
    python benchmarks/bench_logprobs.py --markdown            # table for benchmarks/README.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

QWEN25_05B_HIDDEN = 896
QWEN25_05B_VOCAB = 151_936


# ------------------------------------------------------------------------------ memory probe
def _status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


class PeakRSS:
    """Extra peak resident memory of a code region, in bytes (see the module docstring)."""

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM reset via /proc/self/clear_refs"
        except OSError:
            self.method = "ru_maxrss before/after (first repeat only)"
        self._used = False

    def start(self) -> None:
        if self.method.startswith("VmHWM"):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := current VmRSS
            self._base_kb = _status_kb()["VmRSS"]
        else:
            self._base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def stop(self) -> int | None:
        if self.method.startswith("VmHWM"):
            return (_status_kb()["VmHWM"] - self._base_kb) * 1024
        if self._used:  # ru_maxrss cannot be reset: only the first region is measurable
            return None
        self._used = True
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._base_kb) * 1024


# ------------------------------------------------------------------------------------ worker
def run_worker(args: argparse.Namespace) -> None:
    import torch

    from grpo.logprobs import naive_token_logprobs, token_logprobs

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    b, t = (int(x) for x in args.size.split("x"))
    h, v = args.hidden, args.vocab
    gen = torch.Generator().manual_seed(0)
    # Scale like a trained LM head: logits of O(1..10), not O(sqrt(H)).
    weight_VH = (torch.randn(v, h, generator=gen) * 0.05).to(dtype).requires_grad_(True)
    hidden_BTH = torch.randn(b, t, h, generator=gen).to(dtype).requires_grad_(True)
    targets_BT = torch.randint(0, v, (b, t), generator=gen)
    upstream_BT = torch.randn(b, t, generator=gen)

    if args.method == "naive":
        def fn(x, w, y):
            return naive_token_logprobs(x, w, y)
    else:
        chunk = None if args.chunk_size == "auto" else int(args.chunk_size)

        def fn(x, w, y):
            return token_logprobs(x, w, y, chunk_size=chunk)

    def step() -> None:
        logp_BT = fn(hidden_BTH, weight_VH, targets_BT)
        (logp_BT * upstream_BT).sum().backward()

    # Warm-up on 16 rows: thread pools and kernels initialised, no big allocation survives.
    x_small = hidden_BTH.detach()[:1, :16].clone().requires_grad_(True)
    (fn(x_small, weight_VH, targets_BT[:1, :16]) * upstream_BT[:1, :16]).sum().backward()
    del x_small

    probe = PeakRSS()
    times, cpu_times, peaks = [], [], []
    for _ in range(args.repeats):
        weight_VH.grad = None
        hidden_BTH.grad = None
        probe.start()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        peak = probe.stop()
        if peak is not None:
            peaks.append(peak)
    print(json.dumps({
        "times": times,
        "cpu_times": cpu_times,
        "peak_bytes": max(peaks),
        "memory_method": probe.method,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


# ------------------------------------------------------------------------------------ driver
def _run_one(args: argparse.Namespace, size: str, method: str, chunk: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--size", size,
           "--method", method, "--chunk-size", chunk, "--repeats", str(args.repeats),
           "--hidden", str(args.hidden), "--vocab", str(args.vocab), "--dtype", args.dtype,
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {size} {method} {chunk} failed (rc {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["1x256", "2x512", "4x1024"],
                   help="batch x completion length, e.g. 4x1024")
    p.add_argument("--repeats", type=int, default=2,
                   help="timed forward+backward runs per case (the table shows the median)")
    p.add_argument("--chunk-sizes", nargs="+", default=["auto"],
                   help="token_logprobs chunk_size values ('auto' = the library default)")
    p.add_argument("--hidden", type=int, default=QWEN25_05B_HIDDEN)
    p.add_argument("--vocab", type=int, default=QWEN25_05B_VOCAB)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype of hidden states and weight (logits statistics are float32 anyway)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    # internal: one measurement in this process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=["naive", "chunked"], help=argparse.SUPPRESS)
    p.add_argument("--chunk-size", default="auto", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        run_worker(args)
        return

    rows = []
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    for size in args.sizes:
        naive = _run_one(args, size, "naive", "auto")
        rows.append((size, "naive", "-", naive, None))
        for chunk in args.chunk_sizes:
            rows.append((size, "chunked", chunk, _run_one(args, size, "chunked", chunk), naive))
        print(f"  [{size} done, {time.perf_counter() - t_start:.0f} s]", file=sys.stderr,
              flush=True)
    load_after = os.getloadavg()

    med = statistics.median
    header = ["B x T", "method", "chunk_size", "wall s", "CPU s", "extra peak GiB",
              "wall / naive", "CPU / naive", "memory / naive"]
    lines = []
    for size, method, chunk, r, ref in rows:
        ref = ref or r
        lines.append([
            size, method, chunk, f"{med(r['times']):.2f}", f"{med(r['cpu_times']):.2f}",
            _gib(r["peak_bytes"]), f"{med(r['times']) / med(ref['times']):.2f}",
            f"{med(r['cpu_times']) / med(ref['cpu_times']):.2f}",
            f"{r['peak_bytes'] / ref['peak_bytes']:.3f}",
        ])

    meta = rows[0][3]
    print(f"\ntoken_logprobs forward+backward (grads to hidden and weight), H={args.hidden}, "
          f"V={args.vocab}, {args.dtype}; median of {args.repeats} runs, each case in a fresh "
          f"process; {meta['threads']} torch threads, torch {meta['torch']}, {_cpu_name()}, "
          f"{os.cpu_count()} CPUs; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after")
    print("wall s: wall-clock seconds; CPU s: CPU seconds of the process (all threads), "
          "steadier than wall time when other jobs share the machine")
    print(f"extra peak GiB: peak RSS over the inputs ({meta['memory_method']}), including the "
          f"returned gradients (the float32 weight gradient alone is "
          f"{_gib(args.hidden * args.vocab * 4)} GiB)\n")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(header[i]), *(len(ln[i]) for ln in lines)) for i in range(len(header))]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for line in lines:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)))

    # Targets from the foundation issue, at the largest size.
    largest = max(args.sizes, key=lambda s: math.prod(int(x) for x in s.split("x")))
    print(f"\ntargets at {largest}: chunked extra peak <= 1/8 of naive's, time <= 1.3x naive's")
    for size, _method, chunk, r, ref in rows:
        if size != largest or ref is None:
            continue
        m_ratio = r["peak_bytes"] / ref["peak_bytes"]
        w_ratio = med(r["times"]) / med(ref["times"])
        c_ratio = med(r["cpu_times"]) / med(ref["cpu_times"])
        print(f"  chunk_size={chunk}: memory {m_ratio:.3f} ({_verdict(m_ratio <= 1 / 8)}), "
              f"wall time {w_ratio:.2f}x ({_verdict(w_ratio <= 1.3)}), "
              f"CPU time {c_ratio:.2f}x ({_verdict(c_ratio <= 1.3)})")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
