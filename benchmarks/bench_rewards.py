"""Verifier throughput: process pool vs one-at-a-time, math and sandboxed code.

    python benchmarks/bench_rewards.py              # full table (math 64-512, code 64-512)
    python benchmarks/bench_rewards.py --quick      # smaller batches
    python benchmarks/bench_rewards.py --code-only  # the sandbox rows only

* math: GRPO-shaped batches (16 completions per gold answer, 16 distinct golds per 256): half
  GSM8K-like integer answers, half MATH-like fractions in varied forms (LaTeX, a/b, decimals,
  percentages, equations), 60% correct, inside a few hundred characters of reasoning. Every
  repeat scores fresh completions (no answer is parsed twice). One verification = extract +
  parse + verify (exact literals decided without sympy: ``literal_verdict``).
* code: each completion is a Python function in a fenced block with 5 assert tests (correct
  and buggy solutions mixed); one test-run = one completion's program + its 5 tests in one
  sandboxed process. Two rows per batch size: the sandbox's per-run path (a fresh interpreter
  and namespaces per run, ``prefork=False``) and the pre-forked path (forked from a zygote
  already inside the isolation, the default); their batches alternate.
* "pool": ``reward.score_batch`` in the shared ScoringPool (one worker per core);
  "one-at-a-time": the same reward with ``parallel=False``, scored in this process in a loop.

Also prints the pool's start-up cost (first workers ready) and the cost of replacing a worker
killed on a timeout. Timings depend on other load on the machine: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from fractions import Fraction

from grpo.rewards import CodeReward, MathReward, Reward, ScoringPool, get_pool, sandbox_layers
from grpo.rewards.pool import default_workers

# ------------------------------------------------------------------------------ data
FORMS = [
    lambda f: f"\\frac{{{f.numerator}}}{{{f.denominator}}}",
    lambda f: f"{f.numerator}/{f.denominator}",
    lambda f: f"{float(f):.6g}" if f.denominator in (1, 2, 4, 5, 8, 10) else str(f),
    lambda f: f"\\dfrac{{{f.numerator}}}{{{f.denominator}}}",
    lambda f: f"{float(f) * 100:g}\\%" if f.denominator in (1, 2, 4, 5, 10) else str(f),
    lambda f: f"x = \\frac{{{f.numerator}}}{{{f.denominator}}}",
]


INT_FORMS = [str, lambda v: f"{v:,}", lambda v: f"{v}.0", lambda v: f"\\text{{{v} apples}}"]


def math_batch(n: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    """Half GSM8K-like (integer answers, written as 42, 1,234, 42.0, or with units), half
    MATH-like (fractions as \\frac, a/b, decimals, percentages, equations); 60% correct."""
    rng = random.Random(seed)
    completions, examples = [], []
    for g in range(max(1, n // 16)):
        integer = g % 2 == 0
        if integer:
            gold: int | Fraction = rng.randint(1, 5000)
        else:
            gold = Fraction(rng.randint(1, 60), rng.choice([2, 3, 4, 5, 6, 8, 10, 12]))
        for k in range(16):
            wrong = rng.random() >= 0.6
            if integer:
                value = gold + rng.randint(1, 99) if wrong else gold
                answer = rng.choice(INT_FORMS)(value)
            else:
                value = (
                    gold + Fraction(rng.randint(1, 99), rng.choice([1, 3, 7])) if wrong else gold
                )
                answer = rng.choice(FORMS)(value)
            steps = " ".join(
                f"Step {i}: we compute {rng.randint(2, 99)} * {rng.randint(2, 9)}."
                for i in range(12)
            )
            completions.append(
                f"<think>{steps} (try {g}-{k})</think> The answer is $\\boxed{{{answer}}}$."
            )
            gold_str = (
                f"#### {gold}"
                if integer
                else rng.choice([str(gold), f"\\frac{{{gold.numerator}}}{{{gold.denominator}}}"])
            )
            examples.append({"answer": gold_str})
    return completions[:n], examples[:n]


PROBLEMS = [  # (right body, buggy body, 5 tests)
    (
        "def add(a, b):\n    return a + b",
        "def add(a, b):\n    return a - b",
        [
            "assert add(1, 2) == 3",
            "assert add(0, 0) == 0",
            "assert add(-1, 1) == 0",
            "assert add(10, 5) == 15",
            "assert add(2, 2) == 4",
        ],
    ),
    (
        "def rev(s):\n    return s[::-1]",
        "def rev(s):\n    return s",
        [
            "assert rev('abc') == 'cba'",
            "assert rev('') == ''",
            "assert rev('a') == 'a'",
            "assert rev('ab') == 'ba'",
            "assert rev('racecar') == 'racecar'",
        ],
    ),
    (
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
        "def fib(n):\n    return n",
        [
            "assert fib(0) == 0",
            "assert fib(1) == 1",
            "assert fib(2) == 1",
            "assert fib(10) == 55",
            "assert fib(20) == 6765",
        ],
    ),
    (
        "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))",
        "def is_prime(n):\n    return n % 2 == 1",
        [
            "assert is_prime(2)",
            "assert is_prime(13)",
            "assert not is_prime(1)",
            "assert not is_prime(9)",
            "assert is_prime(97)",
        ],
    ),
]


def code_batch(n: int, seed: int = 0) -> tuple[list[str], list[dict]]:
    rng = random.Random(seed)
    completions, examples = [], []
    for i in range(n):
        right, buggy, tests = PROBLEMS[i % len(PROBLEMS)]
        body = right if rng.random() < 0.5 else buggy
        completions.append(f"<think>plan {i}</think>\n```python\n{body}\n```")
        examples.append({"tests": tests})
    return completions, examples


# ------------------------------------------------------------------------------ timing
def timed_batch(reward: Reward, make_batch, n: int, seed: int) -> float:
    """Seconds to score one fresh batch (its answers were never seen: no cache hits)."""
    completions, examples = make_batch(n, seed=seed)
    t = time.perf_counter()
    results = reward.score_batch(completions, examples)
    took = time.perf_counter() - t
    bad = [x for x in results if not x.scored]
    if bad:
        raise RuntimeError(f"{len(bad)} unscorable results, e.g. {bad[0]}")
    return took


def compare(pool_reward: Reward, seq_reward: Reward, make_batch, n: int, repeats: int):
    """(pool items/s, one-at-a-time items/s, pool batch s): medians over ``repeats``
    alternating runs, so that a change in the machine's load hits both sides alike."""
    pool_t, seq_t = [], []
    for r in range(repeats):
        pool_t.append(timed_batch(pool_reward, make_batch, n, seed=1000 * n + 2 * r))
        seq_t.append(timed_batch(seq_reward, make_batch, n, seed=1000 * n + 2 * r + 1))
    p, s = statistics.median(pool_t), statistics.median(seq_t)
    return n / p, n / s, p


