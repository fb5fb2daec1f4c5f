"""Tools and the tool environment: schemas, call parsing, and every way a call can go wrong,
answered to the model and recorded, never raised. The Python tool runs on the real sandbox, and
a few of tests/test_sandbox.py's attacks are replayed through the tool path."""

from __future__ import annotations

import os
import time

import pytest

from typing import Any, Literal, Optional

from grpo.sandbox import SandboxLimits, sandbox_mode
from grpo.rollout import HFGenerator, SamplingConfig
from grpo.rollout.multiturn import MultiTurnGenerator
from grpo.rollout.tools import (
    CodeBlockParser,
    EnvStep,
    HermesParser,
    ToolEnvironment,
    as_env_step,
    python_tool,
    tool_schema,
)
from grpo.tiny import build_char_tokenizer, build_tiny_llama

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
    (call("multiply", a=1), "error", "Error: tool 'multiply': missing argument 'b' (int)"),
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


# ---------------------------------------------------------------------------- typed arguments
RAN: list = []  # the calls that reached the tool's body


def typed(x: float, s: str, flag: bool = False, o: Optional[int] = None, items: list[int] | None = None,
          mode: Literal["sum", "max"] = "sum", pair: tuple[int, float] | None = None,
          table: dict[str, int] | None = None, anything: Any = None) -> str:
    """Echoes what it was called with.

    Args:
        x: a number
        s: a string
        flag: a switch
        o: an optional integer
        items: integers
        mode: how to combine
        pair: an integer and a number
        table: integers by name
        anything: not checked
    """
    RAN.append(x)
    return repr((x, s, flag, o, items, mode, pair, table, anything))


def loose(a: int, **options) -> str:
    """Takes any extra keyword.

    Args:
        a: an integer
    """
    return repr(sorted(options))


@pytest.mark.parametrize("arguments, output", [
    # the conversions: a JSON integer for a float (JSON has one number type), an array for a tuple
    ({"x": 2, "s": "a"}, "(2.0, 'a', False, None, None, 'sum', None, None, None)"),
    ({"x": 2.5, "s": "", "flag": True, "o": None, "items": [1, 2], "mode": "max", "pair": [1, 2],
      "table": {"k": 3}, "anything": {"z": [None]}},
     "(2.5, '', True, None, [1, 2], 'max', (1, 2.0), {'k': 3}, {'z': [None]})"),
    ({"x": 1.0, "s": "a", "o": 7, "items": []}, "(1.0, 'a', False, 7, [], 'sum', None, None, None)"),
])
def test_arguments_matching_the_typed_signature_are_passed_on(arguments, output):
    step = ToolEnvironment([typed]).step(call("typed", **arguments))
    assert (step.tool_calls[0].status, step.observations[0]["content"]) == ("ok", output)


@pytest.mark.parametrize("arguments, says", [
    ({"x": "2", "s": "a"}, """argument 'x' expects float, got str ("2")"""),  # no string coercion
    ({"x": 1, "s": 3}, "argument 's' expects str, got int (3)"),
    ({"x": 1, "s": "a", "flag": 1}, "argument 'flag' expects bool, got int (1)"),
    ({"x": 1, "s": "a", "flag": "true"}, """argument 'flag' expects bool, got str ("true")"""),
    ({"x": True, "s": "a"}, "argument 'x' expects float, got bool (true)"),  # a JSON bool is no number
    ({"x": 1, "s": "a", "o": "7"}, """argument 'o' expects int | None, got str ("7")"""),
    ({"x": 1, "s": "a", "o": 7.0}, "argument 'o' expects int | None, got float (7.0)"),
    ({"x": 1, "s": "a", "items": [1, "2"]}, """argument 'items' expects list[int] | None, got list ([1, "2"])"""),
    ({"x": 1, "s": "a", "items": "[1, 2]"}, "argument 'items' expects list[int] | None, got str"),
    ({"x": 1, "s": "a", "mode": "mean"}, """argument 'mode' expects one of 'sum', 'max', got str ("mean")"""),
    ({"x": 1, "s": "a", "pair": [1, 2, 3]}, "argument 'pair' expects tuple[int, float] | None, got list"),
    ({"x": 1, "s": "a", "table": {"k": "3"}}, "argument 'table' expects dict[str, int] | None, got dict"),
    ({"s": "a"}, "missing argument 'x' (float)"),
    ({"x": 1, "s": "a", "y": 2}, "unknown argument 'y' (parameters: x: float, s: str, flag: bool, o: int | None"),
])
def test_arguments_that_do_not_match_are_an_error_observation_and_the_tool_is_not_called(arguments, says):
    RAN.clear()
    step = ToolEnvironment([typed]).step(call("typed", **arguments))
    (record,) = step.tool_calls
    assert record.status == "error" and record.arguments == arguments and RAN == []
    out = step.observations[0]["content"]
    assert out.startswith("Error: tool 'typed': ") and says in out and record.output == out


