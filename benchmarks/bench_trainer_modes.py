"""The R1-Zero CPU demo in three trainer modes: synchronous (plain), DAPO dynamic sampling, and
asynchronous rollouts with staleness 1. Held-out greedy accuracy and GRPO wall time.

    .venv/bin/python benchmarks/bench_trainer_modes.py --seeds 0 1 2 --steps 150

Per seed the plain run does the warm-up; the other two start GRPO from its warm-up model, one
run at a time (the asynchronous run needs both cores: learner and generator process). The
tables read, from evaluations every ``--eval-steps`` steps:

* dynamic sampling: accuracy at equal steps, and at equal generated completions (the dynamic
  run's last evaluation within the plain run's total; 64 completions per generation round);
* asynchronous: accuracy at equal steps, and the wall time each run took to first reach the
  plain run's final accuracy (GRPO time, summed ``time/step``, up to that evaluation).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPLETIONS_PER_ROUND = 64  # the demo: 8 prompts x G=8


def run(out: Path, tag: str, seed: int, a, *extra: str) -> Path:
    d = out / f"{tag}_seed{seed}"
    cmd = [sys.executable, str(ROOT / "examples" / "r1_zero_cpu.py"), "--seed", str(seed), "--steps", str(a.steps),
           "--eval-steps", str(a.eval_steps), "--output-dir", str(d), *extra]
    with open(out / f"{tag}_seed{seed}.log", "w") as log:
        if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"{tag} seed {seed} failed: see {out}/{tag}_seed{seed}.log")
    return d


def curve(run_dir: Path) -> list[dict]:
    """Per evaluation: step, greedy accuracy, completions generated and GRPO seconds so far."""
    evals = [json.loads(x) for x in (run_dir / "eval.jsonl").read_text().splitlines()]
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    done, seconds, t = {0: (0, 0.0)}, 0, 0.0
    for m in metrics:
        seconds += int(m.get("dynamic/rounds", 1)) * COMPLETIONS_PER_ROUND
        t += m["time/step"]
        done[m["step"]] = (seconds, t)
    return [{"step": e["step"], "acc": e["eval/greedy_accuracy"], "completions": done[e["step"]][0],
             "seconds": done[e["step"]][1]} for e in evals]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--eval-steps", type=int, default=25)
    ap.add_argument("--modes", nargs="+", default=["dynamic", "async"], choices=["dynamic", "async"])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_trainer_modes"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in a.seeds:
        plain = run(a.out, "plain", seed, a)
        start = ["--start-model", str(plain / "warmup_model")]
        row = {"seed": seed, "plain": curve(plain)}
        if "dynamic" in a.modes:
            row["dynamic"] = curve(run(a.out, "dynamic", seed, a, *start, "--dynamic-sampling"))
        if "async" in a.modes:
            row["async"] = curve(run(a.out, "async", seed, a, *start, "--async-staleness", "1"))
        results.append(row)
        (a.out / "results.json").write_text(json.dumps(results, indent=1))
    print_tables(results)


def first_reaching(c: list[dict], target: float) -> float | None:
    return next((e["seconds"] for e in c if e["acc"] >= target), None)


def print_tables(results: list[dict]) -> None:
    if all("dynamic" in r for r in results):
        print("\nDAPO dynamic sampling vs plain (greedy held-out accuracy, GRPO seconds, completions)")
        print("| seed | plain acc | DS acc, same steps | plain s | DS s | plain completions | DS completions "
              "| DS acc at plain's completions (step) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results:
            p, d = r["plain"], r["dynamic"]
            within = [e for e in d if e["completions"] <= p[-1]["completions"]][-1]
            print(f"| {r['seed']} | {p[-1]['acc']:.1%} | {d[-1]['acc']:.1%} | {p[-1]['seconds']:.0f} | "
                  f"{d[-1]['seconds']:.0f} | {p[-1]['completions']} | {d[-1]['completions']} | "
                  f"{within['acc']:.1%} ({within['step']}) |")
    if all("async" in r for r in results):
        print("\nasynchronous (staleness 1) vs synchronous")
        print("| seed | sync acc | async acc, same steps | sync s | async s | speed-up | "
              "async s to reach sync's final acc |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            p, q = r["plain"], r["async"]
            reach = first_reaching(q, p[-1]["acc"])
            print(f"| {r['seed']} | {p[-1]['acc']:.1%} | {q[-1]['acc']:.1%} | {p[-1]['seconds']:.0f} | "
                  f"{q[-1]['seconds']:.0f} | {p[-1]['seconds'] / q[-1]['seconds']:.2f}x | "
                  f"{'not reached' if reach is None else f'{reach:.0f}'} |")


if __name__ == "__main__":
    main()
