"""Synchronous vs asynchronous rollouts (``async.staleness=1``) on two CPU demos: wall time to the
synchronous run's final held-out accuracy, and where the time of an asynchronous step goes.

    .venv/bin/python benchmarks/bench_async.py --settings tool_use r1_zero --seeds 0 1 2
    .venv/bin/python benchmarks/bench_async.py --quick          # one seed, a few steps

Settings (each an example script run as a subprocess, one run at a time):

* ``tool_use`` (examples/tool_use_cpu.py): multi-turn tool use; every trajectory waits on a
  sandboxed Python interpreter (a fresh process per call) between its turns, so generation is
  most of a synchronous step: the case asynchrony is for;
* ``r1_zero`` (examples/r1_zero_cpu.py): single-turn, 40-token completions; generation and
  training take about the same time, so the overlap can at best halve a step, and the
  hand-offs between processes weigh most.

Per seed the warm-up runs once (``--cache``, outside the repository, kept between invocations);
the synchronous and the asynchronous run both start GRPO from that saved model. Both evaluate the
held-out set every ``--eval-steps`` steps through the trainer (greedy accuracy). "GRPO s" is the
sum of ``time/step`` (evaluations excluded). An evaluation lets the producer finish the next
step's generation while the learner is not waiting for it, so the step after an evaluation gets
its batch for free; the asynchronous seconds are corrected for that (that step's
``async/learner_idle`` replaced by the run's mean over the other steps; the raw sum is in the
JSON). Both sums are wall seconds of the learner's loop, so they include everything that slows
it down: other jobs on the machine too (the load average is recorded before each run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # script, GRPO steps, evaluation interval
    "tool_use": ("tool_use_cpu.py", 60, 10),
    "r1_zero": ("r1_zero_cpu.py", 150, 25),
}
QUICK = {"tool_use": (6, 3), "r1_zero": (10, 5)}
TIME_KEYS = ("collect", "generate", "score", "logprobs", "score_wait", "train", "sync", "step")


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n  see {log}")


def warm_model(setting: str, seed: int, cache: Path) -> Path:
    """The seed's warm-up model, made once (a 1-step run of the example that keeps it)."""
    d = cache / f"{setting}_seed{seed}"
    model = d / "model" if setting == "tool_use" else d / "run" / "warmup_model"
    if not (model / "config.json").exists():
        d.mkdir(parents=True, exist_ok=True)
        script = ROOT / "examples" / SETTINGS[setting][0]
        cmd = [sys.executable, str(script), "--seed", str(seed), "--steps", "1", "--output-dir", str(d / "run")]
        if setting == "tool_use":
            cmd += ["--save-warmup", str(model)]
        print(f"[warm-up] {setting} seed {seed}", flush=True)
        _run(cmd, d / "warmup.log")
    return model


def grpo_run(setting: str, seed: int, staleness: int, start: Path, out: Path, steps: int, eval_steps: int) -> dict:
    """One GRPO run from ``start``; its evaluation curve, per-step metrics and the load average."""
    d = out / f"{setting}_seed{seed}_{'async' if staleness else 'sync'}"
    script = ROOT / "examples" / SETTINGS[setting][0]
    cmd = [sys.executable, str(script), "--seed", str(seed), "--steps", str(steps), "--eval-steps",
           str(eval_steps), "--start-model", str(start), "--output-dir", str(d),
           "--async-staleness", str(staleness)]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    print(f"[run] {setting} seed {seed} staleness {staleness} (load {load_before:.1f})", flush=True)
    _run(cmd, out / f"{d.name}.log")
    read = lambda name: [json.loads(x) for x in (d / name).read_text().splitlines() if x.strip()]  # noqa: E731
    return {"evals": [{"step": e["step"], "acc": e["eval/greedy_accuracy"]} for e in read("eval.jsonl")],
            "metrics": [{k: v for k, v in m.items() if k == "step" or k.startswith(("time/", "async/"))}
                        for m in read("metrics.jsonl")],
            "load_before": load_before, "load_after": os.getloadavg()[0],
            "wall_s": time.perf_counter() - t0}


def step_seconds(r: dict) -> dict[int, float]:
    """Each step's seconds; an asynchronous step right after a mid-run evaluation gets the run's
    usual learner wait added back (the producer generated it during the evaluation)."""
    eval_steps = {e["step"] for e in r["evals"]}
    last = max(m["step"] for m in r["metrics"])
    after_eval = {s + 1 for s in eval_steps if 0 < s < last}
    secs = {m["step"]: m["time/step"] for m in r["metrics"]}
    if "async/learner_idle" in r["metrics"][0]:
        usual = mean(m["async/learner_idle"] for m in r["metrics"] if m["step"] not in after_eval | {1})
        for m in r["metrics"]:
            if m["step"] in after_eval:
                secs[m["step"]] += max(0.0, usual - m["async/learner_idle"])
    return secs


