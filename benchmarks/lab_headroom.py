"""The lab task's headroom: held-out greedy accuracy per level against GRPO steps.

    .venv/bin/python benchmarks/lab_headroom.py                       # budgets 0,50,150,300; seed 0
    .venv/bin/python benchmarks/lab_headroom.py --seeds 0,1 --budgets 0,100,200
    .venv/bin/python benchmarks/lab_headroom.py --sizes 128x2,192x3 --warmups 800,2400 --budgets 0,25,50,100,150,200

One run of ``examples/lab_cpu.py`` per seed, to the largest budget, evaluating every
gcd(budgets) steps: the accuracy after N steps is the run's evaluation at step N (a longer run
with the same seed passes through the same states, so one run gives every budget). Prints one
table, accuracy per level and overall at each budget (mean over seeds, and each seed's overall),
and writes it as JSON to ``--output-dir``/headroom.json. ``--reuse`` reads the runs already in
``--output-dir`` (a run cut off early gives the budgets it reached). A task has headroom when the overall
accuracy at the demo's budget (150 steps) is clearly below 100% and still rises with compute.

``--sizes WIDTHxDEPTH,...`` and ``--warmups STEPS,...`` repeat all of it per model size
(``examples/lab_cpu.py --hidden-size W --layers D``, heads of 32 dims; the lab's own model is
128x2, 0.55M) and warm-up length (``--warmup-steps``; the lab's is 800), each configuration's runs
in ``size<W>x<D>-warmup<N>/``: one table per configuration, and ``headroom.png``: accuracy against
GRPO steps per configuration, and each one's plateau (mean over the last half of the budget)
against its warm-up compute (parameters x warm-up sequences).
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


def _size(text: str) -> tuple[int, int]:
    width, _, depth = text.partition("x")
    return int(width), int(depth)


def _sizes(text: str) -> list[tuple[int, int]]:
    return [_size(x) for x in text.split(",") if x.strip()]


def print_table(rows: list[dict], levels: list[int], seeds: list[int]) -> None:
    head = ["steps", *(f"L{lv}" for lv in levels), "overall", *(f"seed {s}" for s in seeds)]
    print(" | ".join(f"{h:>8}" for h in head))
    for r in rows:
        cells = [f"{r['steps']:>8}", *(_pct(r[f"L{lv}"]) for lv in levels), _pct(r["overall"], 1),
                 *(_pct(r["per_seed"].get(s), 1) for s in seeds)]
        print(" | ".join(cells))


def run_facts(run: Path) -> dict:
    """Parameters and seconds of one finished lab run (its summary.json)."""
    summary = run / "summary.json"
    if not summary.exists():
        return {}
    s = json.loads(summary.read_text())
    keys = ("parameters", "seconds_warmup", "seconds_total")
    return {k: s[k] for k in keys if k in s}


WARMUP_BATCH = 64  # sequences per warm-up step (grpo.recipes.tiny_task.warmup_sft's batch_size)


def plot(results: dict[str, dict], levels: list[int], path: Path) -> None:
    """Left: held-out greedy accuracy against GRPO steps, one line per configuration (model size,
    warm-up steps; mean over seeds, markers: each seed). Right: each configuration's plateau (mean
    over the last half of the budget) against its warm-up compute, parameters x warm-up
    sequences (x 6 x tokens per sequence would be FLOPs), a line per model size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    by_size: dict[str, list[tuple[float, float, str]]] = {}
    for i, (name, r) in enumerate(results.items()):
        color = f"C{i}"
        steps = [row["steps"] for row in r["rows"] if row["overall"] is not None]
        acc = [row["overall"] for row in r["rows"] if row["overall"] is not None]
        label = f"{name}, {r['parameters'] / 1e6:.2f}M" if r.get("parameters") else name
        ax.plot(steps, acc, color=color, lw=1.8, label=label)
        for row in r["rows"]:
            for value in row["per_seed"].values():
                ax.plot(row["steps"], value, marker="o", mfc="none", color=color, alpha=0.5)
        if r.get("parameters") and r.get("plateau") is not None:
            compute = r["parameters"] * r["warmup_steps"] * WARMUP_BATCH
            by_size.setdefault(r["size"], []).append((compute, r["plateau"], color))
    for size, points in by_size.items():
        points.sort()
        bx.plot([p[0] for p in points], [p[1] for p in points], color="0.5", lw=1, zorder=0)
        for compute, plateau, color in points:
            bx.plot(compute, plateau, marker="o", color=color, ms=8)
        bx.annotate(size, (points[-1][0], points[-1][1]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("GRPO steps (after the warm-up)")
    ax.set_ylabel(f"held-out greedy accuracy (levels {','.join(map(str, levels))})")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    bx.set_xscale("log")
    bx.set_xlabel("warm-up compute: parameters x warm-up sequences (log)")
    bx.set_ylabel("GRPO plateau (mean, last half of the budget)")
    bx.set_ylim(-0.03, 1.03)
    bx.grid(alpha=0.3)
    fig.suptitle("Lab task headroom: the same GRPO recipe after warm-ups of different compute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", type=_ints, default=[0, 50, 150, 300], help="GRPO steps (default 0,50,150,300)")
    ap.add_argument("--seeds", type=_ints, default=[0])
    ap.add_argument("--levels", type=_ints, default=[1, 2, 3, 4])
    ap.add_argument("--sizes", type=_sizes, default=None,
                    help="model sizes WIDTHxDEPTH, comma-separated (e.g. 128x2,192x3; default: the lab's 128x2)")
    ap.add_argument("--warmups", type=_ints, default=None,
                    help="warm-up steps, comma-separated (e.g. 800,2400; default: the lab's 800)")
    ap.add_argument("--output-dir", default="runs/lab_headroom")
    ap.add_argument("--reuse", action="store_true", help="read the existing seed<N>/eval.jsonl instead of running (configurations without one are left out)")
    ap.add_argument("extra", nargs="*", help="more lab_cpu.py flags, after --")
    a = ap.parse_args()
    out = Path(a.output_dir)
    grid = a.sizes is not None or a.warmups is not None
    clash = {"--hidden-size", "--layers", "--warmup-steps", "--start-model"} & set(a.extra)
    if grid and clash:
        ap.error(f"--sizes / --warmups set the model and its warm-up per run; drop {', '.join(sorted(clash))} after --")
    configs = [((w, d), n) for w, d in a.sizes or [(128, 2)] for n in a.warmups or [800]]
    results = {}
    for (width, depth), warmup in configs:
        name = f"{width}x{depth}, warm-up {warmup}" if grid else ""
        folder = out / f"size{width}x{depth}-warmup{warmup}" if grid else out
        flags = ["--hidden-size", str(width), "--layers", str(depth), "--warmup-steps", str(warmup)] if grid else []
        if a.reuse:
            seeds = [seed for seed in a.seeds if (folder / f"seed{seed}" / "eval.jsonl").exists()]
            if not seeds:
                print(f"\n{name or 'lab'}: no runs in {folder} (--reuse runs nothing), left out")
                continue
        else:
            seeds = a.seeds
            for seed in seeds:
                run_seed(seed, a.budgets, a.levels, folder, [*flags, *a.extra])
        curves = {seed: curve(folder / f"seed{seed}", a.levels) for seed in seeds}
        rows = table(curves, a.budgets, a.levels)
        late = [r["overall"] for r in rows if r["steps"] > max(a.budgets) / 2 and r["overall"] is not None]
        facts = run_facts(folder / f"seed{seeds[0]}")
        # without --sizes / --warmups the model and warm-up are lab_cpu.py's (or the flags after --)
        results[name or "lab"] = {"size": f"{width}x{depth}" if grid else None,
                                  "warmup_steps": warmup if grid else None, "rows": rows,
                                  "plateau": sum(late) / len(late) if late else None, **facts}
        model = f", model {name}" if name else ""
        if "parameters" in facts:
            model += f" ({facts['parameters'] / 1e6:.2f}M parameters, warm-up {facts['seconds_warmup']:.0f} s)"
        print(f"\nheld-out greedy accuracy{model} (mean over the seeds that reached the budget; - : none did)")
        print_table(rows, a.levels, seeds)
    (out / "headroom.json").write_text(json.dumps({"budgets": a.budgets, "results": results}, indent=1))
    if grid:
        print("\nplateau (mean held-out greedy accuracy over the last half of the budget):")
        for name, r in results.items():
            print(f"  {name:>24}: {_pct(r['plateau'], 1).strip()}")
        plot(results, a.levels, out / "headroom.png")
        print(f"\nplot: {out / 'headroom.png'}")

if __name__ == "__main__":
    main()
