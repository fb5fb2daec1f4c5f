"""The run report: DeepSeek-R1's signature curves as PNG files and one HTML page.

``grpo report RUN_DIR`` (or :func:`write_report`) reads ``metrics.jsonl`` / ``eval.jsonl`` and
draws, over training steps:

* reward and accuracy (train accuracy, held-out greedy and mean@k accuracy);
* mean response length (R1 Fig. 3: "the average response length ... naturally learns to solve
  reasoning tasks with more thinking time");
* the rate of reflection words, the "aha moment" of R1 sec. 2.2.4;
* format compliance, and language mixing (R1 sec. 2.3.2);
* training health: KL to the reference, entropy, clip fractions, zero-variance groups.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from grpo.tracking import read_jsonl

PANELS = [
    ("reward_accuracy", "Reward and accuracy", [
        ("reward/total/mean", "reward (train)"), ("train/accuracy", "accuracy (train)"),
        ("eval/greedy_accuracy", "accuracy (held-out, greedy)"), ("eval/mean@*_accuracy", "accuracy (held-out, mean@k)")]),
    ("response_length", "Mean response length (tokens), R1 Fig. 3", [
        ("completions/mean_length", "train"), ("eval/greedy_length", "held-out, greedy")]),
    ("reflection", "Reflection-word rate ('wait', 'let me verify', ...)", [
        ("completions/reflection_rate", "fraction of completions")]),
    ("format", "Format compliance", [
        ("train/format_rate", "train"), ("eval/greedy_format_rate", "held-out, greedy")]),
    ("language_mixing", "Language mixing (Latin + CJK in one completion)", [
        ("completions/language_mixing_rate", "fraction of completions")]),
    ("health", "Training health", [
        ("loss/kl", "KL to reference"), ("policy/entropy", "entropy (nats/token)"),
        ("loss/clip_frac_high", "clip fraction (high)"), ("loss/clip_frac_low", "clip fraction (low)"),
        ("adv/zero_std_frac", "zero-variance groups")]),
]


def _series(records: list[dict], key: str) -> tuple[str, list[int], list[float]] | None:
    if key.endswith("*_accuracy"):  # e.g. eval/mean@4_accuracy
        prefix = key.split("*")[0]
        key = next((k for r in records for k in r if k.startswith(prefix) and k.endswith("_accuracy")), key)
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if not pts:
        return None
    return key, [p[0] for p in pts], [p[1] for p in pts]


def write_report(run_dir: str | Path) -> Path:
    """Draw the panels that have data into ``run_dir/report/*.png`` and ``report.html``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    records = read_jsonl(run / "metrics.jsonl") + read_jsonl(run / "eval.jsonl")
    if not records:
        raise FileNotFoundError(f"{run} has no metrics.jsonl or eval.jsonl: is it a grpo run folder?")
    out = run / "report"
    out.mkdir(exist_ok=True)
    figures, summary = [], []
    for name, title, keys in PANELS:
        lines = [(label, s) for key, label in keys if (s := _series(records, key)) is not None]
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for label, (key, xs, ys) in lines:
            ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, ms=3, label=label)
            summary.append((key, ys[0], ys[-1], xs[-1]))
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        figures.append((title, f"{name}.png"))
    _write_html(run, out, figures, summary)
    return out / "report.html"


def _write_html(run: Path, out: Path, figures, summary) -> None:
    config = (run / "config.yaml").read_text() if (run / "config.yaml").exists() else ""
    samples = read_jsonl(run / "completions.jsonl")[-4:]
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{a:.4g}</td><td>{b:.4g}</td><td>{s}</td></tr>"
                   for k, a, b, s in summary)
    imgs = "".join(f"<h3>{html.escape(t)}</h3><img src='{f}' width='640'>" for t, f in figures)
    comps = "".join(f"<pre>{html.escape(json.dumps(c, indent=1, ensure_ascii=False))}</pre>" for c in samples)
    (out / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>grpo run {html.escape(run.name)}</title>"
        f"<style>body{{font-family:sans-serif;max-width:900px;margin:auto}}td,th{{padding:2px 8px}}</style>"
        f"</head><body><h1>GRPO run: {html.escape(str(run))}</h1>"
        f"<table><tr><th>metric</th><th>first</th><th>last</th><th>at step</th></tr>{rows}</table>{imgs}"
        f"<h2>Last sampled completions</h2>{comps}<h2>Config</h2><pre>{html.escape(config)}</pre></body></html>")
