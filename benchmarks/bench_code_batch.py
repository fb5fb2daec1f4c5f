"""Latency of one GRPO step's code batch: the 32 sandboxed programs of bench_vs_trl --rows code.

    python benchmarks/bench_code_batch.py                 # 20 batches through the scoring pool
    python benchmarks/bench_code_batch.py --repeats 50 --workers 2

Data: ``bench_vs_trl.code_rows()`` (32 function-writing problems, 3 assert tests each) and
completions like a random tiny model's (32 random printable characters, spaces and newlines:
almost all SyntaxErrors), scored by ``bench_vs_trl.OpenFenceCodeReward`` so that every
completion runs in the sandbox. Each repeat scores fresh completions.

Prints, per repeat kind, the median and the min/max of:

* ``pool``: ``reward.score_batch`` of the 32 items in a ScoringPool (``--workers``, default 2,
  as in the trainer on this machine): what a training step waits for;
* ``in-process``: the same 32 items scored one after another in this process (no pool): the
  sandbox's own latency per run, times 32;
* ``pool, math + code`` (``--math``): MathReward then the code reward, both in the pool, as a
  trainer step of that benchmark scores them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_vs_trl, also for pool workers

from bench_vs_trl import OpenFenceCodeReward, code_rows  # noqa: E402

from grpo.rewards import MathReward, ScoringPool, sandbox_layers, set_pool  # noqa: E402

ALPHABET = string.ascii_letters + string.digits + string.punctuation + " " * 10 + "\n" * 3


def garbage_batch(rows: list[dict], seed: int, length: int = 32) -> tuple[list[str], list[dict]]:
    """One completion per row, like a random character-level model's."""
    rng = random.Random(seed)
    completions = ["".join(rng.choice(ALPHABET) for _ in range(length)) for _ in rows]
    return completions, [{"tests": r["tests"], "answer": r["answer"]} for r in rows]


def timed(rewards, completions, examples) -> float:
    t = time.perf_counter()
    for reward in rewards:
        results = reward.score_batch(completions, examples)
        bad = [r for r in results if not r.scored]
        if bad:
            raise RuntimeError(f"{reward.name}: {len(bad)} unscorable results, e.g. {bad[0]}")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n", type=int, default=32, help="programs per batch")
    ap.add_argument("--no-in-process", action="store_true", help="skip the in-process rows")
    ap.add_argument("--math", action="store_true", help="add the math + code row")
    args = ap.parse_args()
    rows = code_rows(args.n)
    set_pool(ScoringPool(args.workers).start())
    sides = {"pool": [OpenFenceCodeReward()]}
    if not args.no_in_process:
        sides["in-process"] = [OpenFenceCodeReward(parallel=False)]
    if args.math:
        sides["pool, math + code"] = [MathReward(), OpenFenceCodeReward()]
    for rewards in sides.values():  # warm: workers, their zygotes, the mode probe, math-verify
        timed(rewards, *garbage_batch(rows, seed=-1))
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.repeats):
        for name, rewards in sides.items():
            times[name].append(timed(rewards, *garbage_batch(rows, seed=r)))
    print(f"layers: {', '.join(sandbox_layers())}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("| side | batch | median (s) | min (s) | max (s) | per program (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {args.n} | {med:.3f} | {min(ts):.3f} | {max(ts):.3f} | "
              f"{1000 * med / args.n:.1f} |")
    set_pool(None)


if __name__ == "__main__":
    main()
