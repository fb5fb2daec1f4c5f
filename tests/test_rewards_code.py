"""CodeReward: extraction, test formats, scoring, and reward hacking through the real sandbox."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from grpo.rewards import (
    OK,
    UNSCORABLE,
    CodeReward,
    SandboxLimits,
    ScoringPool,
    extract_code,
    set_pool,
)
from grpo.rewards.code import normalize_output, parse_tests
from grpo.sandbox import sandbox_mode

ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]
LIMITS = SandboxLimits(wall_time_s=4, cpu_time_s=4, memory_mb=256)


def fenced(src: str, tag: str = "python") -> str:
    return f"Here is my solution.\n```{tag}\n{src}\n```\n"


@pytest.fixture(scope="module")
def reward():
    return CodeReward(limits=LIMITS, test_timeout_s=1.0)


# ------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize(
    "text, expected",
    [
        (fenced("x = 1"), "x = 1\n"),
        (fenced("a = 1") + fenced("b = 2", "py"), "b = 2\n"),  # the last python block
        (fenced("a = 1") + fenced("echo hi", "bash"), "a = 1\n"),  # other languages skipped
        (fenced("u = 1", ""), "u = 1\n"),  # untagged when no python block
        (fenced("u = 1", "") + fenced("p = 1"), "p = 1\n"),  # a tagged block wins
        ("<think>" + fenced("draft = 1") + "</think>" + fenced("final = 1"), "final = 1\n"),
        ("<think>" + fenced("draft = 1") + "</think> no code", None),  # drafts are not answers
        ("```python\nunclosed = 1\n", None),
        ("no code at all", None),
        (fenced("   "), None),
    ],
)
def test_extract_code(text, expected):
    assert extract_code(text) == expected


def test_parse_tests_formats():
    assert parse_tests(ADD_TESTS) == ("assert", ADD_TESTS)
    assert parse_tests("import math\nassert f(1) == 1\nassert f(2) == 2\n") == (
        "assert",
        ["import math\nassert f(1) == 1", "import math\nassert f(2) == 2"],
    )
    assert parse_tests("def check(c):\n    assert c(1) == 1\ncheck(f)\n")[1] == [
        "def check(c):\n    assert c(1) == 1\ncheck(f)\n"
    ]  # not plain asserts: one test
    assert parse_tests([{"input": "1 2", "output": "3"}]) == ("io", [("1 2", "3")])
    assert parse_tests({"inputs": ["1\n"], "outputs": ["1\n"]}) == ("io", [("1\n", "1\n")])
    assert parse_tests(json.dumps({"inputs": ["a"], "outputs": ["b"]})) == ("io", [("a", "b")])
    assert parse_tests(json.dumps(ADD_TESTS)) == ("assert", ADD_TESTS)


def test_normalize_output():
    assert normalize_output("1 2 \n3\n\n") == normalize_output("1 2\n3") == "1 2\n3"
    assert normalize_output("1\n2") != normalize_output("1 2")


# ------------------------------------------------------------------------------ scoring
def test_pass_fraction_and_all_or_nothing(reward):
    right = fenced("def add(a, b):\n    return a + b")
    half = fenced("def add(a, b):\n    return a + b if a >= 0 else 99")
    assert reward.score_batch([right, half], [{"tests": ADD_TESTS}] * 2)[0].value == 1.0
    res = reward.score_batch([half], [{"tests": ADD_TESTS}])[0]
    assert res.value == pytest.approx(2 / 3) and res.reason.startswith("2/3 tests passed")
    strict = CodeReward(mode="all", limits=LIMITS)
    assert [r.value for r in strict.score_batch([right, half], [{"tests": ADD_TESTS}] * 2)] == [
        1.0,
        0.0,
    ]


def test_stdin_stdout_cases(reward):
    program = fenced("a, b = map(int, input().split())\nprint(a + b)")
    cases = [
        {"input": "1 2\n", "output": "3\n"},
        {"input": "5 5", "output": "10"},
        {"input": "2 2", "output": "5"},
    ]
    res = reward.score_batch([program], [{"tests": cases}])[0]
    assert res.value == pytest.approx(2 / 3) and "case 2: wrong output" in res.reason


def test_no_code_is_wrong_and_no_tests_is_unscorable(reward):
    res = reward.score_batch(
        ["I would write a loop.", fenced("x = 1"), fenced("x = 1")],
        [{"tests": ADD_TESTS}, {"tests": []}, {}],
    )
    assert res[0].value == 0.0 and "no ```python" in res[0].reason
    assert [r.status for r in res[1:]] == [UNSCORABLE, UNSCORABLE]


def test_sandbox_failure_is_unscorable_not_zero(tmp_path, monkeypatch):
    sandbox_mode()  # probed with the real interpreter
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    tmp_path.chmod(0o755)
    monkeypatch.setenv("GRPO_SANDBOX_PYTHON", str(fake))
    r = CodeReward(limits=LIMITS, parallel=False)
    res = r.score_with_reason(fenced("def add(a, b):\n    return a + b"), tests=ADD_TESTS)
    assert res.status == UNSCORABLE and "sandbox setup failed" in res.reason


def test_syntax_error_and_crashing_program_score_zero(reward):
    res = reward.score_batch(
        [fenced("def add(a, b) return"), fenced("raise SystemExit(3)")], [{"tests": ADD_TESTS}] * 2
    )
    assert [r.value for r in res] == [0.0, 0.0]
    assert "SyntaxError" in res[0].reason and "SystemExit" in res[1].reason


# ------------------------------------------------------------------------------ reward hacking
HACKS = {
    "exit_zero": "import sys\nsys.exit(0)\ndef add(a, b):\n    return None",
    "os_exit_zero": "import os\nos._exit(0)",
    "print_passes": "print('3/3 tests passed')\nprint('test 0 pass')\ndef add(a, b):\n    return None",
    "patch_builtins": "import builtins\nbuiltins.AssertionError = None\nbuiltins.exec = print\n"
    "def add(a, b):\n    return None",
    "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
    "def add(a, b):\n    return None",
    "infinite_loop": "while True:\n    pass",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
}


@pytest.mark.parametrize("prefork", [True, False], ids=["prefork", "per-run"])
def test_hacks_through_code_reward_score_zero_and_do_not_hang(prefork):
    if prefork and sandbox_mode() != "namespaces":
        pytest.skip("pre-forking needs the namespaces mode")
    reward = CodeReward(limits=LIMITS, test_timeout_s=1.0, prefork=prefork)
    honest = fenced("def add(a, b):\n    return a + b")
    completions = [fenced(src) for src in HACKS.values()] + [honest]
    t = time.monotonic()
    res = reward.score_batch(completions, [{"tests": ADD_TESTS}] * len(completions))
    took = time.monotonic() - t
    assert {name: r.value for name, r in zip(HACKS, res)} == {name: 0.0 for name in HACKS}
    assert res[-1].value == 1.0 and all(r.status == OK for r in res)
    assert took < 2 * LIMITS.wall_time_s + 6  # the two slow hacks run in parallel workers


def test_runs_in_parallel_across_workers():
    # 4 completions that each take 1 s: 2 pool workers finish in ~2 s, one at a time would be 4 s
    slow = fenced("import time\ntime.sleep(1)\ndef add(a, b):\n    return a + b")
    r = CodeReward(limits=LIMITS)
    r.score_batch([slow], [{"tests": ADD_TESTS[:1]}])  # warm the pool
    t = time.monotonic()
    res = r.score_batch([slow] * 4, [{"tests": ADD_TESTS[:1]}] * 4)
    assert [x.value for x in res] == [1.0] * 4
    assert time.monotonic() - t < 3.95  # one at a time: >= 4 s of sleeping alone


def test_results_go_to_their_own_items_when_runs_end_out_of_order():
    # item i sleeps less the larger i is; even items' tests match their program, odd ones not
    n = 8
    completions = [fenced(f"import time\ntime.sleep({(n - i) * 0.05})\ndef f():\n    return {i}")
                   for i in range(n)]
    rows = [{"tests": [f"assert f() == {i if i % 2 == 0 else i + 100}"]} for i in range(n)]
    res = CodeReward(limits=LIMITS).score_batch(completions, rows)
    assert [x.value for x in res] == [1.0 - i % 2 for i in range(n)]


def zygotes_of(pid: int) -> list[int]:
    """Children of ``pid`` that launch a sandbox zygote."""
    found = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if b"sandbox/zygote.py" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
        except FileNotFoundError:
            continue
    return found


def test_each_pool_worker_has_a_zygote_that_dies_with_it():
    if sandbox_mode() != "namespaces":
        pytest.skip("pre-forking needs the namespaces mode")
    pool = ScoringPool(workers=2)
    set_pool(pool)
    try:
        r = CodeReward(limits=LIMITS, prefork=True)
        right = fenced("def add(a, b):\n    return a + b")
        rows = [{"tests": ADD_TESTS}] * 8
        assert [x.value for x in r.score_batch([right] * 8, rows)] == [1.0] * 8
        zygotes = {w: zygotes_of(w) for w in pool.pids}  # each worker started its own
        assert all(len(z) == 1 for z in zygotes.values()), zygotes
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)  # as the pool does to a worker past its time limit
        [zygote] = zygotes[victim]
        stat = Path(f"/proc/{zygote}/stat")
        end = time.monotonic() + 5  # its socket closed: it kills its runs and exits
        while stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < end, "the zygote outlived its worker"
            time.sleep(0.05)
        assert [x.value for x in r.score_batch([right] * 8, rows)] == [1.0] * 8  # a new one
    finally:
        set_pool(None)
