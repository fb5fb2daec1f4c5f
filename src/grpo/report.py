"""The run report: DeepSeek-R1's signature curves as PNG files and one HTML page.

``grpo report RUN_DIR`` (or :func:`write_report`) reads ``metrics.jsonl`` / ``eval.jsonl`` and
draws, over training steps:

* reward, and accuracy (train accuracy, held-out greedy, mean@k, pass@k and cons@k);
* each reward component on its own axis (``reward/<name>/mean``, all but ``total``);
* mean response length (R1 Fig. 3: "the average response length ... naturally learns to solve
  reasoning tasks with more thinking time");
* the rate of reflection words, the "aha moment" of R1 sec. 2.2.4;
* format compliance, and language mixing (R1 sec. 2.3.2);
* training health: KL to the reference, entropy, clip fractions, zero-variance groups;
* held-out accuracy per value of each breakdown column (``eval/greedy_accuracy/<col>=<value>``);
* multi-turn tool use (``tools/*``): turns and calls per trajectory, failed calls, environment
  tokens, why trajectories stopped, reward by number of calls;
* asynchronous rollouts (``async/*``): staleness of the sampling weights, queue depth, idle time.

A panel is drawn only when the run logged at least one of its metrics: a single-turn,
synchronous run has no tool-use or async panel.

How it is drawn: one quantity per axis, its unit on the axis label, so that a KL of 1e-3 is not
flattened by an entropy of 2 on a shared axis. Training metrics (every step) are lines, with a
moving average over the raw values when the run is long; evaluations (a few steps) are markers
only, never joined, since nothing was measured between them. A series that is zero throughout
says so in its legend instead of hiding under another line. Steps are integers.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from grpo.tracking import read_jsonl


@dataclass(frozen=True)
class Series:
    key: str  # metric key; "*" matches one path part (no "/"), e.g. "eval/pass@*"
    label: str  # "{}" is replaced by what "*" matched
    eval: bool = False  # evaluation points: markers only


@dataclass(frozen=True)
class Axis:
    ylabel: str
    series: tuple[Series, ...]
    fraction: bool = False  # y from 0 to 1


T, E = Series, (lambda key, label: Series(key, label, eval=True))
PANELS: list[tuple[str, str, tuple[Axis, ...]]] = [
    (
        "reward_accuracy",
        "Reward and accuracy",
        (
            Axis("reward (weighted sum)", (T("reward/total/mean", "reward (train)"),)),
            Axis(
                "accuracy (fraction correct)",
                (
                    T("train/accuracy", "train (sampled)"),
                    E("eval/greedy_accuracy", "held-out, greedy"),
                    E("eval/mean@*_accuracy", "held-out, mean@{}"),
                    E("eval/pass@*", "held-out, pass@{}"),
                    E("eval/cons@*", "held-out, cons@{} (majority vote)"),
                ),
                fraction=True,
            ),
        ),
    ),
    (
        "response_length",
        "Mean response length, R1 Fig. 3",
        (
            Axis(
                "tokens per completion",
                (
                    T("completions/mean_length", "train"),
                    E("eval/greedy_length", "held-out, greedy"),
                    E("eval/mean@*_length", "held-out, {} samples"),
                ),
            ),
        ),
    ),
    (
        "reflection",
        "Reflection words ('wait', 'let me verify', ...), R1's aha moment",
        (
            Axis(
                "fraction of completions",
                (T("completions/reflection_rate", "train"),),
                fraction=True,
            ),
        ),
    ),
    (
        "format",
        "Format compliance",
        (
            Axis(
                "format reward (fraction)",
                (
                    T("train/format_rate", "train"),
                    E("eval/greedy_format_rate", "held-out, greedy"),
                    E("eval/mean@*_format_rate", "held-out, {} samples"),
                ),
                fraction=True,
            ),
        ),
    ),
    (
        "language_mixing",
        "Language mixing (Latin + CJK in one completion)",
        (
            Axis(
                "fraction of completions",
                (T("completions/language_mixing_rate", "train"),),
                fraction=True,
            ),
        ),
    ),
    (
        "health",
        "Training health",
        (
            Axis("KL to reference (nats/token)", (T("loss/kl", "KL estimate"),)),
            Axis("entropy (nats/token)", (T("policy/entropy", "policy entropy"),)),
            Axis(
                "clipped tokens (fraction)",
                (
                    T("loss/clip_frac_high", "ratio > 1 + eps_high, A > 0"),
                    T("loss/clip_frac_low", "ratio < 1 - eps_low, A < 0"),
                ),
            ),
            Axis(
                "groups with no signal (fraction)",
                (T("adv/zero_std_frac", "all rewards equal"),),
                fraction=True,
            ),
        ),
    ),
    (
        "tool_use",
        "Multi-turn tool use",
        (
            Axis(
                "per trajectory (count)",
                (
                    T("tools/turns_mean", "turns"),
                    T("tools/calls_mean", "tool calls"),
                ),
            ),
            Axis(
                "trajectories / tokens (fraction)",
                (
                    T("tools/call_rate", "trajectories with a tool call"),
                    T("tools/env_token_frac", "tokens appended by the environment"),
                ),
                fraction=True,
            ),
            Axis(
                "failed tool calls (fraction of calls)",
                (
                    T("tools/error_frac", "error, malformed or unknown tool"),
                    T("tools/timeout_frac", "timed out"),
                ),
                fraction=True,
            ),
            Axis(
                "failed tool calls (count per step)",
                (
                    T("tools/malformed", "malformed"),
                    T("tools/unknown_tool", "unknown tool"),
                ),
            ),
            Axis(
                "trajectories (fraction)",
                (T("tools/stop_*", "stopped: {}"),),
                fraction=True,
            ),
            Axis(
                "mean total reward",
                (T("tools/reward_calls_*", "{} tool calls"),),
            ),
        ),
    ),
    (
        "async",
        "Asynchronous rollouts",
        (
            Axis(
                "staleness (learner steps)",
                (
                    T("async/staleness_mean", "mean over the step's completions"),
                    T("async/staleness_max", "max"),
                ),
            ),
            Axis("scored steps waiting (count)", (T("async/queue_depth", "queue depth"),)),
            Axis(
                "idle since previous step (s)",
                (
                    T("async/learner_idle", "learner waiting for rollouts"),
                    T("async/generator_idle", "generator waiting"),
                ),
            ),
        ),
    ),
]
SMOOTH_FROM = 30  # steps: longer runs get a moving average over the raw line
COLORS = [
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _find(records: list[dict], series: Series) -> list[tuple[str, str, list[int], list[float]]]:
    """[(key, label, steps, values)] for every key the series' pattern matches, in sorted order."""
    pattern = re.compile("^" + re.escape(series.key).replace(r"\*", "([^/]+)") + "$")
    keys = sorted(
        {k for r in records for k in r if pattern.match(k)},
        key=lambda k: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", k)],
    )
    out = []
    for key in keys:
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if pts:
            match = pattern.match(key)
            label = (
                series.label.format(*match.groups()) if match and match.groups() else series.label
            )
            out.append((key, label, [p[0] for p in pts], [float(p[1]) for p in pts]))
    return out


