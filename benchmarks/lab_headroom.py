"""The lab task's headroom: held-out greedy accuracy per level against GRPO steps.

    .venv/bin/python benchmarks/lab_headroom.py                       # budgets 0,50,150,300; seed 0
    .venv/bin/python benchmarks/lab_headroom.py --seeds 0,1 --budgets 0,100,200

One run of ``examples/lab_cpu.py`` per seed, to the largest budget, evaluating every
gcd(budgets) steps: the accuracy after N steps is the run's evaluation at step N (a longer run
with the same seed passes through the same states, so one run gives every budget). Prints one
table, accuracy per level and overall at each budget (mean over seeds, and each seed's overall),
and writes it as JSON to ``--output-dir``/headroom.json. A task has headroom when the overall
accuracy at the demo's budget (150 steps) is clearly below 100% and still rises with steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from functools import reduce
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def run_seed(seed: int, budgets: list[int], levels: list[int], out: Path, extra: list[str]) -> dict:
    every = reduce(math.gcd, [b for b in budgets if b]) if any(budgets) else 1
    run = out / f"seed{seed}"
    cmd = [sys.executable, str(ROOT / "examples" / "lab_cpu.py"), "--seed", str(seed),
           "--steps", str(max(budgets)), "--eval-steps", str(every),
           "--levels", ",".join(map(str, levels)), "--output-dir", str(run), *extra]
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(cmd, check=True, env=env)
    return json.loads((run / "summary.json").read_text())


def table(summaries: dict[int, dict], budgets: list[int], levels: list[int]) -> list[dict]:
    rows = []
    for b in budgets:
        points = {s: next((p for p in sm["curve"] if p["step"] == b), None) for s, sm in summaries.items()}
        missing = [s for s, p in points.items() if p is None]
        if missing:
            raise SystemExit(f"no evaluation at step {b} in seed(s) {missing}: the budgets must be "
                             f"multiples of the evaluation interval")
        row = {"steps": b}
        for lv in levels:
            row[f"L{lv}"] = sum(p["by_level"][str(lv)] for p in points.values()) / len(points)
        row["overall"] = sum(p["greedy_accuracy"] for p in points.values()) / len(points)
        row["per_seed"] = {s: p["greedy_accuracy"] for s, p in points.items()}
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", type=_ints, default=[0, 50, 150, 300], help="GRPO steps (default 0,50,150,300)")
    ap.add_argument("--seeds", type=_ints, default=[0])
    ap.add_argument("--levels", type=_ints, default=[1, 2, 3, 4])
    ap.add_argument("--output-dir", default="runs/lab_headroom")
    ap.add_argument("--reuse", action="store_true", help="read existing seed<N>/summary.json instead of running")
    ap.add_argument("extra", nargs="*", help="more lab_cpu.py flags, after --")
    a = ap.parse_args()
    out = Path(a.output_dir)
    summaries = {}
    for seed in a.seeds:
        found = out / f"seed{seed}" / "summary.json"
        summaries[seed] = (json.loads(found.read_text()) if a.reuse and found.exists()
                           else run_seed(seed, a.budgets, a.levels, out, a.extra))
    rows = table(summaries, a.budgets, a.levels)
    head = ["steps", *(f"L{lv}" for lv in a.levels), "overall", *(f"seed {s}" for s in a.seeds)]
    print("\nheld-out greedy accuracy (50 problems per level; mean over seeds)")
    print(" | ".join(f"{h:>8}" for h in head))
    for r in rows:
        cells = [f"{r['steps']:>8}", *(f"{r[f'L{lv}']:>8.0%}" for lv in a.levels), f"{r['overall']:>8.1%}",
                 *(f"{r['per_seed'][s]:>8.1%}" for s in a.seeds)]
        print(" | ".join(cells))
    secs = {s: sm["seconds_total"] for s, sm in summaries.items()}
    print(f"seconds per run (warm-up + GRPO + evals): {secs}")
    (out / "headroom.json").write_text(json.dumps({"budgets": a.budgets, "rows": rows, "seconds": secs}, indent=1))


if __name__ == "__main__":
    main()
