"""Tools and the tool environment: schemas, call parsing, and every way a call can go wrong,
answered to the model and recorded, never raised. The Python tool runs on the real sandbox, and
a few of tests/test_sandbox.py's attacks are replayed through the tool path."""

from __future__ import annotations

import os
import time

import pytest

from grpo.sandbox import SandboxLimits, sandbox_mode
from grpo.rollout.tools import (
    CodeBlockParser,
    EnvStep,
    HermesParser,
    ToolEnvironment,
    as_env_step,
    python_tool,
    tool_schema,
)

FAST = SandboxLimits(wall_time_s=3.0, cpu_time_s=3.0, memory_mb=256, max_processes=8, max_output_bytes=4096)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


def explode(x: int) -> int:
    """Always fails.

    Args:
        x: ignored
    """
    raise ValueError("boom")


def hang(seconds: float) -> str:
    """Sleeps.

    Args:
        seconds: how long
    """
    time.sleep(seconds)
    return "woke up"


def flood(n: int) -> str:
    """Prints a lot.

    Args:
        n: characters
    """
    return "x" * n


def call(name, **arguments):
    import json

    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def test_schema_is_transformers_json_schema_of_a_typed_documented_function():
    schema = tool_schema(multiply)
    assert schema["function"]["name"] == "multiply"
    assert schema["function"]["parameters"]["properties"]["a"] == {"type": "integer", "description": "the first factor"}
    assert schema["function"]["parameters"]["required"] == ["a", "b"]


def test_hermes_parser_reads_calls_and_names_what_is_malformed():
    p = HermesParser()
    assert [(c.name, c.arguments, c.error) for c in p.parse("hi " + call("multiply", a=2, b=3))] == \
        [("multiply", {"a": 2, "b": 3}, None)]
    assert p.parse("no call here") == []
    assert "not valid JSON" in p.parse("<tool_call>{name: x}</tool_call>")[0].error
    assert "must be" in p.parse('<tool_call>["multiply"]</tool_call>')[0].error
    assert "unclosed" in p.parse('<tool_call>{"name": "multiply"')[0].error
    # arguments given as a JSON string (some models do) are decoded
    assert p.parse('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')[0].arguments == {"a": 1}


def test_code_block_parser():
    p = CodeBlockParser()
    assert [(c.name, c.arguments) for c in p.parse("<python>1+1</python> and <python>2</python>")] == \
        [("python", {"code": "1+1"}), ("python", {"code": "2"})]
    assert p.parse("<python>1+").pop().error == "unclosed <python>"
    assert p.stop == ("</python>",)


def test_environment_runs_calls_and_ends_without_one():
    env = ToolEnvironment([multiply])
    env.reset(prompt="x")
    step = env.step("let me see " + call("multiply", a=6, b=7))
    assert not step.done and step.observations == [{"role": "tool", "content": "42"}]
    assert step.tool_calls[0].status == "ok" and step.tool_calls[0].arguments == {"a": 6, "b": 7}
    assert env.step("<answer>42</answer>").done


@pytest.mark.parametrize("message, status, says", [
    (call("divide", a=1, b=2), "unknown_tool", "unknown tool 'divide'; available: explode, flood, hang, multiply"),
    ("<tool_call>{oops</tool_call>", "malformed", "malformed tool call: tool call is not valid JSON"),
    (call("explode", x=1), "error", "Error: ValueError: boom"),
    (call("multiply", a=1), "error", "Error: TypeError"),  # a missing argument
    (call("hang", seconds=30), "timeout", "timed out after 0.3 s"),
])
def test_bad_calls_are_answered_and_recorded_not_raised(message, status, says):
    env = ToolEnvironment([multiply, explode, hang, flood], timeout_s=0.3)
    t0 = time.monotonic()
    step = env.step(message)
    assert time.monotonic() - t0 < 5
    assert not step.done and step.tool_calls[0].status == status
    assert says in step.observations[0]["content"]


