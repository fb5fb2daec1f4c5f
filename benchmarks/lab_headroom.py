"""The lab task's headroom: held-out greedy accuracy per level against GRPO steps.

    .venv/bin/python benchmarks/lab_headroom.py                       # budgets 0,50,150,300; seed 0
    .venv/bin/python benchmarks/lab_headroom.py --seeds 0,1 --budgets 0,100,200

One run of ``examples/lab_cpu.py`` per seed, to the largest budget, evaluating every
gcd(budgets) steps: the accuracy after N steps is the run's evaluation at step N (a longer run
with the same seed passes through the same states, so one run gives every budget). Prints one
table, accuracy per level and overall at each budget (mean over seeds, and each seed's overall),
and writes it as JSON to ``--output-dir``/headroom.json. ``--reuse`` reads the runs already in
``--output-dir`` (a run cut off early gives the budgets it reached). A task has headroom when the overall
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


def run_seed(seed: int, budgets: list[int], levels: list[int], out: Path, extra: list[str]) -> None:
    every = reduce(math.gcd, [b for b in budgets if b]) if any(budgets) else 1
    cmd = [sys.executable, str(ROOT / "examples" / "lab_cpu.py"), "--seed", str(seed),
           "--steps", str(max(budgets)), "--eval-steps", str(every),
           "--levels", ",".join(map(str, levels)), "--output-dir", str(out / f"seed{seed}"), *extra]
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(cmd, check=True, env=env)


def curve(run: Path, levels: list[int]) -> dict[int, dict]:
    """step -> {"overall", "L<n>"...}: the run's evaluations (eval.jsonl; a run cut off early
    gives the steps it reached)."""
    points = {}
    for line in (run / "eval.jsonl").read_text().splitlines():
        ev = json.loads(line)
        points[ev["step"]] = {"overall": ev["eval/greedy_accuracy"],
                              **{f"L{lv}": ev[f"eval/greedy_accuracy/level={lv}"] for lv in levels}}
    return points


def table(curves: dict[int, dict], budgets: list[int], levels: list[int]) -> list[dict]:
    """One row per budget: the mean over the seeds that reached it (None when none did)."""
    rows = []
    for b in budgets:
        reached = {s: c[b] for s, c in curves.items() if b in c}
        row: dict = {"steps": b, "seeds": sorted(reached)}
        for key in [*(f"L{lv}" for lv in levels), "overall"]:
            row[key] = sum(p[key] for p in reached.values()) / len(reached) if reached else None
        row["per_seed"] = {s: p["overall"] for s, p in reached.items()}
        rows.append(row)
    return rows


def _pct(x: float | None, digits: int = 0) -> str:
    return f"{'-':>8}" if x is None else f"{x:>8.{digits}%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", type=_ints, default=[0, 50, 150, 300], help="GRPO steps (default 0,50,150,300)")
    ap.add_argument("--seeds", type=_ints, default=[0])
    ap.add_argument("--levels", type=_ints, default=[1, 2, 3, 4])
    ap.add_argument("--output-dir", default="runs/lab_headroom")
    ap.add_argument("--reuse", action="store_true", help="read existing seed<N>/eval.jsonl instead of running")
    ap.add_argument("extra", nargs="*", help="more lab_cpu.py flags, after --")
    a = ap.parse_args()
    out = Path(a.output_dir)
    for seed in a.seeds:
        if not (a.reuse and (out / f"seed{seed}" / "eval.jsonl").exists()):
            run_seed(seed, a.budgets, a.levels, out, a.extra)
    curves = {seed: curve(out / f"seed{seed}", a.levels) for seed in a.seeds}
    rows = table(curves, a.budgets, a.levels)
    head = ["steps", *(f"L{lv}" for lv in a.levels), "overall", *(f"seed {s}" for s in a.seeds)]
    print("\nheld-out greedy accuracy (mean over the seeds that reached the budget; - : none did)")
    print(" | ".join(f"{h:>8}" for h in head))
    for r in rows:
        cells = [f"{r['steps']:>8}", *(_pct(r[f"L{lv}"]) for lv in a.levels), _pct(r["overall"], 1),
                 *(_pct(r["per_seed"].get(s), 1) for s in a.seeds)]
        print(" | ".join(cells))
    (out / "headroom.json").write_text(json.dumps({"budgets": a.budgets, "rows": rows}, indent=1))

if __name__ == "__main__":
    main()