def seconds_to(r: dict, target: float) -> float | None:
    """GRPO seconds up to the first evaluation at or above ``target`` (None: never)."""
    secs = step_seconds(r)
    for e in r["evals"]:
        if e["acc"] >= target - 1e-9:
            return sum(v for s, v in secs.items() if s <= e["step"])
    return None


def summarize(sync: dict, asyn: dict) -> dict:
    target = sync["evals"][-1]["acc"]
    s_sync = sum(m["time/step"] for m in sync["metrics"])
    s_async = sum(step_seconds(asyn).values())
    am = asyn["metrics"]
    return {
        "acc_sync": target, "acc_async": asyn["evals"][-1]["acc"],
        "s_sync": s_sync, "s_async": s_async, "s_async_raw": sum(m["time/step"] for m in am),
        "speedup": s_sync / s_async,
        "reach_sync": seconds_to(sync, target), "reach_async": seconds_to(asyn, target),
        "reach_async_3pt": seconds_to(asyn, target - 0.03),
        "staleness": mean(m["async/staleness_mean"] for m in am),
        "learner_idle": mean(m["async/learner_idle"] for m in am),
        "generator_idle": mean(m["async/generator_idle"] for m in am),
        "load": (sync["load_before"], asyn["load_before"], asyn["load_after"]),
        "per_step": {mode: {k: mean(m.get(f"time/{k}", 0.0) for m in r["metrics"]) for k in TIME_KEYS}
                     for mode, r in (("sync", sync), ("async", asyn))},
    }


def _s(x: float | None) -> str:
    return "not reached" if x is None else f"{x:.1f}"


def print_tables(rows: list[dict]) -> None:
    for setting in dict.fromkeys(r["setting"] for r in rows):
        print(f"\n### {setting}: synchronous vs async.staleness=1\n")
        print("| seed | held-out acc. sync / async | GRPO s sync / async | speed-up | s to sync's final acc. "
              "sync / async (async within 3 pts) | mean staleness | learner idle s/step | generator idle s/step "
              "| load avg. (sync start, async start, async end) |")
        print("|---|---|---|---:|---|---:|---:|---:|---|")
        for r in (r for r in rows if r["setting"] == setting):
            x = r["summary"]
            print(f"| {r['seed']} | {x['acc_sync']:.1%} / {x['acc_async']:.1%} | {x['s_sync']:.1f} / "
                  f"{x['s_async']:.1f} | **{x['speedup']:.2f}x** | {_s(x['reach_sync'])} / {_s(x['reach_async'])} "
                  f"({_s(x['reach_async_3pt'])}) | {x['staleness']:.2f} | {x['learner_idle']:.3f} | "
                  f"{x['generator_idle']:.3f} | {' / '.join(f'{v:.1f}' for v in x['load'])} |")
        print(f"\nWhere the time goes ({setting}, seconds per step, mean over steps and seeds; "
              "async collect = the learner's wait for rollouts, async sync = the weight push, "
              "which first waits for the generate call in flight):\n")
        print("| mode | " + " | ".join(TIME_KEYS) + " | learner idle | generator idle |")
        print("|---|" + "---:|" * (len(TIME_KEYS) + 2))
        mine = [r["summary"] for r in rows if r["setting"] == setting]
        for mode in ("sync", "async"):
            vals = [mean(x["per_step"][mode][k] for x in mine) for k in TIME_KEYS]
            idle = (f"{mean(x['learner_idle'] for x in mine):.3f} | {mean(x['generator_idle'] for x in mine):.3f}"
                    if mode == "async" else "- | -")
            print(f"| {mode} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {idle} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["tool_use", "r1_zero"], choices=sorted(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "grpo_bench_async",
                    help="warm-up models, one per setting and seed (kept between invocations)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_async"))
    ap.add_argument("--quick", action="store_true", help="seed 0, a few GRPO steps (the warm-up is the real one)")
    ap.add_argument("--table-only", action="store_true", help="print the tables of --out/results.json")
    a = ap.parse_args()
    if a.quick:
        a.seeds = a.seeds[:1]
    a.out.mkdir(parents=True, exist_ok=True)
    if a.table_only:
        print_tables(json.loads((a.out / "results.json").read_text()))
        return
    rows = []
    for setting in a.settings:
        steps, eval_steps = QUICK[setting] if a.quick else SETTINGS[setting][1:]
        for seed in a.seeds:
            start = warm_model(setting, seed, a.cache)
            runs = {k: grpo_run(setting, seed, k, start, a.out, steps, eval_steps) for k in (0, 1)}
            rows.append({"setting": setting, "seed": seed, "steps": steps, "eval_steps": eval_steps,
                         "sync": runs[0], "async": runs[1], "summary": summarize(runs[0], runs[1])})
            (a.out / "results.json").write_text(json.dumps(rows, indent=1))
    print_tables(rows)


if __name__ == "__main__":
    main()