def test_the_issue_case_a_string_for_an_int_is_refused_not_multiplied():
    """{"a": "3"} for a: int gave '3333' with status ok (str * 4)."""
    step = ToolEnvironment([multiply]).step(call("multiply", a="3", b=4) + call("multiply", a=3, b=4))
    assert [(c.status, c.output) for c in step.tool_calls] == [
        ("error", """Error: tool 'multiply': argument 'a' expects int, got str ("3")"""), ("ok", "12")]


def test_every_problem_of_a_call_is_named_at_once():
    out = ToolEnvironment([multiply]).step(call("multiply", a=True, c=1)).observations[0]["content"]
    assert out == ("Error: tool 'multiply': argument 'a' expects int, got bool (true); "
                   "unknown argument 'c' (parameters: a: int, b: int); missing argument 'b' (int)")


def test_extra_arguments_go_to_a_tool_that_takes_kwargs():
    step = ToolEnvironment([loose]).step(call("loose", a=1, z=2, y=3))
    assert (step.tool_calls[0].status, step.observations[0]["content"]) == ("ok", "['y', 'z']")


class Point:
    pass


def test_an_annotation_that_cannot_be_checked_is_refused_when_the_tool_is_registered():
    def place(p: Point) -> str:
        return ""

    with pytest.raises(TypeError, match="tool 'place': parameter 'p' is annotated Point, which tool arguments "
                                        "cannot be checked against"):
        ToolEnvironment([place])
    # ...and when the generator is built, even without the schema rendered
    with pytest.raises(TypeError, match="parameter 'p' is annotated Point"):
        MultiTurnGenerator(tiny_generator(), tools=[place], render_tools=False)


# ---------------------------------------------------------------------------- environment=
def tiny_generator():
    tok = build_char_tokenizer()
    return HFGenerator(build_tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, head_dim=16, seed=0), tok)


class Counter:
    """A stateful environment: counts the messages of its trajectory."""

    def __init__(self):
        self.seen = 0

    def reset(self, **row):
        self.seen = 0

    def step(self, message):
        self.seen += 1
        return None


class NoStep:
    def reset(self, **row):
        pass


SHARED = Counter()


@pytest.mark.parametrize("environment, says", [
    (ToolEnvironment([multiply]), "environment= must be a class or a function of no arguments, called once per "
                                  "trajectory to make a fresh environment .trl's environment_factory.; got a "
                                  "ToolEnvironment instance: pass the class .environment=MyEnv. or a function that "
                                  "builds a new one .environment=lambda: MyEnv"),
    (Counter(), "got a Counter instance"),
    (ToolEnvironment, "environment=ToolEnvironment is called with no arguments for each trajectory, but it needs "
                      r"arguments .missing a required argument: 'tools'.: .* for tools, pass tools=\[\.\.\.\] instead"),
    (lambda row: Counter(), "environment=<lambda> is called with no arguments"),
    (NoStep, "environment=NoStep has no step method"),
    (lambda: "not an environment", "returned a str, which has no reset or step method"),
    (lambda: SHARED, "returned the same Counter object twice; every trajectory needs its own"),
])
def test_a_wrong_environment_is_refused_when_the_generator_is_built(environment, says):
    with pytest.raises(TypeError, match=says):
        MultiTurnGenerator(tiny_generator(), environment=environment)


@pytest.mark.parametrize("environment", [Counter, lambda: Counter(), lambda: ToolEnvironment([multiply])])
def test_a_class_or_a_factory_makes_one_environment_per_trajectory(environment):
    gen = MultiTurnGenerator(tiny_generator(), environment=environment, max_turns=2)
    out = gen.generate([[{"role": "user", "content": "2*3"}]], 3, SamplingConfig(max_tokens=6, seed=0))
    assert len(out) == 3 and len({id(t.environment) for t in out}) == 3
    gen.close()


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
