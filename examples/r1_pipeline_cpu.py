"""DeepSeek-R1 in miniature on a CPU: R1-Zero, the R1 pipeline, and distillation, each measured.

    .venv/bin/python examples/r1_pipeline_cpu.py                 # ~10-15 min on 2 cores
    .venv/bin/python examples/r1_pipeline_cpu.py --seed 1
    .venv/bin/python examples/r1_pipeline_cpu.py --table runs/r1_pipeline_cpu_seed0   # the table again

The world: sums of three digits (``grpo.recipes.tiny_task``), a 0.55M-parameter Llama "teacher"
and a 4x smaller 0.14M "student", both built offline with a character tokenizer that also knows
two languages' words (``BILINGUAL_TOKENS``): a worked step reads ``4 plus 3 is 7`` in English or
``4加3得7`` in Chinese, the same number of tokens either way.

Stages (arXiv:2501.12948; every stage is a ``grpo.pipeline.run_pipeline`` stage, so a rerun skips
what is finished and ``RUN_DIR/index.html`` links each stage's report):

==================  ===========================================================================
``warmup``          the *base*: SFT of a random model on a sloppy teacher that shows worked sums
                    40% of the time, each step in English or Chinese at random (half of its
                    chains of thought mix the two), and guesses otherwise
``r1_zero``         R1-Zero (sec. 2.2): GRPO from the base, accuracy + 0.1 x format reward only
``r1_zero_lang``    ablation: the same with the language-consistency reward added (below), no
                    cold start: what the reward alone does to mixing and accuracy
``cold_start_data`` rejection sampling from R1-Zero: correct, well-formed, all-English traces,
                    one per prompt (R1's cold-start data, sec. 2.3.1, is "readable" R1-Zero output)
``cold_start``      SFT of the *base* on those few hundred traces
``reasoning_rl``    GRPO with accuracy + format + language consistency (sec. 2.3.2: "directly
                    summing them"), the language reward the share of English words in the CoT
``rejection``       rejection sampling from it on every training prompt (sec. 2.3.3)
``sft_base``        SFT of the *base* on the kept samples (sec. 2.3.3)
``final_rl``        the last GRPO stage (sec. 2.3.4), same rewards: the "R1" of this world
``student_warmup``  the student's base: the same warm-up on the 4x smaller model
``student_distill`` distillation (sec. 2.4): SFT of the student base on the ``rejection`` samples
``student_rl``      the student base trained by GRPO alone (R1-Zero's rewards) for the wall time
                    ``student_distill`` took (``max_seconds``)
``student_opd``     on-policy distillation from ``final_rl`` (``grpo.distill``), same wall time
``student_*_x10``   the two above with 10x that wall time (``--long-budget``)
==================  ===========================================================================

Each model stage is then evaluated the same way on 200 held-out sums (``RUN_DIR/stages/*/
miniature.json``): greedy accuracy, and on 4 samples per prompt at temperature 1 the accuracy,
the *mixing rate* (share of chains of thought with words that mix both scripts) and the mean
length in tokens. The table is printed and written to ``RUN_DIR/results.json``;
``RUN_DIR/report.html`` has bar charts of the table, every GRPO stage's curves, and links.

Where the miniature departs from the paper: a random tiny model warmed up on synthetic data
instead of a pretrained base; one task instead of math, code and general data; "languages" that
differ only in two words per step; the language reward gives an empty chain of thought 0
(``no_words=0.0``); the cold-start traces are selected from R1-Zero by a rule, not rewritten by
people; distillation uses the ``rejection`` samples (the paper's 800k samples came from the same
stage); no reward model and no non-reasoning data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

MAX_TOKENS = 40  # completion budget everywhere (a two-step English CoT with its answer is ~22 tokens)
EVAL_SAMPLES = 4
EVAL_SEED = 12345
TEACHER = dict(hidden_size=128, num_layers=2, num_heads=4, head_dim=32)
STUDENT = dict(hidden_size=64, num_layers=2, num_heads=2, head_dim=32)
STUDENT_RL = ("student_rl", "student_opd")  # + the same with the longer budget ("_x<N>")


# ------------------------------------------------------------------------------ set-up
def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def prepare(run: Path, seed: int, warmup_rows: int, eval_prompts: int) -> dict[str, Path]:
    """Data files and the two random initial models (deterministic in ``seed``; kept if present)."""
    from grpo.recipes.tiny_task import BILINGUAL_TOKENS, make_problems, teacher_rows
    from grpo.tiny import save_tiny_model

    paths = {name: run / "data" / f"{name}.jsonl" for name in ("train", "test", "warmup")}
    paths |= {"teacher_init": run / "models" / "teacher_init", "student_init": run / "models" / "student_init"}
    stamp = run / "data" / "prepared.json"
    settings = {"seed": seed, "warmup_rows": warmup_rows, "eval_prompts": eval_prompts}
    if stamp.exists() and json.loads(stamp.read_text()) == settings:
        return paths
    paths["train"].parent.mkdir(parents=True, exist_ok=True)
    train = make_problems(seed=seed, split="train")
    write_jsonl(paths["train"], train)
    write_jsonl(paths["test"], make_problems(split="test")[:eval_prompts])
    write_jsonl(paths["warmup"], teacher_rows(train, warmup_rows, seed=seed, languages=("en", "zh")))
    for name, shape in (("teacher_init", TEACHER), ("student_init", STUDENT)):
        save_tiny_model(paths[name], seed=seed, extra_tokens=BILINGUAL_TOKENS, **shape)
    stamp.write_text(json.dumps(settings))
    return paths


# ------------------------------------------------------------------------------ the recipe
def stages(p: dict[str, Path], a: argparse.Namespace, student_seconds: float | None) -> list[dict]:
    """The pipeline's stages (module docstring); the student RL stages need ``student_seconds``."""
    quick = a.quick
    warm = dict(per_device_train_batch_size=16 if quick else 64, num_train_epochs=1, learning_rate=5e-3,
                lr_scheduler_type="linear", warmup_steps=2 if quick else 20, weight_decay=0.0, max_grad_norm=1.0,
                seed=a.seed, logging_steps=2 if quick else 50, disable_tqdm=True, dataloader_num_workers=0)
    tune = dict(warm, per_device_train_batch_size=16, learning_rate=1e-3, warmup_steps=0,
                num_train_epochs=1 if quick else 2, logging_steps=2 if quick else 10)
    rl = {"seed": a.seed, "overwrite_output_dir": True,  # GRPOConfig, by section
          "rollout": {"num_generations": 8, "prompts_per_step": 8},
          "sampling": {"max_tokens": MAX_TOKENS, "temperature": 1.0},
          "optim": {"learning_rate": 1e-4},
          "loss": {"beta": 0.0, "eps_low": 0.2, "eps_high": 0.28, "aggregation": "token_mean"},
          "forward": {"micro_batch_size": 64, "torch_threads": a.threads},
          "eval": {"samples": EVAL_SAMPLES}, "log": {"steps": 1, "completions": 8}}
    math, fmt = {"name": "math"}, {"name": "format", "weight": 0.1}
    language = {"name": "language", "kwargs": {"language": "en", "no_words": 0.0}}
    watch_language = {**language, "weight": 0.0}  # logged (reward/language_reward/mean), not rewarded
    train, test = {"path": str(p["train"])}, {"path": str(p["test"])}
    # readable traces: correct, in the template, every CoT word English, a real CoT (the guess
    # path "<think></think><answer>N</answer>" is ~8 tokens; a worked 2-step CoT is ~20)
    readable = {"verifiers": ["math_reward", "format_reward"], "language": "en", "min_language_share": 1.0,
                "min_tokens": 1 if quick else 14}
    if quick:  # an untrained model solves nothing: keep whatever finished, to exercise the plumbing
        readable = {"verifiers": [], "min_tokens": 1}
    sample = {"type": "sample", "rewards": [math, {**fmt, "weight": 1.0}], "n": 2 if quick else 4,
              "sampling": {"temperature": 1.0, "max_tokens": MAX_TOKENS}, "seed": a.seed, "batch_size": 64}
    steps = (lambda n: 2) if quick else (lambda n: n)
    evals = {"eval": {**rl["eval"], "steps": 1 if quick else 25}}
    out = [
        {"name": "warmup", "type": "sft", "model": str(p["teacher_init"]), "data": {"path": str(p["warmup"])},
         "sft": warm},
        {"name": "r1_zero", "type": "grpo", "data": train, "eval_data": test,
         "rewards": [math, fmt, watch_language], "trainer": {**rl, **evals, "max_steps": steps(a.rl_steps)}},
        {"name": "r1_zero_lang", "type": "grpo", "model": {"from": "warmup"}, "data": train, "eval_data": test,
         "rewards": [math, fmt, language], "trainer": {**rl, **evals, "max_steps": steps(a.rl_steps)}},
        {**sample, "name": "cold_start_data", "model": {"from": "r1_zero"},
         "data": {**train, "limit": 16 if quick else a.cold_start_prompts}, "keep": {**readable, "max_per_prompt": 1}},
        {"name": "cold_start", "type": "sft", "model": {"from": "warmup"}, "data": {"from": "cold_start_data"},
         "sft": dict(tune, num_train_epochs=1 if quick else 3)},
        {"name": "reasoning_rl", "type": "grpo", "data": train, "eval_data": test,
         "rewards": [math, fmt, language], "trainer": {**rl, **evals, "max_steps": steps(a.rl_steps)}},
        {**sample, "name": "rejection", "data": {**train, "limit": 16} if quick else train,
         "keep": {**readable, "max_per_prompt": 2}},
        {"name": "sft_base", "type": "sft", "model": {"from": "warmup"}, "data": {"from": "rejection"}, "sft": tune},
        {"name": "final_rl", "type": "grpo", "data": train, "eval_data": test,
         "rewards": [math, fmt, language], "trainer": {**rl, **evals, "max_steps": steps(a.rl_steps // 2)}},
        {"name": "student_warmup", "type": "sft", "model": str(p["student_init"]),
         "data": {"path": str(p["warmup"])}, "sft": warm},
        {"name": "student_distill", "type": "sft", "model": {"from": "student_warmup"},
         "data": {"from": "rejection"}, "sft": tune},
    ]
    if student_seconds is not None:
        for suffix, factor in (("", 1), (f"_x{a.long_budget}", a.long_budget)):
            budget = {**rl, "max_steps": 2 if quick else 10_000, "max_seconds": factor * student_seconds}
            out += [
                {"name": f"student_rl{suffix}", "type": "grpo", "model": {"from": "student_warmup"}, "data": train,
                 "rewards": [math, fmt, watch_language], "trainer": budget},
                {"name": f"student_opd{suffix}", "type": "grpo", "model": {"from": "student_warmup"}, "data": train,
                 "teacher": {"from": "final_rl"}, "rewards": [{**math, "weight": 0.0}, watch_language],
                 "trainer": budget},
            ]
    return out


# ------------------------------------------------------------------------------ evaluation
def evaluate_model(model_dir: str, test_rows: list[dict], seed: int) -> dict[str, float]:
    """Held-out numbers of one model: greedy accuracy; sampled accuracy, mixing rate, length."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpo.rewards import MathReward
    from grpo.rollout import HFGenerator, SamplingConfig
    from grpo.textstats import chain_of_thought, count_words, is_language_mixed

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    gen = HFGenerator(model, tokenizer)
    prompts = [r["prompt"] for r in test_rows]
    answers = [r["answer"] for r in test_rows]
    verifier = MathReward(parallel=False)

    def accuracy(rollouts, n):
        scores = verifier(completions=[r.text for r in rollouts], answer=[a for a in answers for _ in range(n)])
        return sum(s or 0.0 for s in scores) / len(scores)

    greedy = gen.generate(prompts, 1, SamplingConfig(temperature=0.0, max_tokens=MAX_TOKENS))
    sampled = gen.generate(prompts, EVAL_SAMPLES, SamplingConfig(temperature=1.0, max_tokens=MAX_TOKENS,
                                                                 seed=seed + EVAL_SEED))
    texts = [r.text for r in sampled]
    with_words = [t for t in texts if count_words(chain_of_thought(t))]
    return {
        "greedy_accuracy": accuracy(greedy, 1),
        "sampled_accuracy": accuracy(sampled, EVAL_SAMPLES),
        "mixing_rate": sum(map(is_language_mixed, with_words)) / len(with_words) if with_words else 0.0,
        "cot_with_words": len(with_words) / len(texts),
        "mean_length": sum(len(r.completion_ids) for r in sampled) / len(sampled),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def evaluate_stages(run: Path, test_rows: list[dict], seed: int) -> list[dict]:
    """Each model stage's numbers, cached in ``stages/*/miniature.json`` next to its ``done.json``."""
    results = []
    for folder in sorted((run / "stages").iterdir()):
        name = folder.name.split("_", 1)[1]
        done = folder / "done.json"
        if not done.exists() or json.loads(done.read_text())["outputs"].get("model") is None:
            continue
        key = hashlib.sha256(done.read_bytes()).hexdigest()[:16]
        cache = folder / "miniature.json"
        if cache.exists() and json.loads(cache.read_text()).get("done_sha") == key:
            results.append(json.loads(cache.read_text()))
            continue
        info = json.loads(done.read_text())
        t0 = time.perf_counter()
        numbers = evaluate_model(info["outputs"]["model"], test_rows, seed)
        record = {"stage": name, "folder": folder.name, "seconds": info["summary"]["seconds"],
                  **numbers, "eval_seconds": round(time.perf_counter() - t0, 1), "done_sha": key}
        grpo_metrics = folder / "grpo" / "metrics.jsonl"
        if grpo_metrics.exists():
            record["grpo_steps"] = sum(1 for line in grpo_metrics.read_text().splitlines() if line.strip())
        cache.write_text(json.dumps(record, indent=1))
        print(f"[eval] {name}: greedy {numbers['greedy_accuracy']:.1%}, mixing {numbers['mixing_rate']:.1%}, "
              f"length {numbers['mean_length']:.1f}", flush=True)
        results.append(record)
    return results


# ------------------------------------------------------------------------------ table and report
def table(results: list[dict]) -> str:
    head = ("| stage | params | held-out greedy acc | sampled acc | mixing rate | mean length | wall time | "
            "GRPO steps |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in results:
        lines.append(f"| {r['stage']} | {r['parameters'] / 1e6:.2f}M | {r['greedy_accuracy']:.1%} | "
                     f"{r['sampled_accuracy']:.1%} | {r['mixing_rate']:.1%} | {r['mean_length']:.1f} | "
                     f"{r['seconds']:.0f} s | {r.get('grpo_steps', '')} |")
    return "\n".join(lines)


def write_report(run: Path, results: list[dict]) -> Path:
    """``report.html``: the table, bar charts of it, every GRPO stage's curves, links to every stage."""
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grpo.tracking import read_jsonl

    names = [r["stage"] for r in results]
    x = range(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    panels = ((("greedy_accuracy", "greedy"), ("sampled_accuracy", f"{EVAL_SAMPLES} samples, T=1")),
              (("mixing_rate", None),), (("mean_length", None),))
    titles = ("held-out accuracy", "language mixing rate (sampled CoTs with words)", "mean sampled length (tokens)")
    for ax, bars, title in zip(axes, panels, titles, strict=True):
        width = 0.8 / len(bars)
        for j, (key, label) in enumerate(bars):
            ax.bar([i + (j - (len(bars) - 1) / 2) * width for i in x], [r[key] for r in results], width, label=label)
        if len(bars) > 1:
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(list(x), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(run / "stages.png", dpi=100)
    plt.close(fig)

    # GRPO curves: the teacher's stages by step; the student's by wall time (their budgets are time)
    curves = [("train/accuracy", "train accuracy"),
              ("completions/language_mixing_rate", "mixing rate (all completions)"),
              ("completions/mean_length", "mean length (tokens)"),
              ("reward/language_reward/mean", "language reward (share of English words)")]
    fig, axes = plt.subplots(2, len(curves), figsize=(18, 6.4))
    for folder in sorted((run / "stages").iterdir()):
        metrics = folder / "grpo" / "metrics.jsonl"
        if not metrics.exists():
            continue
        rows = read_jsonl(metrics)
        name = folder.name.split("_", 1)[1]
        student = name.startswith("student")
        clock = [sum(m["time/step"] for m in rows[:i + 1]) for i in range(len(rows))]
        for ax, (key, title) in zip(axes[int(student)], curves, strict=True):
            pts = [(clock[i] if student else m["step"], m[key]) for i, m in enumerate(rows) if key in m]
            if pts:
                ax.plot([t for t, _ in pts], [v for _, v in pts], label=name, lw=1)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("seconds of GRPO" if student else "GRPO step")
            ax.grid(alpha=0.3)
    for row in axes:
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run / "curves.png", dpi=100)
    plt.close(fig)

    links = []
    for done in sorted((run / "stages").glob("*/done.json")):
        folder = done.parent.relative_to(run)
        summary = json.loads(done.read_text())["summary"]
        items = []
        if summary.get("report"):
            items.append(f"<a href='{html.escape(str(folder / summary['report']))}'>report</a>")
        if (done.parent / "miniature.json").exists():
            items.append(f"<a href='{html.escape(str(folder / 'miniature.json'))}'>held-out numbers</a>")
        items.append(f"<a href='{html.escape(str(folder / 'config.yaml'))}'>config</a>")
        links.append(f"<li>{html.escape(folder.name)}: {', '.join(items)}</li>")
    body = (f"<p>The pipeline's own page (status and numbers of every stage): <a href='index.html'>index</a>.</p>"
            f"<pre>{html.escape(table(results))}</pre><img src='stages.png' width='100%'>"
            f"<h2>GRPO stages</h2><img src='curves.png' width='100%'><h2>Stages</h2><ul>{''.join(links)}</ul>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>R1 in miniature: {html.escape(run.name)}"
            f"</title></head><body style='font-family:sans-serif;max-width:1200px;margin:auto'>"
            f"<h1>R1 in miniature: {html.escape(run.name)}</h1>{body}</body></html>")
    (run / "report.html").write_text(page)
    return run / "report.html"


def finish(run: Path, test_rows: list[dict], seed: int, total: float | None) -> None:
    results = evaluate_stages(run, test_rows, seed)
    (run / "results.json").write_text(json.dumps({"seed": seed, "seconds_total": total, "stages": results},
                                                 indent=1))
    report = write_report(run, results)
    print("\n" + table(results))
    if total is not None:
        print(f"\nwhole pipeline {total:.0f} s (stages + evaluations); report: {report}")


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output-dir", default=None, help="run folder (default runs/r1_pipeline_cpu_seed<N>)")
    ap.add_argument("--rl-steps", type=int, default=100, help="GRPO steps of r1_zero and reasoning_rl (final_rl: half)")
    ap.add_argument("--warmup-steps", type=int, default=800, help="warm-up SFT steps of 64 rows")
    ap.add_argument("--cold-start-prompts", type=int, default=400, help="prompts sampled for the cold-start traces")
    ap.add_argument("--eval-prompts", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--long-budget", type=int, default=10,
                    help="the student's RL stages also run with N times the distillation's wall time")
    ap.add_argument("--redo", default=None, help="run this stage again, and every stage after it")
    ap.add_argument("--table", metavar="RUN_DIR", default=None,
                    help="print the table of a finished run from its stages' JSON (re-evaluating none)")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    a = ap.parse_args()
    if a.table:
        results = [json.loads(p.read_text()) for p in sorted(Path(a.table).glob("stages/*/miniature.json"))]
        if not results:
            raise SystemExit(f"no stages/*/miniature.json under {a.table}: run the example there first")
        print(table(results))
        return
    if a.quick:
        a.warmup_steps, a.eval_prompts = 8, 8

    import datasets
    import torch
    import transformers

    from grpo.pipeline import run_pipeline
    from grpo.pipeline.recipe import PipelineRecipe
    from grpo.pipeline.sample import read_jsonl

    torch.set_num_threads(a.threads)
    datasets.disable_progress_bars()  # trl's passes over the 51k warm-up rows: noise in the output
    transformers.utils.logging.disable_progress_bar()
    run = Path(a.output_dir or f"runs/r1_pipeline_cpu_seed{a.seed}")
    t0 = time.perf_counter()
    paths = prepare(run, a.seed, a.warmup_steps * (16 if a.quick else 64), a.eval_prompts)

    def pipeline(student_seconds: float | None, redo: str | None):
        recipe = PipelineRecipe(output_dir=str(run), model=str(paths["teacher_init"]),
                                stages=stages(paths, a, student_seconds))
        return run_pipeline(recipe, redo=redo)

    # the student's RL stages get the wall time its distillation took, known once it has run; when
    # an earlier stage ran (its inputs may have changed) they run again too
    student_stages = STUDENT_RL + tuple(f"{n}_x{a.long_budget}" for n in STUDENT_RL)
    first = pipeline(None, None if a.redo in student_stages else a.redo)
    distill = json.loads(next((run / "stages").glob("*_student_distill/done.json")).read_text())
    pipeline(max(1.0, distill["summary"]["seconds"]), a.redo if a.redo in student_stages else
             ("student_rl" if first.ran else None))
    finish(run, read_jsonl(paths["test"]), a.seed, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
