"""Mistakes refused when a run starts (issue #26) instead of hours in, or with a generic error."""

import argparse
import sys
import textwrap

import pytest
import yaml

from grpo import GRPOConfig, GRPOTrainer
from grpo.data import check_dataset, check_prompt_tokens, check_reward_columns
from grpo.rewards import as_reward


def _pipeline_cli(argv):
    from grpo.pipeline.commands import register

    parser = argparse.ArgumentParser(prog="grpo")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_pipeline_check_accepts_a_module_function_reward(tmp_path, monkeypatch, capsys):
    (tmp_path / "check_rewards.py").write_text(textwrap.dedent("""
        def short_reward(completions, **kwargs):
            return [float(len(str(c)) < 10) for c in completions]
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "check_rewards", raising=False)  # a cached module of that name
    data = {"builder": "tiny_arithmetic", "limit": 4}
    recipe = {"output_dir": str(tmp_path / "run"), "model": str(tmp_path / "model"), "stages": [
        {"name": "rl", "type": "grpo", "data": data, "rewards": [{"name": "check_rewards:short_reward"}],
         "trainer": {"max_steps": 1}},
        {"name": "rs", "type": "sample", "data": data, "n": 2,
         "rewards": [{"name": "check_rewards:short_reward"}], "keep": {"verifiers": ["short_reward"]}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert _pipeline_cli(["pipeline", str(path), "--check"]) == 0, capsys.readouterr().err
    # the function's name is what a keep rule's verifiers refer to
    recipe["stages"][1]["keep"] = {"verifiers": ["nope"]}
    path.write_text(yaml.safe_dump(recipe))
    assert _pipeline_cli(["pipeline", str(path), "--check"]) == 2
    assert "verifiers ['nope'] are not among the rewards ['short_reward']" in capsys.readouterr().err


# ---------------------------------------------------------------------------- datasets and rewards


def _cfg(tmp_path, **kw):
    return GRPOConfig(output_dir=str(tmp_path / "run"), num_generations=2, prompts_per_step=2, max_steps=1,
                      max_completion_length=4, beta=0.0, progress_bar=False, save_final_model=False, **kw)


def needs_answer(completions, answer, **kwargs):
    return [float(str(a) in str(c)) for c, a in zip(completions, answer)]


def test_a_reward_function_s_required_column_is_checked_at_start(tiny_dir, tmp_path):
    rows = [{"prompt": f"What is {i}+1?", "solution": str(i + 1)} for i in range(4)]
    with pytest.raises(ValueError) as e:
        GRPOTrainer(str(tiny_dir), [needs_answer], rows, _cfg(tmp_path))
    assert str(e.value) == (
        "reward function 'needs_answer' requires the column 'answer', which train_dataset does not have "
        "(its columns: ['prompt', 'solution']); add the column to the dataset, or give the parameter a default")
    good = [{**r, "answer": r["solution"]} for r in rows]
    with pytest.raises(ValueError, match="'needs_answer' requires the column 'answer', which eval_dataset"):
        GRPOTrainer(str(tiny_dir), [needs_answer], good, _cfg(tmp_path), eval_dataset=rows)
    # what the trainer passes itself, parameters with defaults, **kwargs-only and Reward classes pass
    def trainer_keywords(prompts, completions, completion_ids, truncated, trainer_state, **kwargs):
        return [0.0] * len(completions)

    def optional(completions, answer=None, **kwargs):
        return [0.0] * len(completions)

    import datasets

    for data in (good, datasets.Dataset.from_list(good)):
        check_reward_columns([needs_answer, as_reward(trainer_keywords), optional], data, "train_dataset")
    check_reward_columns([optional, as_reward(lambda completions, **kw: [0.0])], rows, "train_dataset")
    # the prompt column reaches rewards as `prompts`, never under its own name
    with pytest.raises(ValueError, match="requires the column 'question'"):
        check_reward_columns([lambda completions, question, **kw: [0.0]], [{"question": "q"}], "d",
                             prompt_key="question")


def test_a_pandas_dataframe_is_refused_naming_the_fix():
    import pandas as pd

    df = pd.DataFrame({"prompt": ["a", "b"], "answer": ["1", "2"]})
    with pytest.raises(TypeError) as e:
        check_dataset(df, "train_dataset")
    assert str(e.value) == ("train_dataset is a pandas DataFrame, whose [i] is a column, not a row; pass "
                            "datasets.Dataset.from_pandas(df) or df.to_dict('records')")
    check_dataset(df.to_dict("records"), "train_dataset")


def test_chat_rows_without_role_or_content_are_refused_naming_row_and_key(tiny_dir, tmp_path):
    import datasets

    rows = [{"prompt": [{"role": "user", "content": "hi"}]},
            {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "text": "hi"}]}]
    for data in (rows, datasets.Dataset.from_list(rows)):
        with pytest.raises(KeyError) as e:
            check_dataset(data, "train_dataset")
        assert e.value.args[0] == ("train_dataset row 1: chat message 1 has no 'content' (its keys: ['role', "
                                   "'text']); every message needs 'role' and 'content'")
    with pytest.raises(KeyError, match="eval_dataset row 0: chat message 0 has no 'role'"):
        check_dataset([{"prompt": [{"content": "hi"}]}], "eval_dataset")
    with pytest.raises(TypeError, match="d row 1: the prompt is a int"):
        check_dataset([{"prompt": "x"}, {"prompt": 3}], "d")
    with pytest.raises(TypeError, match="d row 0: chat message 0 is a str"):
        check_dataset([{"prompt": ["hello"]}], "d")
    with pytest.raises(KeyError, match="dataset row 2 has no 'prompt' field"):
        check_dataset([{"prompt": "x"}, {"prompt": "y"}, {"question": "z"}], "d")
    # through the trainer: refused before the model is loaded, not a jinja error at the first step
    with pytest.raises(KeyError, match="train_dataset row 1: chat message 1 has no 'content'"):
        GRPOTrainer(str(tiny_dir), [needs_answer], rows, _cfg(tmp_path))
    # a tool-calling assistant message may leave out content
    check_dataset([{"prompt": [{"role": "user", "content": "x"},
                               {"role": "assistant", "tool_calls": []}]}], "d")


def test_prompt_lengths_are_measured_as_the_generator_encodes_them(tiny_dir):
    from transformers import AutoTokenizer

    from grpo.rollout.tokens import encode_prompt, prompt_lengths

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    prompts = ["short", [{"role": "user", "content": "What is 2+2?"}], "a longer one " * 5,
               [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]]
    want = [len(encode_prompt(tok, p)) for p in prompts]
    assert prompt_lengths(tok, prompts, batch_size=3) == want
    rows = [{"prompt": p} for p in prompts]
    check_prompt_tokens(rows, "train_dataset", tok, max(want))
    with pytest.raises(ValueError) as e:
        check_prompt_tokens(rows, "train_dataset", tok, want[1] - 1)
    over = [i for i, n in enumerate(want) if n >= want[1]]
    assert over[0] == 1 and len(over) > 1, want  # the first long row is named, the others counted
    assert str(e.value) == (
        f"the prompt of train_dataset row 1 has {want[1]} tokens, more than rollout.max_prompt_length="
        f"{want[1] - 1} ({len(over)} rows exceed it; the longest has {max(want)} tokens): raise "
        "rollout.max_prompt_length or drop prompts that long from the dataset")
    # a generator's own encoding (tool schemas rendered) is what is measured when it has one
    with pytest.raises(ValueError, match="row 0 has 100 tokens"):
        check_prompt_tokens(rows, "train_dataset", tok, 99, encode=lambda p: [0] * 100)


def test_a_finished_run_without_checkpoints_is_not_overwritten_silently(tiny_dir, tmp_path):
    from grpo.checkpoint import list_checkpoints
    from grpo.tracking import read_jsonl

    rows = [{"prompt": f"What is {i}+1?", "answer": str(i + 1)} for i in range(4)]
    GRPOTrainer(str(tiny_dir), [needs_answer], rows, _cfg(tmp_path)).train()
    run = tmp_path / "run"
    assert list_checkpoints(run) == [] and read_jsonl(run / "metrics.jsonl")
    with pytest.raises(FileExistsError) as e:
        GRPOTrainer(str(tiny_dir), [needs_answer], rows, _cfg(tmp_path))
    assert str(e.value) == (
        f"output_dir {str(run)!r} holds another run, without checkpoints (metrics.jsonl, completions.jsonl), "
        "which a fresh run would overwrite: set overwrite_output_dir=True to start over, or choose another "
        "output_dir")
    GRPOTrainer(str(tiny_dir), [needs_answer], rows, _cfg(tmp_path, overwrite_output_dir=True)).train()
