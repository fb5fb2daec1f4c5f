"""Code reward: extract the program, run the example's tests in the sandbox, score the passes.

The code-RL counterpart of R1's accuracy reward (DeepSeek-R1, arXiv:2501.12948 §2.2.2: "for
LeetCode problems, a compiler can be used to generate feedback based on predefined test
cases"). The program never runs in this process: see :mod:`grpo.sandbox`.

Extraction: the last fenced code block whose language tag matches (```python, ```py, ...),
else the last untagged block; text inside ``<think>...</think>`` is skipped when the
completion closes its thinking (drafts in the chain of thought are not the answer).

Tests (field ``tests_key`` of the example), either

* assert-style Python run after the program: a list of strings (one test each), or one string
  (each top-level ``assert`` is a test; statements before the first assert, e.g. imports, are
  set-up run before each test; any other layout is one test); or
* stdin/stdout cases: a list of ``{"input": ..., "output": ...}`` or a dict
  ``{"inputs": [...], "outputs": [...]}``; the program runs once per case, as ``__main__``,
  and passes a case if it exits with status 0 and its stdout equals the expected output up to
  trailing whitespace on each line and trailing blank lines.

A JSON string holding either form is decoded first (datasets often store tests that way).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from grpo.rewards.base import Reward, ScoreResult, Unscorable
from grpo.sandbox import SandboxLimits, run_python, run_tests

_FENCE_RE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
LANGUAGE_TAGS = {"python": {"python", "py", "python3", "py3"}}


def extract_code(text: str, language: str = "python", *, after_think: bool = True) -> str | None:
    """The last fenced code block in ``language`` (else the last untagged block), or None.

    >>> extract_code("draft ```python\\nx = 1\\n``` final:\\n```py\\nprint(2)\\n```")
    'print(2)\\n'
    """
    if after_think and "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    tags = LANGUAGE_TAGS.get(language, {language})
    tagged = untagged = None
    for m in _FENCE_RE.finditer(text):
        tag = m.group(1).lower()
        if tag in tags:
            tagged = m.group(2)
        elif not tag:
            untagged = m.group(2)
    code = tagged if tagged is not None else untagged
    return code if code and code.strip() else None


def parse_tests(tests: Any) -> tuple[Literal["assert", "io"], list]:
    """Normalise a tests field to ("assert", [code, ...]) or ("io", [(stdin, stdout), ...])."""
    if isinstance(tests, str) and tests.lstrip()[:1] in ("[", "{"):
        try:
            return parse_tests(json.loads(tests))
        except json.JSONDecodeError:
            pass  # Python code that starts with a list or dict display
    if isinstance(tests, Mapping) and "inputs" in tests and "outputs" in tests:
        ins, outs = tests["inputs"], tests["outputs"]
        if len(ins) != len(outs):
            raise Unscorable(f"tests have {len(ins)} inputs but {len(outs)} outputs")
        return "io", [(_text(i), _text(o)) for i, o in zip(ins, outs, strict=True)]
    if isinstance(tests, str):
        return "assert", _split_asserts(tests)
    if isinstance(tests, Sequence) and tests:
        if all(isinstance(t, Mapping) and "input" in t and "output" in t for t in tests):
            return "io", [(_text(t["input"]), _text(t["output"])) for t in tests]
        if all(isinstance(t, str) for t in tests):
            return "assert", list(tests)
    raise Unscorable(f"unrecognised tests format: {str(tests)[:80]!r}")


def _text(x: Any) -> str:
    return x if isinstance(x, str) else "\n".join(map(str, x)) if isinstance(x, list) else str(x)


def _split_asserts(code: str) -> list[str]:
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return [code]  # it will fail in the sandbox, as it should
    first = next((i for i, node in enumerate(body) if isinstance(node, ast.Assert)), None)
    if first is None or not all(isinstance(n, ast.Assert) for n in body[first:]):
        return [code]
    setup = "".join(ast.get_source_segment(code, n) + "\n" for n in body[:first])
    return [setup + ast.get_source_segment(code, n) for n in body[first:]]


def normalize_output(text: str) -> str:
    """Trailing whitespace of each line and trailing blank lines do not count."""
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


class CodeReward(Reward):
    """Fraction of tests passed (``mode="fraction"``) or 1.0 only if all pass (``mode="all"``).

    Args:
        tests_key: example field holding the tests (see module docstring).
        language: fence language to extract; only Python is executed by this sandbox.
        mode: ``"fraction"`` (dense signal) or ``"all"`` (R1's pass/fail; stdin cases stop at
            the first failure).
        limits: sandbox limits of each run (one run per completion for assert tests, one per
            case for stdin/stdout tests).
        test_timeout_s: per-test time limit inside an assert-style run.
        after_think: ignore code inside a closed ``<think>`` block.
        prefork: False runs each program through the sandbox's per-run path (a fresh
            interpreter and namespaces per run) instead of forking it from a zygote; None: the
            sandbox's default (:func:`~grpo.sandbox.sandbox_prefork`).

    Sandbox failures (the sandbox could not be built) are unscorable, never 0.0.
    """

    parallel = True

    def __init__(
        self,
        tests_key: str = "tests",
        *,
        language: str = "python",
        mode: Literal["fraction", "all"] = "fraction",
        limits: SandboxLimits | None = None,
        test_timeout_s: float = 5.0,
        after_think: bool = True,
        prefork: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if language != "python":
            raise ValueError("only Python programs can be executed by grpo's sandbox")
        if mode not in ("fraction", "all"):
            raise ValueError(f"mode must be 'fraction' or 'all', got {mode!r}")
        self.tests_key = tests_key
        self.language = language
        self.mode = mode
        self.limits = limits or SandboxLimits()
        self.test_timeout_s = test_timeout_s
        self.after_think = after_think
        self.prefork = prefork
        # pool backstop: generous, the sandbox's own wall limit normally ends a run first
        kwargs.setdefault("time_limit", 8 * self.limits.wall_time_s + 10)
        super().__init__(**kwargs)

    def score(self, completion: str, **example: Any) -> float:
        return self._score(completion, example).value  # type: ignore[return-value]

    def score_with_reason(self, completion: str | None, **example: Any) -> ScoreResult:
        if completion is None:
            return ScoreResult.unscorable("completion is None")
        try:
            return self._score(completion, example)
        except Unscorable as u:
            return ScoreResult.unscorable(u.reason)

    def _score(self, completion: str, example: Mapping[str, Any]) -> ScoreResult:
        tests = example.get(self.tests_key)
        if tests is None or (isinstance(tests, (str, list, tuple, dict)) and len(tests) == 0):
            raise Unscorable(f"no tests in field {self.tests_key!r}")
        kind, cases = parse_tests(tests)
        program = extract_code(completion, self.language, after_think=self.after_think)
        if program is None:
            return ScoreResult(0.0, reason=f"no ```{self.language} code block found")
        if kind == "assert":
            return self._score_asserts(program, cases)
        return self._score_io(program, cases)

    def _score_asserts(self, program: str, tests: list[str]) -> ScoreResult:
        run = run_tests(
            program,
            tests,
            limits=self.limits,
            test_timeout_s=self.test_timeout_s,
            prefork=self.prefork,
        )
        if run.result.setup_failed:
            raise Unscorable(run.result.describe())
        passed = sum(run.passed)
        note = f"{passed}/{len(tests)} tests passed"
        if run.program_error:
            note += f"; the program raised {run.program_error} while loading"
        if run.tampered:
            note += "; the verdict channel was tampered with: all tests failed"
        elif len(run.result.verdicts) < len(tests) + 3:  # ready, program-ok, tests, done
            note += f"; the run ended early ({run.result.describe()})"
        return ScoreResult(self._value(passed, len(tests)), reason=note)

    def _score_io(self, program: str, cases: list[tuple[str, str]]) -> ScoreResult:
        passed, first_failure = 0, None
        for i, (stdin, expected) in enumerate(cases):
            res = run_python(program, stdin=stdin, limits=self.limits, prefork=self.prefork)
            if res.setup_failed:
                raise Unscorable(res.describe())
            if res.ok and normalize_output(res.stdout) == normalize_output(expected):
                passed += 1
                continue
            if first_failure is None:
                first_failure = f"case {i}: " + ("wrong output" if res.ok else res.describe())
            if self.mode == "all":
                break
        note = f"{passed}/{len(cases)} cases passed"
        if first_failure:
            note += f"; {first_failure}"
        return ScoreResult(self._value(passed, len(cases)), reason=note)

    def _value(self, passed: int, total: int) -> float:
        if self.mode == "all":
            return float(passed == total)
        return passed / total
