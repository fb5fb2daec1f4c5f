"""Running a sweep: one subprocess per unfinished run, one at a time; the ``grpo sweep`` command."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpo.sweep.report import write_sweep_report
from grpo.sweep.spec import (
    FINISHED,
    Run,
    SweepSpec,
    is_finished,
    plan_runs,
    shard_from_env,
    shard_runs,
)


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)  # JSON is YAML: 1e-05, true, {a: 1}


def run_command(spec: SweepSpec, run: Run) -> list[str]:
    """The subprocess command line of one run."""
    base = spec.base
    if base.recipe is not None:
        cmd = [sys.executable, "-m", "grpo.cli", "train", base.recipe]
        cmd += [f"{k}={_value(v)}" for k, v in run.overrides.items()]
        cmd += [f"trainer.output_dir={run.dir}", f"trainer.seed={run.seed}"]
        cmd += ["trainer.overwrite_output_dir=true"]  # an unfinished run restarts from scratch
        cmd += [f"trainer.max_steps={spec.steps}"] if spec.steps else []
        return cmd + (["--quick"] if base.quick else [])  # after the overrides (argparse)
    cmd = [sys.executable, str(base.script), "--seed", str(run.seed), "--output-dir", str(run.dir)]
    cmd += ["--steps", str(spec.steps)] if spec.steps else []
    cmd += list(base.args)
    for k, v in run.overrides.items():
        cmd += ["--set", f"{k}={_value(v)}"]
    return cmd


# torchrun's variables: a child run must not think it is one rank of a distributed job
_LAUNCHER_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    env = {k: v for k, v in env.items() if not k.startswith("TORCHELASTIC_")}
    if "LOCAL_RANK" in os.environ and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["LOCAL_RANK"]  # one GPU per torchrun process
    return env


@dataclass
class SweepResult:
    launched: list[str] = field(default_factory=list)  # "variant/seedS" of the runs started
    skipped: list[str] = field(default_factory=list)  # finished before: not re-run
    failed: list[str] = field(default_factory=list)  # exited non-zero (log in DIR/sweep.log)
    report: Path | None = None


def run_sweep(
    spec: SweepSpec, shard: tuple[int, int] = (0, 1), report: bool = True, log=print
) -> SweepResult:
    """Run this shard's unfinished runs one at a time (subprocesses), then write the report."""
    runs = shard_runs(plan_runs(spec), *shard)
    result, t0 = SweepResult(), time.perf_counter()
    for i, run in enumerate(runs, 1):
        name = f"{run.variant}/seed{run.seed}"
        if is_finished(run.dir):
            result.skipped.append(name)
            log(f"[{i}/{len(runs)}] {name}: finished before, skipped")
            continue
        run.dir.mkdir(parents=True, exist_ok=True)
        cmd = run_command(spec, run)
        log(f"[{i}/{len(runs)}] {name}: running (sweep {time.perf_counter() - t0:.0f} s so far)")
        start = time.perf_counter()
        with open(run.dir / "sweep.log", "w") as out:
            rc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=_child_env()
            ).returncode
        wall = time.perf_counter() - start
        result.launched.append(name)
        if rc != 0:
            result.failed.append(name)
            tail = (run.dir / "sweep.log").read_text().splitlines()[-5:] or ["(empty)"]
            log(
                f"[{i}/{len(runs)}] {name}: FAILED (exit {rc}) after {wall:.0f} s; "
                f"{run.dir / 'sweep.log'} ends:\n  " + "\n  ".join(tail)
            )
            continue
        record = {"variant": run.variant, "seed": run.seed, "wall_s": wall, "command": cmd}
        (run.dir / FINISHED).write_text(json.dumps(record, indent=1))
        log(f"[{i}/{len(runs)}] {name}: done in {wall:.0f} s")
    if report:
        result.report = write_sweep_report(spec)
        log(f"report: {result.report} (and sweep.md)")
    return result


def _parse_shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    try:
        return int(i), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard wants i/n (e.g. 0/4), got {text!r}") from None


def cmd_sweep(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        spec = SweepSpec.from_yaml(args.spec)
    except (ValidationError, FileNotFoundError) as e:
        print(f"grpo sweep: {args.spec}: {e}", file=sys.stderr)
        return 2
    try:
        if args.report:
            print(write_sweep_report(spec))
            return 0
        shard = args.shard or shard_from_env()
        result = run_sweep(spec, shard, report=True)
    except ValueError as e:
        print(f"grpo sweep: {e}", file=sys.stderr)
        return 2
    if result.failed:
        print(
            f"grpo sweep: {len(result.failed)} run(s) failed: {', '.join(result.failed)} "
            f"(their logs: {spec.output_dir}/<variant>/seed<S>/sweep.log; re-run the sweep to "
            "retry them)",
            file=sys.stderr,
        )
        return 1
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="variants x seeds, resumable, with a table and ScaleRL fits"
    )
    p.add_argument("spec", help="sweep spec YAML (docs/sweep.md)")
    p.add_argument("--report", action="store_true", help="only collect finished runs")
    p.add_argument(
        "--shard",
        type=_parse_shard,
        default=None,
        metavar="I/N",
        help="run only every N-th run from I (default: RANK/WORLD_SIZE under torchrun, "
        "SLURM_ARRAY_TASK_ID/_COUNT in a job array, else all)",
    )
    p.set_defaults(func=cmd_sweep, parser=p)