def _moving_average(ys: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _draw_axis(ax, lines, ylabel: str, fraction: bool, steps: tuple[int, int]) -> None:
    from matplotlib.ticker import MaxNLocator

    n_eval = 0
    for i, (key, label, xs, ys, is_eval) in enumerate(lines):
        color, marker = COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)]
        if all(y == 0 for y in ys):
            label += " (0 throughout)"
        if is_eval:  # a few measured points: never joined into a trend. Hollow markers of
            # decreasing size nest inside each other where two evaluations agree.
            ax.plot(
                xs,
                ys,
                linestyle="none",
                marker=marker,
                ms=max(11 - 2.5 * n_eval, 3),
                mfc="none",
                mew=1.8,
                color=color,
                label=label,
                zorder=3,
            )
            n_eval += 1
            continue
        style = ["-", "--", ":", "-."][
            i % 4
        ]  # lines that coincide (often at 0) stay distinguishable
        if len(xs) >= SMOOTH_FROM and len(set(ys)) > 1:
            window = max(len(xs) // 15, 3)
            ax.plot(xs, ys, color=color, alpha=0.25, lw=1)
            ax.plot(
                xs,
                _moving_average(ys, window),
                color=color,
                lw=2,
                linestyle=style,
                label=f"{label}, mean of {window} steps",
            )
        else:
            ax.plot(
                xs,
                ys,
                color=color,
                lw=1.5,
                linestyle=style,
                label=label,
                marker=marker if len(xs) < SMOOTH_FROM else None,
                ms=4,
            )
    ax.set_ylabel(ylabel)
    ax.set_xlabel("GRPO step")
    pad = max((steps[1] - steps[0]) * 0.04, 0.3)
    ax.set_xlim(steps[0] - pad, steps[1] + pad)  # every panel on the run's step range
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if fraction:
        ax.set_ylim(-0.03, 1.03)
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _reward_panels(records: list[dict]) -> list[tuple[str, str, tuple[Axis, ...]]]:
    """One axis per reward component (``reward/<name>/mean``, ``total`` excluded): components are
    on their own scales, so each gets its own."""
    names = sorted(
        {
            m.group(1)
            for r in records
            for k in r
            if (m := re.match(r"^reward/([^/]+)/mean$", k))
            and m.group(1) not in ("total", "logged")
        }
    )
    if not names:
        return []
    axes = tuple(
        Axis(f"{name} (mean reward)", (T(f"reward/{name}/mean", f"{name} (train)"),))
        for name in names
    )
    return [("reward_components", "Reward components (unweighted means)", axes)]


def _breakdown_panels(records: list[dict]) -> list[tuple[str, str, tuple[Axis, ...]]]:
    """One panel per breakdown column found in the eval records."""
    columns = sorted(
        {
            m.group(1)
            for r in records
            for k in r
            if (m := re.match(r"^eval/greedy_accuracy/([^=]+)=", k))
        }
    )
    panels = []
    for col in columns:
        axes = [
            Axis(
                f"greedy accuracy by {col}",
                (E(f"eval/greedy_accuracy/{col}=*", f"{col}={{}}"),),
                fraction=True,
            )
        ]
        if any(
            re.match(rf"^eval/mean@[^/]+_accuracy/{re.escape(col)}=", k) for r in records for k in r
        ):
            axes.append(
                Axis(
                    f"mean@k accuracy by {col}",
                    (E(f"eval/mean@*_accuracy/{col}=*", f"mean@{{}}, {col}={{}}"),),
                    fraction=True,
                )
            )
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", col)
        panels.append((f"accuracy_by_{safe}", f"Held-out accuracy by {col}", tuple(axes)))
    return panels


def draw_panels(records: list[dict]):
    """Yield ``(name, title, figure, summary)`` for every panel with data; ``summary`` holds
    ``(key, first value, last value, last step)`` per drawn series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = (min(r["step"] for r in records), max(r["step"] for r in records))
    panels = PANELS[:1] + _reward_panels(records) + PANELS[1:] + _breakdown_panels(records)
    for name, title, axes in panels:
        drawn = []
        for axis in axes:
            lines = [
                (key, label, xs, ys, s.eval)
                for s in axis.series
                for key, label, xs, ys in _find(records, s)
            ]
            if lines:
                drawn.append((axis, lines))
        if not drawn:
            continue
        cols = 2 if len(drawn) > 1 else 1
        rows = (len(drawn) + 1) // 2
        fig, grid = plt.subplots(rows, cols, figsize=(5.4 * cols, 3.6 * rows), squeeze=False)
        for ax, (axis, lines) in zip(grid.flat, drawn):
            _draw_axis(ax, lines, axis.ylabel, axis.fraction, steps)
        for ax in list(grid.flat)[len(drawn) :]:
            ax.remove()
        fig.suptitle(title)
        fig.tight_layout()
        yield (
            name,
            title,
            fig,
            [(key, ys[0], ys[-1], xs[-1]) for _, lines in drawn for key, _, xs, ys, _ in lines],
        )


def write_report(run_dir: str | Path) -> Path:
    """Draw the panels that have data into ``run_dir/report/*.png`` and ``report.html``."""
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    records = read_jsonl(run / "metrics.jsonl") + read_jsonl(run / "eval.jsonl")
    if not records:
        raise FileNotFoundError(
            f"{run} has no metrics.jsonl or eval.jsonl: is it a grpo run folder?"
        )
    out = run / "report"
    out.mkdir(exist_ok=True)
    figures, summary = [], []
    for name, title, fig, rows in draw_panels(records):
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        figures.append((title, f"{name}.png"))
        summary += rows
    _write_html(run, out, figures, summary)
    return out / "report.html"


def _write_html(run: Path, out: Path, figures, summary) -> None:
    config = (run / "config.yaml").read_text() if (run / "config.yaml").exists() else ""
    samples = read_jsonl(run / "completions.jsonl")[-4:]
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{a:.4g}</td><td>{b:.4g}</td><td>{s}</td></tr>"
        for k, a, b, s in summary
    )
    imgs = "".join(
        f"<h3>{html.escape(t)}</h3><img src='{f}' style='max-width:100%'>" for t, f in figures
    )
    comps = "".join(
        f"<pre>{html.escape(json.dumps(c, indent=1, ensure_ascii=False))}</pre>" for c in samples
    )
    (out / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>grpo run {html.escape(run.name)}</title>"
        "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
        "td,th{padding:2px 8px}</style>"
        f"</head><body><h1>GRPO run: {html.escape(str(run))}</h1>"
        "<table><tr><th>metric</th><th>first</th><th>last</th><th>at step</th></tr>"
        f"{rows}</table>{imgs}"
        f"<h2>Last sampled completions</h2>{comps}<h2>Config</h2>"
        f"<pre>{html.escape(config)}</pre></body></html>"
    )
