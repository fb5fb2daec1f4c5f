"""The composition matrix of grpo.compat, tested from its declaration: every covering row trains,
every refused pair is refused naming both settings, every pair is accounted for, and
docs/compatibility.md is the generated page."""

import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from grpo import GRPOConfig, GRPOTrainer, compat
from grpo.tracking import read_jsonl

ROWS = compat.covering_rows()
ONE = [r for r in ROWS if compat.processes(r) == 1]
SEVERAL = [r for r in ROWS if compat.processes(r) > 1]
PAGE = Path(__file__).resolve().parents[1] / "docs" / "compatibility.md"


def row_id(row):
    defaults = {a.name: a.values[0].name for a in compat.AXES}
    changed = [f"{k}={v}" for k, v in row.items() if v != defaults[k]]
    return ",".join(changed) or "defaults"


def trainer_for(row, model_dir, tmp_path):
    setup = compat.build(row, model_dir, tmp_path / "run")
    args = setup.arguments()
    args["config"] = GRPOConfig(**args["config"])
    return GRPOTrainer(**args), setup


@pytest.fixture
def vllm_env(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))


@pytest.mark.parametrize(
    "row",
    [pytest.param(r, id=row_id(r), marks=[pytest.mark.vllm] if compat.engine_row(r) else [])
     for r in ONE],
)
def test_every_row_trains(row, tiny_dir, tmp_path, vllm_env):
    """Two steps: the trained weights change, every logged metric is finite, the groups keep
    reward spread (the learning watch's 'no signal' cause; completions of a random tiny model
    are mostly cut at 8 tokens, its other cause, which is expected here)."""
    trainer, setup = trainer_for(row, model_dir=tiny_dir, tmp_path=tmp_path)
    generator = trainer.generator
    if row["async"] == "on":  # wrapped, never replaced
        assert type(generator).__name__ == "AsyncGenerator"
        generator = generator.inner
    if row["generator"] == "given":
        assert generator is setup.kwargs["generator"] or row["multiturn"] == "on"
    if row["multiturn"] == "on":
        assert type(generator).__name__ == "MultiTurnGenerator"
    sampler = getattr(generator, "generator", generator)  # a multi-turn wrapper's
    expected = "VLLMGenerator" if compat.engine_row(row) else (
        "ProcessGenerator" if row["async"] == "on" else "HFGenerator")  # async: an HF copy in a child
    assert type(sampler).__name__ == expected, type(sampler)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train()
    finally:
        trainer.close()
    after = dict(trainer.model.named_parameters())
    assert before and any(not torch.equal(v, after[n]) for n, v in before.items())
    check_metrics(row, tmp_path / "run")
    assert not [w for w in caught if "learning almost nothing" in str(w.message)]


