"""``grpo sweep``: the ScaleRL fit, the intervals, resumability, sharding, and a sweep end to end.

The end-to-end sweeps run a small script written here (``FAKE``) that writes a run folder shaped
like a real one (eval.jsonl, metrics.jsonl, summary.json) from a known curve: it tests the sweep
machinery, not training. One test runs a real ``grpo train`` recipe through the sweep.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from grpo.cli import main
from grpo.scaling import fit_scalerl, mean_ci, scalerl_curve, t_quantile_975
from grpo.sweep import (
    RunRecord,
    SweepSpec,
    collect_sweep,
    fit_variant,
    plan_runs,
    run_command,
    run_sweep,
    shard_from_env,
    shard_runs,
)

# --- the fit ---------------------------------------------------------------------------------


def test_curve_hand_numbers():
    # R0 0.1, A 0.7, B 2, C_mid 100. At C = 200: (100/200)^2 = 0.25, R = 0.1 + 0.6 / 1.25 = 0.58.
    assert scalerl_curve([200.0], 0.1, 0.7, 2.0, 100.0)[0] == pytest.approx(0.58)
    # at C = C_mid: half the gain, 0.1 + 0.6 / 2 = 0.4; at C = 0: R0; far out: A
    assert scalerl_curve([100.0, 0.0, 1e12], 0.1, 0.7, 2.0, 100.0) == pytest.approx(
        [0.4, 0.1, 0.7]
    )
    # at C = 50: (100/50)^2 = 4, R = 0.1 + 0.6 / 5 = 0.22
    assert scalerl_curve([50.0], 0.1, 0.7, 2.0, 100.0)[0] == pytest.approx(0.22)


@pytest.mark.parametrize(
    "R0, A, B, C_mid",
    [(0.1, 0.7, 1.5, 3e5), (0.3, 0.55, 0.8, 2e4), (0.05, 0.9, 3.0, 1e6)],
)
def test_fit_recovers_known_parameters_from_noisy_points(R0, A, B, C_mid):
    rng = np.random.default_rng(0)
    C = np.geomspace(C_mid / 30, C_mid * 30, 16)
    R = scalerl_curve(C, R0, A, B, C_mid) + rng.normal(0, 0.01, C.size)
    fit = fit_scalerl(np.concatenate([[0.0], C]), np.concatenate([[R0], R]), R0)
    assert fit.n_points == 16  # the C = 0 point carries nothing and is dropped
    assert fit.A == pytest.approx(A, abs=0.03)
    assert fit.B == pytest.approx(B, rel=0.2)
    assert fit.C_mid == pytest.approx(C_mid, rel=0.2)
    assert fit.interval == "fit covariance"
    assert fit.A_ci[0] < fit.A < fit.A_ci[1] and fit.B_ci[0] < fit.B < fit.B_ci[1]
    assert fit.rmse < 0.02


def test_fit_covariance_intervals_cover_the_truth_about_95_percent_of_the_time():
    R0, A, B, C_mid = 0.1, 0.7, 1.5, 3e5
    C = np.geomspace(C_mid / 30, C_mid * 30, 12)
    rng, hits = np.random.default_rng(1), np.zeros(3)
    for _ in range(60):
        fit = fit_scalerl(C, scalerl_curve(C, R0, A, B, C_mid) + rng.normal(0, 0.02, C.size), R0)
        for i, (true, ci) in enumerate(((A, fit.A_ci), (B, fit.B_ci), (C_mid, fit.C_mid_ci))):
            hits[i] += ci[0] < true < ci[1]
    assert np.all(hits >= 0.85 * 60), hits  # nominal 95%; linearised intervals run a bit short


def test_fit_is_exact_on_exact_points():
    C = np.geomspace(10, 1e5, 9)
    fit = fit_scalerl(C, scalerl_curve(C, 0.2, 0.65, 1.3, 700.0), 0.2)
    assert (fit.A, fit.B, fit.C_mid) == pytest.approx((0.65, 1.3, 700.0), rel=1e-5)
    assert fit.rmse < 1e-7


def test_bootstrap_intervals_span_the_spread_between_seeds():
    # three seeds whose own asymptotes are 0.6, 0.7, 0.8: the pooled A is ~0.7, and resampling
    # seeds moves it between ~0.6 and ~0.8 (all three the same seed at the extremes)
    steps = list(range(0, 45, 4))
    runs = [
        RunRecord("v", seed, steps, [100.0 * s for s in steps],
                  list(scalerl_curve([100.0 * s for s in steps], 0.1, A, 2.0, 1000.0)), 1.0, 4e3)
        for seed, A in enumerate((0.6, 0.7, 0.8))
    ]  # fmt: skip
    fit = fit_variant(runs, bootstrap=200)
    assert fit.A == pytest.approx(0.7, abs=0.005)
    assert fit.interval == "bootstrap over 3 seeds"
    assert 0.59 <= fit.A_ci[0] <= 0.65 and 0.75 <= fit.A_ci[1] <= 0.81
    assert fit.B_ci[0] - 1e-6 <= 2.0 <= fit.B_ci[1] + 1e-6  # the seeds share B
    assert fit_variant(runs[:1]).interval == "fit covariance"


def test_fit_needs_three_points_after_step_zero():
    with pytest.raises(ValueError, match="at least 3 evaluations"):
        fit_scalerl([0, 10, 20], [0.1, 0.2, 0.3], 0.1)


# --- intervals -------------------------------------------------------------------------------


def test_mean_ci_hand_numbers():
    # [0.5, 0.6, 0.7]: mean 0.6, sd 0.1, se 0.1 / sqrt(3) = 0.057735, t_{0.975, 2} = 4.3027
    ci = mean_ci([0.5, 0.6, 0.7])
    assert ci.mean == pytest.approx(0.6) and ci.n == 3
    assert ci.half_width == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-6)  # 0.24841
    # [1, 3]: mean 2, sd sqrt(2), se 1, t_1 = 12.7062
    assert mean_ci([1.0, 3.0]).half_width == pytest.approx(12.7062)
    assert math.isnan(mean_ci([0.4]).half_width)


def test_t_quantile_table_and_expansion():
    assert t_quantile_975(2) == 4.3027
    assert t_quantile_975(30) == 2.0423
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=2e-4)  # tables: 2.0395
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=2e-4)


# --- the fake run script and specs -----------------------------------------------------------

FAKE = textwrap.dedent(
    """
    import argparse, json, math, os, pathlib, random, sys
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int)
    ap.add_argument("--output-dir")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    sets = dict(s.split("=", 1) for s in a.set)
    with open(pathlib.Path(__file__).parent / "launches.txt", "a") as f:
        f.write(json.dumps({"dir": a.output_dir, "rank": os.environ.get("RANK")}) + "\\n")
    if sets.get("fail") == "true":
        sys.exit(3)
    run = pathlib.Path(a.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    A, rng = float(sets.get("A", "0.8")), random.Random(a.seed)
    with open(run / "metrics.jsonl", "w") as m, open(run / "eval.jsonl", "w") as e:
        for step in range(a.steps + 1):
            tokens = 100.0 * step  # 100 tokens a step
            if step:
                m.write(json.dumps({"step": step, "throughput/tokens_seen": tokens}) + "\\n")
            if step % 4 == 0:
                acc = 0.1 + (A - 0.1) / (1 + (1000.0 / max(tokens, 1e-9)) ** 2)
                acc += 0.002 * (a.seed + rng.random()) if step else 0.0
                e.write(json.dumps({"step": step, "eval/greedy_accuracy": acc}) + "\\n")
    (run / "summary.json").write_text(json.dumps({"seconds_total": 1.5}))
    """
)


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE)
    return script


def launches(fake) -> list[dict]:
    path = fake.parent / "launches.txt"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def spec_for(fake, variants, seeds=(0, 1), **extra) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "base": {"script": str(fake)},
            "variants": variants,
            "seeds": list(seeds),
            "output_dir": str(fake.parent / "sweep"),
            "steps": 40,
            **extra,
        }
    )


def quiet(*_):
    pass


# --- sharding --------------------------------------------------------------------------------


def test_shards_are_disjoint_and_complete(fake):
    spec = spec_for(fake, {"a": {}, "b": {"A": 0.5}, "c": {}}, seeds=(0, 1, 2, 3))
    runs = plan_runs(spec)
    assert len(runs) == 12
    for n in (1, 2, 3, 5, 12, 13):
        shards = [shard_runs(runs, i, n) for i in range(n)]
        names = [(r.variant, r.seed) for s in shards for r in s]
        assert len(names) == len(set(names)) == 12  # disjoint, and every run once
        assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
    with pytest.raises(ValueError, match="0 <= i < n"):
        shard_runs(runs, 2, 2)


def test_shard_from_torchrun_and_slurm_env():
    assert shard_from_env({"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    env = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert shard_from_env(env) == (1, 3)
    assert shard_from_env({}) == (0, 1)


def test_commands_carry_seed_dir_steps_and_overrides(fake):
    spec = spec_for(fake, {"v": {"loss.entropy_coef": 0.01, "name": "x"}})
    spec.base.set["rollout.dynamic_sampling"] = True
    cmd = run_command(spec, plan_runs(spec)[1])
    assert cmd[:2] == [sys.executable, str(fake)]
    assert cmd[cmd.index("--seed") + 1] == "1" and cmd[cmd.index("--steps") + 1] == "40"
    assert cmd[cmd.index("--output-dir") + 1].endswith("sweep/v/seed1")
    sets = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--set"]
    assert sets == ["rollout.dynamic_sampling=true", "loss.entropy_coef=0.01", "name=x"]
    recipe = SweepSpec.model_validate(
        {"base": "r1_zero_cpu", "variants": {"v": {"trainer.loss.beta": 0.04}}, "output_dir": "o"}
    )
    cmd = run_command(recipe, plan_runs(recipe)[2])
    assert cmd[1:5] == ["-m", "grpo.cli", "train", "r1_zero_cpu"]
    assert "trainer.loss.beta=0.04" in cmd and "trainer.seed=2" in cmd
    assert "trainer.output_dir=o/v/seed2" in cmd


def test_spec_refuses_mistakes(fake):
    with pytest.raises(ValueError, match="exactly one of recipe"):
        SweepSpec.model_validate({"base": {}, "variants": {"a": {}}, "output_dir": "o"})
    with pytest.raises(ValueError, match="distinct seeds"):
        spec_for(fake, {"a": {}}, seeds=(0, 0))
    with pytest.raises(ValueError, match="become folders"):
        spec_for(fake, {"a/b": {}})
    with pytest.raises(ValueError, match="quick"):
        SweepSpec.model_validate(
            {"base": {"script": "x.py", "quick": True}, "variants": {"a": {}}, "output_dir": "o"}
        )


# --- end to end ------------------------------------------------------------------------------


def test_sweep_end_to_end_resumes_and_reports(fake, monkeypatch):
    spec = spec_for(fake, {"high": {"A": 0.8}, "low": {"A": 0.5}})
    monkeypatch.setenv("RANK", "0")  # as under torchrun: the runs must not see it
    monkeypatch.setenv("WORLD_SIZE", "1")
    result = run_sweep(spec, log=quiet)
    assert len(launches(fake)) == 4 and not result.failed
    assert all(entry["rank"] is None for entry in launches(fake))
    out = fake.parent / "sweep"
    summaries = {s.variant: s for s in collect_sweep(spec)}
    high = summaries["high"]
    # final accuracy at step 40 (4000 tokens): 0.1 + 0.7 / (1 + (1000 / 4000)^2) = 0.758824,
    # plus 0.002 * (seed + u) noise: mean over seeds 0, 1 is 0.758824 + 0.001 + 0.002 * mean(u)
    finals = [r.accuracy[-1] for r in high.runs]
    assert high.final.mean == pytest.approx(np.mean(finals))
    assert 0.7598 < high.final.mean < 0.7619
    assert high.runs[0].compute[:3] == [0.0, 400.0, 800.0]  # tokens_seen at steps 0, 4, 8
    walls = [json.loads((out / "high" / f"seed{s}" / "sweep_run.json").read_text()) for s in (0, 1)]
    assert high.wall_s == pytest.approx(np.mean([w["wall_s"] for w in walls]))  # sweep's clock
    assert high.tokens == 4000.0  # the last throughput/tokens_seen
    # the fit recovers the script's curve: A, B = 2, C_mid = 1000 tokens
    assert high.fit.A == pytest.approx(0.8, abs=0.02)
    assert summaries["low"].fit.A == pytest.approx(0.5, abs=0.02)
    assert high.fit.B == pytest.approx(2.0, rel=0.15)
    assert high.fit.C_mid == pytest.approx(1000, rel=0.15)
    assert high.fit.interval == "bootstrap over 2 seeds"
    assert high.fit.A_ci[0] <= high.fit.A <= high.fit.A_ci[1]
    assert set(high.seed_fits) == {0, 1}
    table = (out / "sweep.md").read_text()
    assert "4 of 4 runs finished" in table
    assert "| high | 2/2 | 0.76" in table and "| low | 2/2 | 0.47" in table
    assert "- final accuracy: low < high\n- A: low < high\n" in table  # A 0.5 vs 0.8: apart
    page = (out / "sweep.html").read_text()
    assert "<img src='sweep.png'" in page and (out / "sweep.png").stat().st_size > 10_000
    assert json.loads((out / "sweep.json").read_text())[0]["fit"]["A"] == high.fit.A

    again = run_sweep(spec, log=quiet)  # resumable: nothing finished is run again
    assert len(launches(fake)) == 4 and len(again.skipped) == 4 and not again.launched
    (out / "low" / "seed1" / "summary.json").unlink()  # one run unfinished
    (out / "low" / "seed1" / "sweep_run.json").unlink()
    again = run_sweep(spec, log=quiet)
    assert again.launched == ["low/seed1"] and len(launches(fake)) == 5


def test_cli_shards_and_failures(fake, capsys):
    spec = {
        "base": {"script": str(fake)},
        "variants": {"ok": {}, "broken": {"fail": True}},
        "seeds": [0, 1],
        "output_dir": str(fake.parent / "sweep"),
        "steps": 12,
    }
    path = fake.parent / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--shard", "0/2"]) == 1  # ok/seed0, broken/seed0
    assert sorted(e["dir"].split("sweep/")[1] for e in launches(fake)) == [
        "broken/seed0",
        "ok/seed0",
    ]
    err = capsys.readouterr().err
    assert "1 run(s) failed: broken/seed0" in err
    assert main(["sweep", str(path), "--shard", "1/2"]) == 1
    assert len(launches(fake)) == 4
    assert main(["sweep", str(path), "--report"]) == 0
    md = (fake.parent / "sweep" / "sweep.md").read_text()
    assert "2 of 4 runs finished" in md and "| broken | 0/2 | - |" in md
    path.write_text(yaml.safe_dump({**spec, "seeds": [0, 0]}))
    assert main(["sweep", str(path)]) == 2
    assert "distinct seeds" in capsys.readouterr().err


@pytest.mark.slow  # ~15 s of CPU, ~35 s wall on a busy 2-core machine
def test_real_recipe_run_through_the_sweep(tmp_path):
    """One real ``grpo train r1_zero_cpu --quick`` (2 steps) as a sweep run."""
    spec = SweepSpec.model_validate(
        {
            "base": {"recipe": "r1_zero_cpu", "quick": True, "set": {"tiny.warmup_steps": 2}},
            "variants": {"grpo": {"trainer.eval.steps": 1}},
            "seeds": [3],
            "output_dir": str(tmp_path / "sweep"),
            "steps": 2,
        }
    )
    t0 = time.perf_counter()
    result = run_sweep(spec, log=quiet)
    log = tmp_path / "sweep" / "grpo" / "seed3" / "sweep.log"
    assert not result.failed, log.read_text()[-2000:]
    (summary,) = collect_sweep(spec)
    (run,) = summary.runs
    assert run.steps == [0, 1, 2] and run.compute[0] == 0.0 and run.compute[1] > 0
    assert run.tokens == run.compute[-1] > 0
    assert summary.fit is None and "at least 3 evaluations" in summary.note
    assert time.perf_counter() - t0 < 120


def test_runs_made_outside_the_sweep_count_and_a_missing_step_zero_is_named(tmp_path):
    """A script's summary.json marks a run finished (its seconds_total is the wall time); a run
    without an eval at step 0 has no R0, so no fit, and the table says why."""
    spec = SweepSpec.model_validate(
        {"base": "x.py", "variants": {"v": {}}, "seeds": [0], "output_dir": str(tmp_path)}
    )
    run = tmp_path / "v" / "seed0"
    run.mkdir(parents=True)
    evals = [{"step": s, "eval/greedy_accuracy": a} for s, a in zip((2, 4, 6, 8), (0.2, 0.4, 0.9, 0.8))]
    (run / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    (run / "summary.json").write_text(json.dumps({"seconds_total": 12.5}))
    (summary,) = collect_sweep(spec)
    assert summary.wall_s == 12.5 and summary.final.mean == pytest.approx(0.8)  # the last, not the best
    assert summary.fit is None and summary.note == "no eval at step 0 (R0)"
    assert run_sweep(spec, log=quiet).skipped == ["v/seed0"]
    assert "no eval at step 0 (R0)" in (tmp_path / "sweep.md").read_text()


def test_the_lab_sweep_spec_builds_every_variant_off_policy():
    """benchmarks/lab_sweep.yaml: 9 variants x 3 seeds from one warm-up model; every variant's
    overrides make a valid config of examples/lab_cpu.py's kind, off-policy (2 minibatches a step:
    on-policy, all objectives give the clip's gradient), each variant the setting it names."""
    from grpo import GRPOConfig
    from grpo.config import apply_overrides

    root = Path(__file__).resolve().parents[1]
    spec = SweepSpec.from_yaml(root / "benchmarks" / "lab_sweep.yaml")
    runs = plan_runs(spec)
    assert len(runs) == 27 and spec.seeds == [0, 1, 2]
    assert "--start-model" in spec.base.args  # the warm-up is shared, not paid per run
    assert (root / spec.base.script).exists()
    base = GRPOConfig(
        output_dir="unused",
        rollout={"num_generations": 8, "prompts_per_step": 8},
        loss={"beta": 0.0, "eps_high": 0.28, "aggregation": "token_mean"},
        reward={"weights": [1.0, 0.1]},
    )
    built = {}
    for run in runs[::3]:
        over = run.overrides
        sets = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in over.items()]
        built[run.variant] = GRPOConfig(**apply_overrides(base.to_dict(), sets, config_at=""))
    assert all(c.derived().minibatches_per_step == 2 for c in built.values())
    loss = {name: c.loss for name, c in built.items()}
    assert loss["grpo"].eps_high == 0.2 and loss["grpo"].aggregation == "seq_mean_token_mean"
    assert built["dr_grpo"].rollout.advantage_estimator == "dr_grpo"
    assert loss["dr_grpo"].aggregation == "seq_sum_max_len"
    assert built["dapo"].rollout.dynamic_sampling and loss["dapo"].eps_high == 0.28
    assert loss["dapo"].aggregation == "token_mean"
    assert loss["gspo"].ratio_level == "sequence"
    assert built["curriculum"].rollout.curriculum == "pass_rate"
    assert {loss[o].objective for o in ("cispo", "sapo", "gmpo", "dppo")} == {
        "cispo", "sapo", "gmpo", "dppo"
    }


