"""The run report's figures: one quantity per axis with its unit, evaluations as unjoined markers,
zero lines that say so, integer steps, breakdown panels, and the files it writes."""

import json

import pytest

from grpo.report import draw_panels, write_report


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def records(steps=5):
    train = [{"step": s, "reward/total/mean": s / 5, "train/accuracy": s / 10, "completions/mean_length": 10 + s,
              "loss/kl": 1e-3 * s, "policy/entropy": 2.0 - 0.1 * s, "loss/clip_frac_high": 0.0,
              "loss/clip_frac_low": 0.0, "adv/zero_std_frac": 0.5} for s in range(1, steps + 1)]
    evals = [{"step": s, "eval/greedy_accuracy": a, "eval/mean@4_accuracy": a / 2, "eval/pass@4": min(2 * a, 1),
              "eval/greedy_accuracy/difficulty=easy": a, "eval/greedy_accuracy/difficulty=hard": a / 3}
             for s, a in ((0, 0.2), (steps, 0.6))]
    return train + evals


def panels(recs):
    return {name: fig for name, _, fig, _ in draw_panels(recs)}


def test_health_puts_each_quantity_on_its_own_labelled_axis():
    fig = panels(records())["health"]
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["KL to reference (nats/token)", "entropy (nats/token)", "clipped tokens (fraction)",
                      "groups with no signal (fraction)"]
    kl_axis = fig.axes[0]
    low, high = kl_axis.get_ylim()
    assert high < 0.01  # KL ~1e-3 fills its own axis instead of hugging zero under an entropy of 2
    # both clip fractions are 0: drawn differently, and the legend says so
    clip = fig.axes[2]
    texts = [t.get_text() for t in clip.get_legend().get_texts()]
    assert all(t.endswith("(0 throughout)") for t in texts) and len(texts) == 2
    assert len({line.get_linestyle() for line in clip.get_lines()}) == 2


def test_evaluations_are_markers_only_and_steps_are_integers():
    fig = panels(records(steps=3))["reward_accuracy"]
    reward_ax, acc_ax = fig.axes
    assert reward_ax.get_ylabel().startswith("reward") and acc_ax.get_ylabel().startswith("accuracy")
    by_label = {line.get_label(): line for line in acc_ax.get_lines()}
    for label in ("held-out, greedy", "held-out, mean@4", "held-out, pass@4"):
        assert by_label[label].get_linestyle() == "None" and by_label[label].get_marker() not in (None, "None")
        assert list(by_label[label].get_xdata()) == [0, 3]
    assert by_label["train (sampled)"].get_linestyle() != "None"
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert reward_ax.get_xlim() == acc_ax.get_xlim()  # one step range for every axis


def test_long_runs_get_a_moving_average_over_the_raw_line():
    fig = panels(records(steps=60))["response_length"]
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert any(label.startswith("train, mean of") for label in labels)
    clip = panels(records(steps=60))["health"].axes[2]  # constant series: no average, still distinct
    assert len({line.get_linestyle() for line in clip.get_lines()}) == 2
    assert all(line.get_label().endswith("(0 throughout)") for line in clip.get_lines())


def test_breakdown_columns_get_their_own_panel():
    fig = panels(records())["accuracy_by_difficulty"]
    labels = sorted(line.get_label() for line in fig.axes[0].get_lines())
    assert labels == ["difficulty=easy", "difficulty=hard"]


def test_write_report_writes_pngs_and_html(tmp_path):
    recs = records()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs if "loss/kl" in r))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs if "loss/kl" not in r))
    page = write_report(tmp_path)
    text = page.read_text()
    for name in ("reward_accuracy", "response_length", "health", "accuracy_by_difficulty"):
        assert f"{name}.png" in text and (tmp_path / "report" / f"{name}.png").stat().st_size > 5000
    assert "format.png" not in text  # no data, no panel
    with pytest.raises(FileNotFoundError, match="is it a grpo run folder"):
        write_report(tmp_path / "missing")