def startup() -> None:
    ones = ([r"\boxed{1}"], [{"answer": "1"}])

    def timed_call(pool: ScoringPool) -> float:
        t = time.perf_counter()
        res = pool.map(MathReward(), ones[0] * pool.size, ones[1] * pool.size, time_limit=60)
        assert all(r.value == 1.0 for r in res), res
        return time.perf_counter() - t

    pool = ScoringPool()
    cold = timed_call(pool)
    warm = timed_call(pool)
    os.kill(pool.pids[0], 9)
    time.sleep(0.2)
    replace = timed_call(pool)
    pool.close()
    print(
        f"\npool start-up ({pool.size} workers, math-verify preloaded): first call {cold:.2f} s, "
        f"warm call {warm * 1000:.1f} ms, call that first replaces a dead worker {replace:.2f} s"
    )


def compare_code(sizes: list[int], repeats: int) -> None:
    """Code rows, per-run vs pre-forked sandbox path: per repeat, each path's pool batch, then
    each path's one-at-a-time batch, so that a change in load hits both paths alike."""
    paths = {"per-run": False, "pre-forked": True}
    rewards = {name: (CodeReward(prefork=pf), CodeReward(prefork=pf, parallel=False))
               for name, pf in paths.items()}
    for name, (pool_r, seq_r) in rewards.items():  # warm: workers' zygotes, the probe
        timed_batch(pool_r, code_batch, 8, seed=-1)
        timed_batch(seq_r, code_batch, 2, seed=-2)
    rates: dict[str, list[float]] = {}
    for n in sizes:
        times: dict[tuple[str, str], list[float]] = {}
        for r in range(repeats):
            for side in ("pool", "seq"):
                for name, pair in rewards.items():
                    reward = pair[0] if side == "pool" else pair[1]
                    took = timed_batch(reward, code_batch, n, seed=1000 * n + 2 * r)
                    times.setdefault((name, side), []).append(took)
        for name in paths:
            p, s = (statistics.median(times[name, side]) for side in ("pool", "seq"))
            rates.setdefault(name, []).append(n / p)
            print(f"| code, {name} (5 asserts) | {n} | {n / p:.1f} | {n / s:.1f} | "
                  f"{s / p:.2f}x | {p:.2f} |")
    ratios = [f / r for f, r in zip(rates["pre-forked"], rates["per-run"], strict=True)]
    print("\npre-forked / per-run pool throughput: "
          + ", ".join(f"{n}: {x:.1f}x" for n, x in zip(sizes, ratios, strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="batches of 64 and 256 only")
    ap.add_argument("--repeats", type=int, default=5, help="math batches per size and side")
    ap.add_argument("--code-repeats", type=int, default=1, help="code batches per size and side")
    ap.add_argument("--code-only", action="store_true", help="skip the math rows")
    args = ap.parse_args()
    sizes = [64, 256] if args.quick else [64, 128, 256, 512]
    print(
        f"cpus={os.cpu_count()} pool workers={default_workers()} "
        f"load average={os.getloadavg()[0]:.2f}\n"
        f"sandbox layers={','.join(sandbox_layers(prefork=True))}"
    )
    get_pool().start()
    math_pool, math_seq = MathReward(), MathReward(parallel=False)
    if not args.code_only:  # warm: imports, math-verify's grammar, sympy caches
        timed_batch(math_pool, math_batch, 64, seed=-1)
        timed_batch(math_seq, math_batch, 64, seed=-2)
    print(
        "\n| verifier | batch | pool (items/s) | one-at-a-time (items/s) | speed-up |"
        " pool batch time (s) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    if not args.code_only:
        for n in sizes:
            p, s, pt = compare(math_pool, math_seq, math_batch, n, args.repeats)
            print(f"| math | {n} | {p:.0f} | {s:.0f} | {p / s:.2f}x | {pt:.2f} |")
    compare_code(sizes, args.code_repeats)
    print(f"load average at the end={os.getloadavg()[0]:.2f}")
    if not args.code_only:
        startup()


if __name__ == "__main__":
    main()