def test_fit_of_a_jump_gives_an_unbounded_interval_not_an_overflow():
    """A curve that jumps from R0 to its plateau between two evaluations leaves B unidentified:
    its log-scale standard error is huge, and the interval's upper end is inf (not an
    OverflowError that would stop the whole sweep report)."""
    C = [0.0, 1e3, 2e3, 3e3, 4e3, 5e3, 6e3]
    R = [0.05, 0.06, 0.36, 0.36, 0.35, 0.37, 0.36]
    fit = fit_scalerl(C, R, 0.05)
    assert fit.interval == "fit covariance" and fit.A == pytest.approx(0.36, abs=0.01)
    assert fit.B_ci[1] == math.inf and fit.B_ci[0] < fit.B
    assert fit.C_mid_ci[0] < fit.C_mid < fit.C_mid_ci[1]


def test_separated_pairs_are_the_non_overlapping_intervals():
    """Final accuracy: t-intervals; A, B, C_mid: the fit's intervals. A pair counts only when
    the intervals do not touch; a variant with one seed (no interval) is left out."""
    from grpo.scaling import MeanCI, ScaleRLFit
    from grpo.sweep import VariantSummary, separated_pairs

    def fit(A, A_ci, C_mid, C_ci):
        return ScaleRLFit(A, 2.0, C_mid, 0.05, 12, 0.01, A_ci, (1.0, 3.0), C_ci, "bootstrap")

    def v(name, final, half, f):
        return VariantSummary(name, 3, [], MeanCI(final, half, 3), 1.0, 1.0, f, {})

    a = v("a", 0.30, 0.02, fit(0.35, (0.34, 0.36), 1e4, (9e3, 1.1e4)))
    b = v("b", 0.40, 0.04, fit(0.37, (0.36, 0.38), 5e3, (4e3, 6e3)))  # A touches a's at 0.36
    c = v("c", 0.33, 0.02, None)  # no fit: only its final accuracy compares
    one = v("one_seed", 0.9, float("nan"), fit(0.9, (0.89, 0.91), 1e4, (9e3, 1.1e4)))
    pairs = separated_pairs([a, b, c, one])
    # a [0.28, 0.32], b [0.36, 0.44], c [0.31, 0.35]: a and c overlap, both lie below b
    assert pairs["final"] == [("a", "b"), ("c", "b")]
    assert pairs["A"] == [("a", "one_seed"), ("b", "one_seed")]  # touching is overlapping
    assert pairs["C_mid"] == [("b", "a"), ("b", "one_seed")]
    assert pairs["B"] == []
