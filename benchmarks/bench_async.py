"""Synchronous vs asynchronous rollouts (``async.staleness=1``) on two CPU demos: wall time to the
synchronous run's final held-out accuracy, and where the time of an asynchronous step goes.

    .venv/bin/python benchmarks/bench_async.py --settings tool_use r1_zero --seeds 0 1 2
    .venv/bin/python benchmarks/bench_async.py --quick          # one seed, a few steps
    .venv/bin/python benchmarks/bench_async.py --profile r1_zero --steps 60   # the hand-offs

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

``--profile SETTING`` runs one asynchronous run (seed 0's warm-up model) with timers around
each hand-off between the learner, the producer thread and the generator process, and prints
their means per step: the weight push (waiting for the generator's lock, then the copy into the
shared buffers), the pipe (pickling the request, waiting for the answer, unpickling it; the
child's own sampling time measured in the child), the producer's work after sampling (scoring,
advantages) and the queue (from a step's batch being ready to the learner taking it).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import runpy
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
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


def after_eval(r: dict) -> set[int]:
    """The steps that follow a mid-run evaluation."""
    last = max(m["step"] for m in r["metrics"])
    return {e["step"] + 1 for e in r["evals"] if 0 < e["step"] < last}


def steady(r: dict) -> list[dict]:
    """The per-step metrics of the steady state: not the first step (nothing to overlap with
    yet) nor a step right after an evaluation (the producer ran on while the learner evaluated,
    or waited for the evaluation to release the generator)."""
    skip = {1} | {s + k for s in after_eval(r) for k in (0, 1)}  # the producer's wait lands on e + 2
    return [m for m in r["metrics"] if m["step"] not in skip] or r["metrics"]


def step_seconds(r: dict) -> dict[int, float]:
    """Each step's seconds; an asynchronous step right after a mid-run evaluation gets the run's
    usual learner wait added back (the producer generated it during the evaluation)."""
    secs = {m["step"]: m["time/step"] for m in r["metrics"]}
    if "async/learner_idle" in r["metrics"][0]:
        usual = mean(m["async/learner_idle"] for m in steady(r))
        for m in r["metrics"]:
            if m["step"] in after_eval(r):
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
        # the steady state: per-step means without the first step and the steps after evaluations
        "per_step": {mode: {k: mean(m.get(f"time/{k}", 0.0) for m in steady(r)) for k in TIME_KEYS}
                     for mode, r in (("sync", sync), ("async", asyn))},
        "steady_learner_idle": mean(m["async/learner_idle"] for m in steady(asyn)),
        "steady_generator_idle": mean(m["async/generator_idle"] for m in steady(asyn)),
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
        print(f"\nWhere the time goes ({setting}, seconds per step, mean over seeds of the steady state: "
              "the first step and the steps right after an evaluation left out; "
              "async collect = the learner's wait for rollouts, async sync = the weight push, "
              "which first waits for the generate call in flight):\n")
        print("| mode | " + " | ".join(TIME_KEYS) + " | learner idle | generator idle |")
        print("|---|" + "---:|" * (len(TIME_KEYS) + 2))
        mine = [r["summary"] for r in rows if r["setting"] == setting]
        for mode in ("sync", "async"):
            vals = [mean(x["per_step"][mode][k] for x in mine) for k in TIME_KEYS]
            idle = (f"{mean(x['steady_learner_idle'] for x in mine):.3f} | "
                    f"{mean(x['steady_generator_idle'] for x in mine):.3f}"
                    if mode == "async" else "- | -")
            print(f"| {mode} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {idle} |")


# ---------------------------------------------------------------------------------- profiling
_TIMES: dict[str, list[float]] = defaultdict(list)


def _record(name: str, seconds: float) -> None:
    _TIMES[name].append(seconds)


def profiled_serve(*args, **kwargs) -> None:
    """The generator process's loop, with its sampling timed (each call's seconds written to
    ``GRPO_BENCH_PROFILE``.child as soon as it ends: the child exits without atexit)."""
    from grpo.rollout import engines, hf
    from grpo.rollout.process_child import serve

    if os.environ.get("GRPO_BENCH_OWN_SESSION"):  # --own-session: a scheduling group of its own
        os.setsid()
    out = open(os.environ["GRPO_BENCH_PROFILE"] + ".child", "a", buffering=1)

    def timed(cls, name):
        original = getattr(cls, name)

        def wrapper(self, *a, **k):
            t0 = time.perf_counter()
            try:
                return original(self, *a, **k)
            finally:
                out.write(f"{time.perf_counter() - t0}\n")
        setattr(cls, name, wrapper)

    timed(hf.HFGenerator, "generate")
    timed(engines.HFEngine, "sample")
    serve(*args, **kwargs)


class _TimedQueue(deque):
    """The producer's queue, noting when each step's batch was appended and when it was taken."""

    def __init__(self):
        super().__init__()
        self.ready: deque[float] = deque()

    def append(self, item):
        self.ready.append(time.perf_counter())
        super().append(item)

    def popleft(self):
        _record("queue: batch ready -> learner takes it", time.perf_counter() - self.ready.popleft())
        return super().popleft()


def _install_profile() -> None:
    """Timers around the hand-offs of the asynchronous path (parent side)."""
    from grpo import async_source
    from grpo.rollout import process

    process.serve = profiled_serve  # the child runs the timed loop (pickled by reference)

    def push(self, model, version):
        t0 = time.perf_counter()
        with self._lock:
            t1 = time.perf_counter()
            self.inner.sync_weights(model)
            self.version = version
        _record("push: wait for the generator lock", t1 - t0)
        _record("push: copy into the shared buffers", time.perf_counter() - t1)

    def generate(self, prompts, n, sampling, **kwargs):
        from dataclasses import replace

        t0 = time.perf_counter()
        with self._lock:
            if threading.current_thread().name == "grpo-rollout-producer":  # not an evaluation
                _record("producer: wait for the generator lock", time.perf_counter() - t0)
            version = self.version
            out = self.inner.generate(prompts, n, sampling, **kwargs)
        return [replace(r, policy_version=version) for r in out]

    def call(self, message, what):
        with self._calls:
            self._check_alive()
            t0 = time.perf_counter()
            self._conn.send(message)
            t1 = time.perf_counter()
            self._conn.poll(self.timeout)
            t2 = time.perf_counter()
            answer = self._receive(self.timeout, what)
            t3 = time.perf_counter()
        if message[0] in ("generate", "sample"):  # the evaluations' calls left out below
            training = threading.current_thread().name == "grpo-rollout-producer"
            _record("_training", float(training))
        if message[0] in ("generate", "sample") and training:
            _record("pipe: pickle + send the request", t1 - t0)
            _record("pipe: wait for the answer", t2 - t1)
            _record("pipe: receive + unpickle the answer", t3 - t2)
        return answer

    init = async_source.AsyncRolloutSource.__init__

    def source_init(self, *a, **k):
        init(self, *a, **k)
        self._queue = _TimedQueue()

    inner_collect = async_source.RolloutSource.collect

    def producer_collect(self, step):
        t0 = time.perf_counter()
        collected = inner_collect(self, step)
        scored = collected.result()
        _record("producer: whole step (sample, score, advantages)", time.perf_counter() - t0)
        return type(collected)(collected.rollouts, lambda: scored)

    async_source.AsyncGenerator.push = push
    async_source.AsyncGenerator.generate = generate
    async_source.AsyncRolloutSource.__init__ = source_init
    async_source.RolloutSource.collect = producer_collect
    process.ProcessGenerator._call = call

    def dump():
        with open(os.environ["GRPO_BENCH_PROFILE"], "w") as f:
            json.dump(_TIMES, f)
    atexit.register(dump)


def profile(setting: str, cache: Path, out: Path, steps: int) -> None:
    """One asynchronous run of ``setting`` (seed 0) with the hand-offs timed; prints a table."""
    start = warm_model(setting, 0, cache)
    out.mkdir(parents=True, exist_ok=True)
    d = out / f"profile_{setting}"
    path = out / f"profile_{setting}.json"
    for f in (path, Path(f"{path}.child")):
        f.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--profile-run", str(ROOT / "examples" / SETTINGS[setting][0]), "--seed", "0",
           "--steps", str(steps), "--eval-steps", str(steps), "--start-model", str(start), "--output-dir", str(d),
           "--async-staleness", "1"]
    print(f"[profile] {setting}, {steps} steps (load {os.getloadavg()[0]:.1f})", flush=True)
    os.environ["GRPO_BENCH_PROFILE"] = str(path)
    _run(cmd, out / f"profile_{setting}.log")
    times = json.loads(path.read_text())
    # the child answers in call order: keep the training calls' sampling times
    child = [float(x) for x in Path(f"{path}.child").read_text().split()]
    training = times.pop("_training")
    child = [c for c, t in zip(child, training) if t]
    metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    n = len(metrics)
    calls = len(child)
    print(f"\n### Hand-offs of the asynchronous path ({setting}, seed 0, {n} steps, {calls} training calls to the "
          "generator process; evaluations left out; "
          f"load average {os.getloadavg()[0]:.1f} at the end)\n")
    print("| where | seconds per step | per call (ms) | calls |")
    print("|---|---:|---:|---:|")
    times["child: sampling (measured in the generator process)"] = child
    for name in sorted(times):
        v = times[name]
        print(f"| {name} | {sum(v) / n:.4f} | {1000 * mean(v):.2f} | {len(v)} |")
    pipe = sum(sum(times[k]) for k in times if k.startswith("pipe:"))
    whole = sum(times["producer: whole step (sample, score, advantages)"])
    print(f"| = pipe overhead (send + wait + receive - child sampling) | {(pipe - sum(child)) / n:.4f} | "
          f"{1000 * (pipe - sum(child)) / max(1, len(child)):.2f} | {len(child)} |")
    print(f"| = producer outside the pipe (tools, scoring, advantages) | {(whole - pipe) / n:.4f} | | {n} |")
    for key in ("time/train", "time/sync", "time/collect", "time/step", "time/generate"):
        print(f"| learner metric {key} | {mean(m[key] for m in metrics):.4f} | | {n} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=["tool_use", "r1_zero"], choices=sorted(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "grpo_bench_async",
                    help="warm-up models, one per setting and seed (kept between invocations)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_async"))
    ap.add_argument("--quick", action="store_true", help="seed 0, a few GRPO steps (the warm-up is the real one)")
    ap.add_argument("--async-first", action="store_true",
                    help="run the asynchronous run before the synchronous one (with a sync-first pass, the "
                         "machine's load drift cancels)")
    ap.add_argument("--table-only", action="store_true", help="print the tables of --out/results.json")
    ap.add_argument("--profile", choices=sorted(SETTINGS), default=None,
                    help="time the hand-offs of one asynchronous run of this setting (seed 0)")
    ap.add_argument("--steps", type=int, default=60, help="GRPO steps of the --profile run")
    ap.add_argument("--own-session", action="store_true",
                    help="--profile: start the generator process in a session of its own (os.setsid): with the "
                         "kernel's autogroup scheduling it then gets a CPU share of its own instead of splitting "
                         "the learner's")
    if sys.argv[1:2] == ["--profile-run"]:  # (internal) an example script run with the timers
        script = sys.argv[2]
        os.environ["GRPO_BENCH_PROFILE"] = os.environ.get("GRPO_BENCH_PROFILE") or "profile.json"
        sys.argv = [script, *sys.argv[3:]]
        import bench_async  # by its module name: the generator process imports profiled_serve from it

        bench_async._install_profile()
        runpy.run_path(script, run_name="__main__")
        return
    a = ap.parse_args()
    if a.quick:
        a.seeds = a.seeds[:1]
    a.out.mkdir(parents=True, exist_ok=True)
    if a.table_only:
        print_tables(json.loads((a.out / "results.json").read_text()))
        return
    if a.profile:
        if a.own_session:
            os.environ["GRPO_BENCH_OWN_SESSION"] = "1"
        profile(a.profile, a.cache, a.out / ("own_session" if a.own_session else "."), a.steps)
        return
    rows = []
    for setting in a.settings:
        steps, eval_steps = QUICK[setting] if a.quick else SETTINGS[setting][1:]
        for seed in a.seeds:
            start = warm_model(setting, seed, a.cache)
            order = (1, 0) if a.async_first else (0, 1)
            runs = {k: grpo_run(setting, seed, k, start, a.out, steps, eval_steps) for k in order}
            rows.append({"setting": setting, "seed": seed, "steps": steps, "eval_steps": eval_steps,
                         "sync": runs[0], "async": runs[1], "summary": summarize(runs[0], runs[1])})
            (a.out / "results.json").write_text(json.dumps(rows, indent=1))
    print_tables(rows)


if __name__ == "__main__":
    main()