def check_metrics(row, run):
    metrics = read_jsonl(run / "metrics.jsonl")
    assert len(metrics) == 2
    for step in metrics:
        bad = {k: v for k, v in step.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, bad
        if row["teacher"] == "none":
            assert step["adv/zero_std_frac"] < 0.9, step
        else:
            assert step["distill/reverse_kl"] != 0, step


def _refused_params(several):
    return [
        pytest.param(p, r, id=compat._pair_text(p), marks=[] if r.names_both else [
            pytest.mark.xfail(strict=True, reason="declared: the message names neither setting")])
        for p, r in compat.REFUSED.items()
        if (compat.processes(compat.refusal_row(p)) > 1) == several
    ]


REFUSED = _refused_params(several=False)
REFUSED_SEVERAL = _refused_params(several=True)


def check_refusal(pair, refusal, message):
    """The message holds the declared fragment (asserted first, so a vague refusal fails only
    on naming) and names the setting of both axes."""
    assert refusal.message in message
    for axis, value in pair:
        assert any(n in message for n in compat.names(axis, value)), (axis, message)


@pytest.mark.parametrize("pair, refusal", REFUSED)
def test_every_refused_pair_is_refused_naming_both_settings(pair, refusal, tiny_dir, tmp_path):
    """The message holds the declared fragment (asserted first, so a vague refusal fails only
    on naming) and the setting of both axes."""
    row = compat.refusal_row(pair)
    setup = compat.build(row, tiny_dir, tmp_path / "run")
    args = setup.arguments()
    with pytest.raises(ValueError) as error:
        args["config"] = GRPOConfig(**args["config"])
        GRPOTrainer(**args).close()
    check_refusal(pair, refusal, str(error.value))


@pytest.fixture(scope="module")
def launched(tiny_dir, tmp_path_factory):
    """One torchrun launch of 2 processes runs every row and refused pair with several processes
    in turn (each launch costs the imports of 2 processes); each job leaves a result per rank."""
    base = tmp_path_factory.mktemp("launched")
    jobs = [{"row": r, "out": str(base / f"row{i}"), "refusal": False}
            for i, r in enumerate(SEVERAL)]
    jobs += [{"row": compat.refusal_row(p.values[0]), "out": str(base / f"refusal{i}"),
              "refusal": True} for i, p in enumerate(REFUSED_SEVERAL)]
    spec = base / "jobs.json"
    spec.write_text(json.dumps({"model_dir": str(tiny_dir), "jobs": jobs}))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(compat.__file__).parents[1]), env.get("PYTHONPATH", "")])
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "grpo.compat", "--jobs", str(spec)],
        capture_output=True, text=True, timeout=540, env=env)
    print(f"torchrun of {len(jobs)} jobs: {time.monotonic() - start:.0f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {json.dumps(j["row"], sort_keys=True) + str(j["refusal"]): Path(j["out"]) for j in jobs}


def results(out):
    found = [json.loads((out / f"result_rank{r}.json").read_text()) for r in (0, 1)]
    assert all("error" not in f for f in found), found
    return found


@pytest.mark.distributed
@pytest.mark.parametrize("row", [pytest.param(r, id=row_id(r)) for r in SEVERAL])
def test_every_row_trains_on_two_processes(row, launched):
    """Under torchrun: the gathered weights change on both ranks, every metric is finite."""
    out = launched[json.dumps(row, sort_keys=True) + "False"]
    assert [f.get("changed") for f in results(out)] == [True, True]
    check_metrics(row, out)


@pytest.mark.distributed
@pytest.mark.parametrize("pair, refusal", REFUSED_SEVERAL)
def test_every_refused_pair_is_refused_on_two_processes(pair, refusal, launched):
    out = launched[json.dumps(compat.refusal_row(pair), sort_keys=True) + "True"]
    for found in results(out):
        assert "refused" in found, found
        check_refusal(pair, refusal, found["refused"])


def test_no_pair_is_silently_wrong():
    """Composition is a feature: a pair works or is refused by name; grpo.compat.SILENT is where
    a pair found to be accepted but not honoured goes until it is fixed or refused."""
    assert not compat.SILENT


def test_every_pair_is_covered_or_declared():
    """The generator cannot drop a pair silently: each pair that works is held by a row; refused,
    silently wrong, impossible and untested pairs are held by none; impossible pairs are truly
    impossible (no row without a refused pair holds them) and every other pair is possible."""
    held = {p for row in ROWS for p in compat._row_pairs(row)}
    declared = [compat.REFUSED, compat.SILENT, compat.IMPLIED, compat.UNTESTED]
    for table in declared:
        assert all(p in set(compat.all_pairs()) for p in table)  # canonical, known values
    for p in compat.all_pairs():
        state = compat.status(p)
        assert (p in held) == (state == "works"), (p, state)
        assert compat.feasible(p) == (state in ("works", "untested")), (p, state)
    assert sum(map(len, declared)) == len({p for t in declared for p in t})  # no pair twice


def test_rows_are_deterministic_and_few_start_vllm():
    assert compat.covering_rows() == ROWS
    assert sum(map(compat.engine_row, ROWS)) <= 3
    assert len(SEVERAL) <= 8  # each a torchrun launch: the costly kind (async's rows added two)


def test_the_page_is_generated_from_the_declaration():
    assert PAGE.read_text() == compat.render_page(), "run: python -m grpo.compat > docs/compatibility.md"
