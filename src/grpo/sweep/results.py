"""Reading finished runs: eval points against compute, final accuracy, cost, ScaleRL fits."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from grpo.scaling import MeanCI, ScaleRLFit, fit_scalerl, mean_ci
from grpo.sweep.spec import FINISHED, Run, SweepSpec, is_finished, plan_runs
from grpo.tracking import read_jsonl


@dataclass
class RunRecord:
    """One finished run: its eval points against compute, final accuracy, cost."""

    variant: str
    seed: int
    steps: list[int]
    compute: list[float]  # at each eval step
    accuracy: list[float]
    wall_s: float
    tokens: float

    @property
    def R0(self) -> float | None:
        return self.accuracy[0] if self.steps and self.steps[0] == 0 else None


def _tokens_at(metrics: list[dict]) -> dict[int, float]:
    """Cumulative prompt + completion tokens sampled, by step (throughput/tokens_seen, or the
    running sum of completions/tokens + completions/prompt_tokens)."""
    out, total = {}, 0.0
    for m in sorted(metrics, key=lambda r: r["step"]):
        if isinstance(m.get("throughput/tokens_seen"), (int, float)):
            total = float(m["throughput/tokens_seen"])
        else:
            total += float(m.get("completions/tokens") or 0) + float(
                m.get("completions/prompt_tokens") or 0
            )
        out[m["step"]] = total
    return out


def read_run(spec: SweepSpec, run: Run) -> RunRecord | None:
    """The finished run's record, or None when it has not finished."""
    if not is_finished(run.dir):
        return None
    evals = [
        r
        for r in read_jsonl(run.dir / "eval.jsonl")
        if isinstance(r.get(spec.metric), (int, float))
    ]
    if not evals:
        raise ValueError(
            f"{run.dir} is finished but its eval.jsonl has no {spec.metric!r}: set metric: in "
            f"the spec to a key it logs, or evaluate during training (trainer.eval.steps)"
        )
    tokens = _tokens_at(read_jsonl(run.dir / "metrics.jsonl"))

    def tokens_before(step: int) -> float:
        done = [s for s in tokens if s <= step]
        return tokens[max(done)] if done else 0.0

    steps = [int(r["step"]) for r in evals]
    compute = [float(s) if spec.compute == "steps" else tokens_before(s) for s in steps]
    wall = float("nan")
    for name, key in ((FINISHED, "wall_s"), ("summary.json", "seconds_total")):
        if (run.dir / name).exists():
            wall = float(json.loads((run.dir / name).read_text()).get(key, wall))
            break
    total_tokens = tokens[max(tokens)] if tokens else float("nan")
    accuracy = [float(r[spec.metric]) for r in evals]
    return RunRecord(run.variant, run.seed, steps, compute, accuracy, wall, total_tokens)


@dataclass
class VariantSummary:
    variant: str
    planned: int
    runs: list[RunRecord]
    final: MeanCI
    wall_s: float  # mean per run
    tokens: float  # mean per run
    fit: ScaleRLFit | None
    seed_fits: dict[int, ScaleRLFit]
    note: str = ""  # why there is no fit


def _pooled_fit(runs: list[RunRecord]) -> ScaleRLFit:
    R0 = float(np.mean([r.R0 for r in runs]))
    C = [c for r in runs for c in r.compute]
    R = [a for r in runs for a in r.accuracy]
    return fit_scalerl(C, R, R0)


def fit_variant(runs: list[RunRecord], bootstrap: int = 200, seed: int = 0) -> ScaleRLFit:
    """The pooled fit over the runs' eval points (R0: mean of their step-0 accuracies). With 2+
    runs the intervals are percentile bootstrap over seeds (resample runs with replacement, refit);
    with one run they come from the fit covariance."""
    fit = _pooled_fit(runs)
    if len(runs) < 2 or bootstrap == 0:
        return fit
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        sample = [runs[i] for i in rng.integers(0, len(runs), len(runs))]
        try:
            f = _pooled_fit(sample)
        except ValueError:
            continue
        draws.append((f.A, f.B, f.C_mid))
    if len(draws) < bootstrap // 2:
        return fit
    lo, hi = np.percentile(np.array(draws), [2.5, 97.5], axis=0)
    return ScaleRLFit(
        **{k: getattr(fit, k) for k in ("A", "B", "C_mid", "R0", "n_points", "rmse")},
        A_ci=(float(lo[0]), float(hi[0])),
        B_ci=(float(lo[1]), float(hi[1])),
        C_mid_ci=(float(lo[2]), float(hi[2])),
        interval=f"bootstrap over {len(runs)} seeds",
    )


def collect_sweep(spec: SweepSpec) -> list[VariantSummary]:
    """Every variant's finished runs, final accuracy mean +- 95% CI, cost and ScaleRL fits."""
    by_variant: dict[str, list[Run]] = {}
    for run in plan_runs(spec):
        by_variant.setdefault(run.variant, []).append(run)
    out = []
    for name, planned in by_variant.items():
        runs = [r for r in (read_run(spec, p) for p in planned) if r is not None]
        fit, seed_fits, note = None, {}, ""
        fittable = [r for r in runs if r.R0 is not None]
        if runs and not fittable:
            note = "no eval at step 0 (R0)"
        for r in fittable:
            try:
                seed_fits[r.seed] = fit_scalerl(r.compute, r.accuracy, r.R0)
            except ValueError as e:
                note = str(e).split(":")[0]
        if fittable:
            try:
                fit = fit_variant(fittable, spec.bootstrap)
            except ValueError as e:
                note = str(e).split(":")[0]
        out.append(
            VariantSummary(
                name,
                len(planned),
                runs,
                mean_ci([r.accuracy[-1] for r in runs]),
                float(np.mean([r.wall_s for r in runs])) if runs else float("nan"),
                float(np.mean([r.tokens for r in runs])) if runs else float("nan"),
                fit,
                seed_fits,
                note,
            )
        )
    return out


def _interval(s: VariantSummary, quantity: str) -> tuple[float, float] | None:
    if quantity == "final":
        h = s.final.half_width
        return None if h != h else (s.final.mean - h, s.final.mean + h)  # nan: one seed
    return None if s.fit is None else getattr(s.fit, f"{quantity}_ci")


SEPARATED = ("final", "A", "B", "C_mid")
"""The quantities :func:`separated_pairs` compares: final accuracy and the fit's A, B, C_mid."""


def separated_pairs(summaries: list[VariantSummary]) -> dict[str, list[tuple[str, str]]]:
    """For each of :data:`SEPARATED`, the pairs of variants whose 95% intervals do not overlap,
    as ``(lower, higher)``: the only differences the sweep can call real (docs/sweep.md).
    Variants without an interval (one seed, no fit) are left out.

    >>> from grpo.scaling import MeanCI
    >>> def v(name, mean):
    ...     return VariantSummary(name, 3, [], MeanCI(mean, 0.06, 3), 1.0, 1.0, None, {})
    >>> separated_pairs([v("a", 0.30), v("b", 0.50), v("c", 0.40)])["final"]  # c overlaps both
    [('a', 'b')]
    """
    out: dict[str, list[tuple[str, str]]] = {}
    for q in SEPARATED:
        pairs = []
        for i, a in enumerate(summaries):
            for b in summaries[i + 1 :]:
                ia, ib = _interval(a, q), _interval(b, q)
                if ia is None or ib is None:
                    continue
                if ia[1] < ib[0]:
                    pairs.append((a.variant, b.variant))
                elif ib[1] < ia[0]:
                    pairs.append((b.variant, a.variant))
        out[q] = pairs
    return out
