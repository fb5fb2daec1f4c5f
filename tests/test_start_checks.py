"""Mistakes refused when a run starts (issue #26) instead of hours in, or with a generic error."""

import argparse
import textwrap

import pytest
import yaml


def _pipeline_cli(argv):
    from grpo.pipeline.commands import register

    parser = argparse.ArgumentParser(prog="grpo")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_pipeline_check_accepts_a_module_function_reward(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        def short_reward(completions, **kwargs):
            return [float(len(str(c)) < 10) for c in completions]
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = {"builder": "tiny_arithmetic", "limit": 4}
    recipe = {"output_dir": str(tmp_path / "run"), "model": str(tmp_path / "model"), "stages": [
        {"name": "rl", "type": "grpo", "data": data, "rewards": [{"name": "my_rewards:short_reward"}],
         "trainer": {"max_steps": 1}},
        {"name": "rs", "type": "sample", "data": data, "n": 2,
         "rewards": [{"name": "my_rewards:short_reward"}], "keep": {"verifiers": ["short_reward"]}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert _pipeline_cli(["pipeline", str(path), "--check"]) == 0, capsys.readouterr().err
    # the function's name is what a keep rule's verifiers refer to
    recipe["stages"][1]["keep"] = {"verifiers": ["nope"]}
    path.write_text(yaml.safe_dump(recipe))
    assert _pipeline_cli(["pipeline", str(path), "--check"]) == 2
    assert "verifiers ['nope'] are not among the rewards ['short_reward']" in capsys.readouterr().err