def test_megabytes_of_tool_output_are_cut():
    env = ToolEnvironment([flood], max_output_chars=100)
    out = env.step(call("flood", n=5_000_000)).observations[0]["content"]
    assert out.startswith("x" * 100) and "4999900 more characters cut" in out and len(out) < 200


def test_too_many_calls_in_one_message_are_refused():
    env = ToolEnvironment([multiply], max_calls_per_turn=1)
    step = env.step(call("multiply", a=1, b=2) + call("multiply", a=3, b=4))
    assert [c.status for c in step.tool_calls] == ["ok", "error"]


def test_env_step_results_are_normalised():
    assert as_env_step(None).done
    assert as_env_step("obs").observations == [{"role": "tool", "content": "obs"}]
    with pytest.raises(TypeError, match="EnvStep, a str or None"):
        as_env_step(42)
    assert as_env_step(EnvStep(done=True)).done


# ---------------------------------------------------------------------------- the Python tool
def python_env():
    return ToolEnvironment([python_tool(FAST)], CodeBlockParser(), timeout_s=10)


def run(code: str):
    step = python_env().step(f"<python>{code}</python>")
    return step.tool_calls[0].status, step.observations[0]["content"]


def test_python_tool_prints_and_shows_the_last_expression():
    assert run("x = 6\nprint('x is', x)\nx * 7") == ("ok", "x is 6\n42")
    assert run("123*45") == ("ok", "5535")
    assert run("None") == ("ok", "")


def test_python_errors_come_back_as_text():
    status, out = run("1/0")
    assert status == "error" and "ZeroDivisionError" in out and "exit status 1" in out
    status, out = run("def f(:")
    assert status == "error" and "SyntaxError" in out


def test_python_infinite_loop_times_out():
    """Whichever of the two limits (3 s wall, 3 s CPU) stops the loop first, it is a timeout."""
    t0 = time.monotonic()
    status, out = run("while True: pass")
    assert status == "timeout" and ("timed out" in out or "SIGXCPU" in out) and time.monotonic() - t0 < 8


def test_python_cpu_limit_is_a_timeout():
    env = ToolEnvironment([python_tool(SandboxLimits(wall_time_s=20.0, cpu_time_s=1.0, memory_mb=256))],
                          CodeBlockParser(), timeout_s=30)
    step = env.step("<python>while True: pass</python>")
    assert step.tool_calls[0].status == "timeout" and "SIGXCPU" in step.observations[0]["content"]


def test_python_megabytes_of_output_are_cut():
    status, out = run("print('y' * 10_000_000)")
    assert len(out) < 2200 and out.startswith("yyyy") and "more characters cut" in out


def test_no_state_survives_a_call_so_trajectories_cannot_see_each_other():
    # one trajectory's code writes a file, sets a global and starts a process...
    assert run("open('note.txt', 'w').write('secret')\nimport builtins\nbuiltins.LEAK = 1\n'written'")[0] == "ok"
    # ...another's sees none of it
    status, out = run("import os, builtins\nprint(os.listdir('.'), hasattr(builtins, 'LEAK'))")
    assert status == "ok" and out == "[] False"


# attacks from tests/test_sandbox.py, through the tool path
def test_attack_fork_bomb_through_the_tool():
    status, _ = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert status in ("timeout", "error")
    assert os.system("true") == 0


def test_attack_killing_the_host_through_the_tool():
    me = os.getpid()
    status, out = run(f"import os, signal\ntry:\n    os.kill({me}, signal.SIGKILL)\n    print('sent')\n"
                      "except OSError as e:\n    print('refused', type(e).__name__)")
    assert status == "ok" and "refused" in out and os.getpid() == me


def test_attack_reading_host_files_through_the_tool():
    status, out = run("try:\n    print(len(open('/root/.bashrc').read()))\nexcept OSError as e:\n"
                      "    print('refused', type(e).__name__)\nopen('/etc/shadow').read()")
    assert status == "error" and ("PermissionError" in out or "FileNotFoundError" in out)


def test_attack_memory_bomb_through_the_tool():
    status, out = run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))")
    assert status == "error" and "MemoryError" in out
