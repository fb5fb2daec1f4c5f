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
                                    "grpo.recipes.countdown", "grpo.batch", "grpo.parallel"])
def test_module_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
