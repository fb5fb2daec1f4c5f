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


NEW_PANELS = ("reward_components", "tool_use", "async")


def rich_records(steps=5):
    """records() plus reward components, cons@k, multi-turn tool use and async metrics."""
    recs = records(steps)
    for r in recs:
        if "loss/kl" in r:
            s = r["step"]
            r.update({"reward/accuracy/mean": s / 10, "reward/format/mean": 0.9, "reward/accuracy/std": 0.1,
                      "tools/turns_mean": 1.5, "tools/calls_mean": 0.5 + s / 10, "tools/call_rate": 0.4,
                      "tools/error_frac": 0.1, "tools/timeout_frac": 0.0, "tools/malformed": 1.0,
                      "tools/unknown_tool": 0.0, "tools/env_token_frac": 0.2, "tools/stop_eos": 0.8,
                      "tools/stop_max_turns": 0.2, "tools/reward_calls_0": 0.1, "tools/reward_calls_3+": 0.7,
                      "async/staleness_mean": 0.5, "async/staleness_max": 1.0, "async/queue_depth": 1.0})
        else:
            r["eval/cons@4"] = r["eval/greedy_accuracy"] + 0.1
    return recs


def write_run(path, recs):
    path.mkdir(exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs if "loss/kl" in r))
    (path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs if "loss/kl" not in r))


def test_reward_components_get_one_axis_each_and_total_is_not_among_them():
    fig = panels(rich_records())["reward_components"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy (mean reward)", "format (mean reward)"]
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["accuracy (train)"]


def test_cons_at_k_sits_next_to_pass_at_k():
    acc_ax = panels(rich_records(steps=3))["reward_accuracy"].axes[1]
    by_label = {line.get_label(): line for line in acc_ax.get_lines()}
    assert "held-out, pass@4" in by_label
    cons = by_label["held-out, cons@4 (majority vote)"]
    assert cons.get_linestyle() == "None" and list(cons.get_xdata()) == [0, 3]
    labels = [line.get_label() for line in panels(records(steps=3))["reward_accuracy"].axes[1].get_lines()]
    assert not any("cons@" in label for label in labels)


def test_tool_use_and_async_panels():
    drawn = panels(rich_records())
    tools = drawn["tool_use"]
    assert len(tools.axes) == 6
    stop = next(ax for ax in tools.axes if ax.get_ylabel() == "trajectories (fraction)")
    assert sorted(line.get_label() for line in stop.get_lines()) == ["stopped: eos", "stopped: max_turns"]
    by_calls = next(ax for ax in tools.axes if ax.get_ylabel() == "mean total reward")
    assert [line.get_label() for line in by_calls.get_lines()] == ["0 tool calls", "3+ tool calls"]
    asyn = drawn["async"]
    assert [ax.get_ylabel() for ax in asyn.axes] == ["staleness (learner steps)", "scored steps waiting (count)"]
    assert len(asyn.axes[0].get_lines()) == 2


def test_write_report_draws_the_new_panels_only_when_their_metrics_exist(tmp_path):
    rich, plain = tmp_path / "rich", tmp_path / "plain"
    write_run(rich, rich_records())
    write_run(plain, records())
    text = write_report(rich).read_text()
    for name in NEW_PANELS:
        assert f"src='{name}.png'" in text and (rich / "report" / f"{name}.png").stat().st_size > 5000
    assert "eval/cons@4" in text and "reward/accuracy/mean" in text
    text = write_report(plain).read_text()
    for name in NEW_PANELS:
        assert f"{name}.png" not in text and not (plain / "report" / f"{name}.png").exists()
    assert "cons@" not in text
