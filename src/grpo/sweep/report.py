"""The sweep report: ``sweep.md`` (the table), ``sweep.json``, ``sweep.png`` and ``sweep.html``."""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from grpo.sweep.results import SEPARATED, VariantSummary, collect_sweep, separated_pairs
from grpo.sweep.spec import SweepSpec


def _ci(value: float, ci: tuple[float, float] | None, fmt: str) -> str:
    text = format(value, fmt)
    return text if ci is None else f"{text} [{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def _num(value: float, fmt: str) -> str:
    return "-" if value != value else format(value, fmt)  # nan: no finished run


def sweep_table(summaries: list[VariantSummary], compute: str = "tokens") -> str:
    """The markdown table: one row per variant."""
    unit = "tokens" if compute == "tokens" else "steps"
    rows = [
        f"| variant | runs | final accuracy (mean ± 95% CI) | wall time / run (s) | tokens / run "
        f"| A | B | C_mid ({unit}) | intervals |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        f = s.fit
        fit_cells = (
            [
                _ci(f.A, f.A_ci, ".3f"),
                _ci(f.B, f.B_ci, ".2f"),
                _ci(f.C_mid, f.C_mid_ci, ".3g"),
                f.interval,
            ]
            if f
            else ["-", "-", "-", s.note or ("no finished run" if not s.runs else "-")]
        )
        rows.append(
            "| "
            + " | ".join(
                [
                    s.variant,
                    f"{len(s.runs)}/{s.planned}",
                    str(s.final) if s.runs else "-",
                    _num(s.wall_s, ".1f"),
                    _num(s.tokens, ".3g"),
                    *fit_cells,
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def separated_text(summaries: list[VariantSummary]) -> str:
    """One line per quantity: the pairs of variants whose 95% intervals do not overlap."""
    pairs = separated_pairs(summaries)
    names = {"final": "final accuracy", "A": "A", "B": "B", "C_mid": "C_mid"}
    return "\n".join(
        f"- {names[q]}: " + (", ".join(f"{lo} < {hi}" for lo, hi in pairs[q]) or "none")
        for q in SEPARATED
    )


def _seed_table(summaries: list[VariantSummary]) -> str:
    rows = [
        "| variant | seed | R0 | final | A | B | C_mid | rmse |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        for r in s.runs:
            f = s.seed_fits.get(r.seed)
            cells = (
                [f"{f.A:.3f}", f"{f.B:.2f}", f"{f.C_mid:.3g}", f"{f.rmse:.3f}"] if f else ["-"] * 4
            )
            r0 = "-" if r.R0 is None else f"{r.R0:.3f}"
            rows.append(
                f"| {s.variant} | {r.seed} | {r0} | {r.accuracy[-1]:.3f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(rows)


def _plot(summaries: list[VariantSummary], spec: SweepSpec, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grpo.report import COLORS, MARKERS

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    xlabel = "prompt + completion tokens sampled" if spec.compute == "tokens" else "GRPO step"
    for ax, log_x in zip(axes, (False, True)):
        for i, s in enumerate(summaries):
            color = COLORS[i % len(COLORS)]
            for j, r in enumerate(s.runs):
                pts = [(c, a) for c, a in zip(r.compute, r.accuracy) if c > 0 or not log_x]
                ax.plot(
                    *zip(*pts),
                    linestyle="none",
                    marker=MARKERS[j % len(MARKERS)],
                    mfc="none",
                    color=color,
                    alpha=0.7,
                    label=s.variant if j == 0 else None,
                )
            if s.fit is not None:
                top = max(c for r in s.runs for c in r.compute)
                xs = (
                    np.geomspace(
                        min(c for r in s.runs for c in r.compute if c > 0) / 10, top * 1.5, 200
                    )
                    if log_x
                    else np.linspace(0, top * 1.5, 200)
                )
                ax.plot(
                    xs,
                    s.fit.predict(xs),
                    color=color,
                    lw=1.8,
                    label=f"{s.variant} fit: A={s.fit.A:.2f}, B={s.fit.B:.2f}",
                )
                ax.axhline(s.fit.A, color=color, lw=0.8, linestyle=":")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel + (" (log)" if log_x else ""))
        ax.set_ylabel(f"held-out {spec.metric.split('/')[-1]}")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("Eval points per seed (markers) and ScaleRL fit per variant (lines; dotted: A)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # shards may report at once
    tmp.write_text(text)
    tmp.replace(path)


def write_sweep_report(spec: SweepSpec) -> Path:
    """``sweep.md``, ``sweep.json``, ``sweep.png`` and ``sweep.html`` in ``spec.output_dir``
    from the runs finished so far; returns the HTML page's path."""
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = collect_sweep(spec)
    done = sum(len(s.runs) for s in summaries)
    planned = sum(s.planned for s in summaries)
    head = (
        f"# Sweep {out}\n\n{done} of {planned} runs finished. Final accuracy: the last "
        f"`{spec.metric}` of each run, mean ± 95% t-interval over seeds. ScaleRL fit "
        f"R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B) on every eval point against C = "
        f"{'prompt + completion tokens sampled' if spec.compute == 'tokens' else 'GRPO steps'}, "
        f"R0 = mean step-0 accuracy; [intervals] are 95%.\n"
    )
    table, seeds = sweep_table(summaries, spec.compute), _seed_table(summaries)
    separated = (
        "## Differences outside the intervals\n\nPairs of variants whose 95% intervals do not "
        "overlap (lower < higher); every other pair is within the noise.\n\n"
        + separated_text(summaries)
    )
    _write_atomic(out / "sweep.md", f"{head}\n{table}\n\n{separated}\n\n## Per seed\n\n{seeds}\n")
    data = [
        {
            "variant": s.variant,
            "planned": s.planned,
            "final": asdict(s.final),
            "wall_s": s.wall_s,
            "tokens": s.tokens,
            "note": s.note,
            "fit": asdict(s.fit) if s.fit else None,
            "seed_fits": {str(k): asdict(v) for k, v in s.seed_fits.items()},
            "runs": [asdict(r) for r in s.runs],
        }
        for s in summaries
    ]
    _write_atomic(out / "sweep.json", json.dumps(data, indent=1))
    figure = ""
    if done:
        _plot(summaries, spec, out / f".sweep.{os.getpid()}.png")
        (out / f".sweep.{os.getpid()}.png").replace(out / "sweep.png")
        figure = "<img src='sweep.png' style='max-width:100%'>"
    _write_atomic(
        out / "sweep.html",
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>grpo sweep {html.escape(out.name)}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "td,th{padding:2px 8px}</style></head><body>"
        f"<h1>Sweep {html.escape(str(out))}</h1><p>{html.escape(head.split(chr(10), 2)[2])}</p>"
        f"{_html_table(table)}<h2>Differences outside the intervals</h2><ul>"
        + "".join(
            f"<li>{html.escape(line[2:])}</li>" for line in separated_text(summaries).splitlines()
        )
        + f"</ul>{figure}<h2>Per seed</h2>{_html_table(seeds)}</body></html>",
    )
    return out / "sweep.html"


def _html_table(markdown: str) -> str:
    lines = [line.strip("|").split(" | ") for line in markdown.splitlines() if "---" not in line]
    head, *body = lines
    th = "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
    trs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>"
        for row in body
    )
    return f"<table><tr>{th}</tr>{trs}</table>"
