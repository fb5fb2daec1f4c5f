"""``grpo sweep SPEC.yaml``: K variants x S seeds, resumable and shardable, with one table and
ScaleRL fits (docs/sweep.md).

    grpo sweep lab.yaml                    run every unfinished run, one at a time, then report
    grpo sweep lab.yaml --shard 1/4        only runs 1, 5, 9, ... (also RANK/WORLD_SIZE under
                                           torchrun, SLURM_ARRAY_TASK_ID/_COUNT in a job array)
    grpo sweep lab.yaml --report           only collect finished runs into sweep.md / sweep.html

A spec::

    base: {recipe: r1_zero_cpu, set: {trainer.max_steps: 50}}   # or {script: examples/lab_cpu.py}
    variants:
      grpo: {}
      dr_grpo: {trainer.rollout.advantage_estimator: dr_grpo}
    seeds: [0, 1, 2]
    output_dir: runs/sweep

Each run lives in ``output_dir/<variant>/seed<S>/`` and is a subprocess (``grpo train`` of the
recipe, or ``python SCRIPT --seed S --output-dir DIR --set k=v ...``). A run is finished when
its folder holds ``sweep_run.json`` (written by the sweep when the command exits 0) or a
script's ``summary.json``; a finished run is skipped, so re-running the sweep resumes it.

Python: ``run_sweep(spec)``, ``collect_sweep(spec)``, ``sweep_table(...)``,
``write_sweep_report(spec)``, ``separated_pairs(summaries)``; the fit is
:func:`grpo.scaling.fit_scalerl`.
"""

from __future__ import annotations

from grpo.sweep.report import sweep_table, write_sweep_report
from grpo.sweep.results import (
    RunRecord,
    VariantSummary,
    collect_sweep,
    fit_variant,
    read_run,
    separated_pairs,
)
from grpo.sweep.run import SweepResult, register, run_command, run_sweep
from grpo.sweep.spec import (
    BaseSpec,
    Run,
    SweepSpec,
    is_finished,
    plan_runs,
    shard_from_env,
    shard_runs,
)

__all__ = [
    "BaseSpec",
    "Run",
    "RunRecord",
    "SweepResult",
    "SweepSpec",
    "VariantSummary",
    "collect_sweep",
    "fit_variant",
    "is_finished",
    "plan_runs",
    "read_run",
    "register",
    "run_command",
    "run_sweep",
    "separated_pairs",
    "shard_from_env",
    "shard_runs",
    "sweep_table",
    "write_sweep_report",
]
