"""HTML pages of a pipeline run: one report per SFT / sample stage, and the index linking all.

(GRPO stages get the run report of :mod:`grpo.report`.)
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_STYLE = (
    "<style>body{font-family:sans-serif;max-width:900px;margin:auto}td,th{padding:2px 8px}</style>"
)


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>{_STYLE}"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))


def _plot(
    path: Path, xs: Sequence[float], ys: Sequence[float], title: str, xlabel: str, bar: bool = False
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    if bar:
        ax.bar(xs, ys, width=0.08)
    else:
        ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, ms=3)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_sft_report(stage_dir: Path, log_history: list[dict[str, Any]]) -> str:
    """``report.html`` with the loss curve; returns its path relative to ``stage_dir``."""
    pts = [(r["step"], r["loss"]) for r in log_history if "loss" in r and "step" in r]
    body = ""
    if pts:
        _plot(
            stage_dir / "loss.png",
            [p[0] for p in pts],
            [p[1] for p in pts],
            "SFT loss (completion tokens)",
            "step",
        )
        body += "<img src='loss.png' width='640'>"
        body += _table(["step", "loss"], [(s, _fmt(v)) for s, v in pts])
    else:
        body += "<p>No loss was logged (fewer steps than logging_steps).</p>"
    body += f"<h2>Log</h2><pre>{html.escape(json.dumps(log_history, indent=1))}</pre>"
    (stage_dir / "report.html").write_text(_page(f"SFT stage {stage_dir.name}", body))
    return "report.html"


def write_sample_report(stage_dir: Path, result: Any) -> str:
    """``report.html`` with kept / dropped counts and the pass-rate histogram."""
    rates = [r for r in result.pass_rates if r is not None]
    body = "<h2>Samples kept and dropped (first failed check)</h2>"
    body += _table(["", "samples"], [(k, v) for k, v in result.counts.items()])
    if rates:
        edges = [i / 10 for i in range(11)]
        counts = [
            sum(lo <= r < hi or (hi == 1.0 and r == 1.0) for r in rates)
            for lo, hi in zip(edges, edges[1:])
        ]
        _plot(
            stage_dir / "pass_rates.png",
            [e + 0.05 for e in edges[:-1]],
            counts,
            "Prompts by pass rate",
            "pass rate",
            bar=True,
        )
        body += "<h2>Pass rates</h2><img src='pass_rates.png' width='640'>"
        body += (
            f"<p>mean {sum(rates) / len(rates):.3f} over {len(rates)} scorable prompts; "
            f"never solved: {sum(r == 0 for r in rates)}; "
            f"always solved: {sum(r == 1 for r in rates)}</p>"
        )
    rel = lambda p: html.escape(str(Path(p).relative_to(stage_dir)))  # noqa: E731
    files = [result.sft_path, result.pass_rates_path] + (
        [result.rl_prompts_path] if result.rl_prompts_path else []
    )
    body += (
        "<h2>Files</h2><ul>"
        + "".join(f"<li><a href='{rel(p)}'>{rel(p)}</a></li>" for p in files)
        + "</ul>"
    )
    (stage_dir / "report.html").write_text(
        _page(f"Rejection sampling stage {stage_dir.name}", body)
    )
    return "report.html"


def write_index(run_dir: Path, entries: list[dict[str, Any]]) -> Path:
    """``index.html``: every stage with its status, numbers, and links to its report and config."""
    rows = []
    for e in entries:
        folder = Path(e["folder"])
        report = e.get("summary", {}).get("report")
        link = f"<a href='{html.escape(str(folder / report))}'>report</a>" if report else ""
        numbers = ", ".join(
            f"{html.escape(k)}: {_fmt(v)}"
            for k, v in e.get("summary", {}).items()
            if k != "report" and v is not None
        )
        rows.append(
            (
                html.escape(e["name"]),
                e["type"],
                e["status"],
                numbers,
                link,
                f"<a href='{html.escape(str(folder / 'config.yaml'))}'>config</a>",
            )
        )
    body = _table(["stage", "type", "status", "numbers", "report", "resolved config"], rows)
    body += "<p>The whole recipe: <a href='recipe.yaml'>recipe.yaml</a></p>"
    path = run_dir / "index.html"
    path.write_text(_page(f"Pipeline run {run_dir.name}", body))
    return path
