"""DAPO dynamic sampling on the R1-Zero CPU demo: held-out accuracy and wall time, with and
without, at fixed GRPO steps and at a fixed number of generated completions.

    .venv/bin/python benchmarks/bench_dynamic_sampling.py --seeds 0 1 2 --steps 150

For each seed the two runs (plain, --dynamic-sampling) start at the same time, one per core, so
that the machine's load falls on both alike. Evaluation every ``--eval-steps`` steps gives the
accuracy curve against completions generated (64 per generation round), from which the table
reads the dynamic run's accuracy at the plain run's total number of completions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPLETIONS_PER_ROUND = 64  # the demo: 8 prompts x G=8


def run_pair(seed: int, steps: int, eval_steps: int, out: Path) -> dict[str, Path]:
    procs, dirs = [], {}
    for tag, extra in (("plain", []), ("dynamic", ["--dynamic-sampling"])):
        d = out / f"{tag}_seed{seed}"
        dirs[tag] = d
        cmd = [sys.executable, str(ROOT / "examples" / "r1_zero_cpu.py"), "--seed", str(seed), "--steps", str(steps),
               "--eval-steps", str(eval_steps), "--output-dir", str(d), *extra]
        procs.append(subprocess.Popen(cmd, stdout=open(out / f"{tag}_seed{seed}.log", "w"), stderr=subprocess.STDOUT))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a demo run failed; see {out}/*.log")
    return dirs


def curve(run: Path) -> tuple[list[tuple[int, float]], dict[int, int], float]:
    """(step, greedy accuracy) evaluations, completions generated up to each step, GRPO seconds."""
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    done, total, seconds = {0: 0}, 0, 0.0
    for m in metrics:
        total += int(m.get("dynamic/rounds", 1)) * COMPLETIONS_PER_ROUND
        done[m["step"]] = total
        seconds += m["time/step"]
    return [(e["step"], e["eval/greedy_accuracy"]) for e in evals], done, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--eval-steps", type=int, default=25)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_dynamic_sampling"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in a.seeds:
        dirs = run_pair(seed, a.steps, a.eval_steps, a.out)
        (p_ev, p_done, p_sec), (d_ev, d_done, d_sec) = curve(dirs["plain"]), curve(dirs["dynamic"])
        budget = p_done[a.steps]
        # the dynamic run's last evaluation made within the plain run's completion budget
        within = [(s, acc) for s, acc in d_ev if d_done.get(s, 0) <= budget]
        rows.append(dict(seed=seed, plain_acc=p_ev[-1][1], dyn_acc=d_ev[-1][1], plain_s=p_sec, dyn_s=d_sec,
                         plain_completions=budget, dyn_completions=d_done[a.steps],
                         dyn_acc_at_budget=within[-1][1], dyn_step_at_budget=within[-1][0]))
    print(f"\n{a.steps} GRPO steps, greedy held-out accuracy (200 sums), GRPO wall time (s), completions generated")
    print("| seed | plain acc | DS acc (same steps) | plain s | DS s | plain completions | DS completions "
          "| DS acc at plain's completions (step) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['plain_acc']:.1%} | {r['dyn_acc']:.1%} | {r['plain_s']:.0f} | {r['dyn_s']:.0f} | "
              f"{r['plain_completions']} | {r['dyn_completions']} | {r['dyn_acc_at_budget']:.1%} "
              f"({r['dyn_step_at_budget']}) |")
    (a.out / "table.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
