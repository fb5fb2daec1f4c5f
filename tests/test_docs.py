"""The documentation runs: every ```python block of docs/math.md (in order, one namespace) and
the doctests of the math and guard modules."""

import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_math_md_examples_run():
    text = (ROOT / "docs" / "math.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 10
    namespace: dict = {}
    exec("import math, torch, pytest\nfrom dataclasses import replace\n"
         "from grpo.advantages import *\nfrom grpo.advantages import ADVANTAGE_ESTIMATORS, register_advantage_estimator, "
         "groups_with_signal\nfrom grpo.loss import *\nfrom grpo.loss import AGGREGATIONS, aggregation_denominator\n"
         "from grpo.logprobs import *\n", namespace)
    for i, block in enumerate(blocks):
        try:
            exec(block, namespace)
        except Exception as e:  # noqa: BLE001 -- re-raised with the block that failed
            raise AssertionError(f"docs/math.md python block {i} failed: {e!r}\n{block}") from e


@pytest.mark.parametrize("module", ["grpo.advantages", "grpo.loss", "grpo.models", "grpo.textstats",
                                    "grpo.recipes.countdown", "grpo.batch", "grpo.parallel",
                                    "grpo.source", "grpo.rollout.sampling", "grpo.recipes.errors",
                                    "grpo.scaling"])
def test_module_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_every_logged_metric_is_documented(tmp_path):
    """Each key a real run logs (plain, with dynamic sampling) is in docs/metrics.md: in full, or
    as its namespace plus its last part (the docs abbreviate rows as `ns/a`, `/b`)."""
    from grpo import GRPOConfig, GRPOTrainer
    from grpo.rewards import FormatReward, Reward
    from grpo.tiny import save_tiny_model
    from grpo.tracking import read_jsonl

    class Checksum(Reward):
        def score(self, completion, **example):
            return sum(map(ord, completion)) % 13 / 13

    text = (ROOT / "docs" / "metrics.md").read_text()
    model = save_tiny_model(tmp_path / "m", hidden_size=64, num_heads=2, head_dim=32)
    keys = set()
    for name, extra in (("plain", {}), ("dyn", {"dynamic_sampling": True, "beta": 0.01})):
        cfg = GRPOConfig(output_dir=str(tmp_path / name), num_generations=4, prompts_per_step=2, max_steps=1,
                         max_completion_length=6, progress_bar=False, save_final_model=False, **extra)
        trainer = GRPOTrainer(str(model), [Checksum(), FormatReward()], [{"prompt": f"p{i}"} for i in range(4)], cfg,
                              eval_dataset=[{"prompt": "q"}])
        trainer.train()
        trainer.close()
        for record in read_jsonl(tmp_path / name / "metrics.jsonl") + read_jsonl(tmp_path / name / "eval.jsonl"):
            keys |= set(record) - {"step"}
    missing = []
    for key in sorted(keys):
        generic = key.replace("/checksum/", "/<name>/").replace("/format_reward/", "/<name>/")
        generic = re.sub(r"(mean|pass|cons)@\d+", r"\1@k", generic)
        generic = generic.replace("pass@k", "pass@j").replace("cons@k", "cons@j")
        ns, last = generic.split("/", 1)[0], generic.rsplit("/", 1)[-1]
        if f"`{generic}`" in text or (f"`{ns}/" in text and (f"/{last}`" in text or f"`{last}`" in text)):
            continue
        missing.append(key)
    assert not missing, f"metrics logged but not in docs/metrics.md: {missing}"
