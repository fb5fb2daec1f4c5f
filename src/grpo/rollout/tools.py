"""Tools and environments for multi-turn rollouts: what a user writes.

Two forms, the ones trl users know:

* **tools**: plain typed functions with a Google-style docstring. Their JSON schema (what a chat
  template such as Qwen2.5's renders into the system prompt) comes from
  ``transformers.utils.get_json_schema``, the same function trl and ``apply_chat_template(tools=)``
  use::

      def multiply(a: int, b: int) -> int:
          '''Multiply two integers.

          Args:
              a: the first factor
              b: the second factor
          '''
          return a * b

* **an environment** for anything stateful: an object with ``reset(**row)`` (called with the
  trajectory's dataset row) and ``step(message) -> EnvStep | str | None`` (called with each
  assistant message; a string is the observation shown to the model, None ends the trajectory).
  A fresh instance serves each trajectory, so one trajectory never sees another's state.

A list of tools becomes the environment :class:`ToolEnvironment`: it parses the tool calls in a
message (a :class:`ToolCallParser`), runs them, each on its own thread with a time limit, and
returns their results as ``tool`` messages; a message without a call ends the trajectory. Bad
calls never raise: a malformed call, an unknown tool, arguments that do not match the tool's typed
signature (:mod:`grpo.rollout.tool_args`), a tool that raises or hangs gives the model
an ``Error: ...`` result and a :class:`ToolCall` record with the status, and the run goes on.

:func:`python_tool` runs model-written code in :func:`grpo.sandbox.run_python`, the
isolation CodeReward uses. There is no persistent interpreter session: each call is a fresh
sandboxed process, so nothing (state, files, processes) survives a call, and one trajectory's
code can never see another's. Code that needs earlier results recomputes them.
"""

from __future__ import annotations

import json
import re
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from grpo.rollout.tool_args import check_arguments, tool_signature

# ToolCall.status values
OK, ERROR, TIMEOUT, UNKNOWN_TOOL, MALFORMED = "ok", "error", "timeout", "unknown_tool", "malformed"
CALL_STATUSES = (OK, ERROR, TIMEOUT, UNKNOWN_TOOL, MALFORMED)


@dataclass(frozen=True)
class ToolCall:
    """One tool call of a trajectory, as parsed and as answered."""

    name: str  # "" when the call could not be parsed
    arguments: Mapping[str, Any]
    output: str  # what the model was shown (already cut to the output limit)
    status: str = OK  # one of CALL_STATUSES
    turn: int = 0  # the assistant turn (0-based) that made the call
    seconds: float = 0.0


@dataclass(frozen=True)
class EnvStep:
    """What an environment answers to one assistant message."""

    observations: Sequence[Mapping[str, str]] = ()
    """Messages shown to the model next (``{"role": "tool", "content": ...}`` usually)."""
    done: bool = False
    """True: the trajectory ends after this message; ``observations`` are then not shown."""
    tool_calls: Sequence[ToolCall] = ()
    """The calls the message made (for metrics and rewards)."""
    info: Mapping[str, Any] = field(default_factory=dict)
    """Anything a reward may want (merged into the trajectory's ``info``)."""


@runtime_checkable
class Environment(Protocol):
    """A stateful environment; one instance per trajectory."""

    def reset(self, **row: Any) -> None:
        """Start a trajectory for this dataset row (its fields as keywords)."""

    def step(self, message: str) -> EnvStep | str | None:
        """Answer one assistant message: an :class:`EnvStep`, an observation string (shown as a
        ``tool`` message), or None to end the trajectory."""


class ToolError(Exception):
    """Raised by a tool to report a failure with the text to show the model and a status
    (``"error"`` or ``"timeout"``): e.g. sandboxed code that crashed or ran out of time."""

    def __init__(self, output: str, status: str = ERROR):
        super().__init__(output)
        self.output, self.status = output, status


def as_env_step(result: EnvStep | str | None, role: str = "tool") -> EnvStep:
    """Normalise what ``Environment.step`` returned."""
    if result is None:
        return EnvStep(done=True)
    if isinstance(result, str):
        return EnvStep(observations=[{"role": role, "content": result}])
    if isinstance(result, EnvStep):
        return result
    raise TypeError(
        f"Environment.step must return an EnvStep, a str or None, got {type(result).__name__}"
    )


# ---------------------------------------------------------------------------- parsing calls
@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: dict[str, Any]
    error: str | None = None  # set when the call was recognised but is malformed


class ToolCallParser(Protocol):
    stop: tuple[str, ...]
    """Strings that close a call: sampling may stop there (``stop_at_call``)."""

    def parse(self, message: str) -> list[ParsedCall]: ...


class HermesParser:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, the format of the
    Hermes / Qwen2.5 chat templates. An unclosed block at the end of a message is malformed."""

    def __init__(self, open_tag: str = "<tool_call>", close_tag: str = "</tool_call>"):
        self.open_tag, self.close_tag = open_tag, close_tag
        self.stop = (close_tag,)
        self._block = re.compile(
            re.escape(open_tag) + r"(.*?)(?:" + re.escape(close_tag) + r"|\Z)", re.S
        )

    def parse(self, message: str) -> list[ParsedCall]:
        calls = []
        for m in self._block.finditer(message):
            body, closed = m.group(1).strip(), m.group(0).endswith(self.close_tag)
            if not closed:
                calls.append(ParsedCall("", {}, f"unclosed {self.open_tag}"))
                continue
            try:
                obj = json.loads(body)
            except json.JSONDecodeError as e:
                calls.append(
                    ParsedCall("", {}, f"tool call is not valid JSON ({e.msg} at char {e.pos})")
                )
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
                calls.append(
                    ParsedCall("", {}, 'a tool call must be {"name": str, "arguments": {...}}')
                )
                continue
            args = obj.get("arguments", {})
            if isinstance(args, str):  # some models emit the arguments as a JSON string
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    pass
            if not isinstance(args, dict):
                calls.append(
                    ParsedCall(obj["name"], {}, "tool call arguments must be a JSON object")
                )
                continue
            calls.append(ParsedCall(obj["name"], args))
        return calls


class CodeBlockParser:
    """Code between two tags is a call of one tool, its body the one argument: the
    tool-integrated-reasoning format (ToRA, Gou et al. 2023, arXiv:2309.17452; Qwen2.5-Math TIR
    uses a markdown fence ```` ```python ... ``` ````). ``CodeBlockParser()`` reads
    ``<python>...</python>`` as ``python(code=...)``."""

    def __init__(
        self,
        tool: str = "python",
        open_tag: str = "<python>",
        close_tag: str = "</python>",
        argument: str = "code",
    ):
        self.tool, self.open_tag, self.close_tag = tool, open_tag, close_tag
        self.argument = argument
        self.stop = (close_tag,)
        self._block = re.compile(
            re.escape(open_tag) + r"(.*?)(?:" + re.escape(close_tag) + r"|\Z)", re.S
        )

    def parse(self, message: str) -> list[ParsedCall]:
        out = []
        for m in self._block.finditer(message):
            if not m.group(0).endswith(self.close_tag):
                out.append(ParsedCall(self.tool, {}, f"unclosed {self.open_tag}"))
            else:
                out.append(ParsedCall(self.tool, {self.argument: m.group(1)}))
        return out


# ---------------------------------------------------------------------------- running calls
def call_with_timeout(fn: Callable[[], Any], timeout_s: float) -> tuple[str, Any]:
    """``("ok", value)``, ``("error", exception)`` or ``("timeout", None)``.

    The call runs on a daemon thread: a call past ``timeout_s`` is abandoned, not stopped (Python
    cannot kill a thread), so a tool that can hang for real should be a subprocess, like
    :func:`python_tool`, whose sandbox enforces its own wall limit.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 -- a tool's failure is reported to the model
            box["error"] = e

    t = threading.Thread(target=target, daemon=True, name="grpo-tool-call")
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        return TIMEOUT, None
    if "error" in box:
        return ERROR, box["error"]
    return OK, box.get("value")


def clip_output(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters, with a note of how much was dropped."""
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n...[{len(text) - max_chars} more characters cut]"


def tool_schema(fn: Callable) -> dict:
    """The OpenAI-style function schema of a typed, documented function (transformers' own)."""
    from transformers.utils import get_json_schema

    return get_json_schema(fn)


class ToolEnvironment:
    """The environment behind ``tools=[...]``: parse calls, run them, answer with ``tool``
    messages; a message without a call ends the trajectory.

    Args:
        tools: functions (or callables with a ``__name__``); called with the parsed arguments
            as keywords, once they match the typed signature (:mod:`grpo.rollout.tool_args`:
            a mismatch is an ``Error:`` observation with status ``"error"``, the tool is not
            called). The result is shown as ``str(result)``.
        parser: how calls are written (default :class:`HermesParser`).
        timeout_s: per call.
        max_output_chars: a longer result is cut (the model sees the cut and a note).
        max_calls_per_turn: calls past this in one message are answered with an error.
    """

    def __init__(
        self,
        tools: Sequence[Callable],
        parser: ToolCallParser | None = None,
        *,
        timeout_s: float = 10.0,
        max_output_chars: int = 2000,
        max_calls_per_turn: int = 4,
    ):
        self.tools = {getattr(t, "__name__", type(t).__name__): t for t in tools}
        if len(self.tools) != len(tools):
            names = [getattr(t, "__name__", t) for t in tools]
            raise ValueError(f"tool names must be unique, got {names}")
        # checked now: a tool whose annotations cannot be checked is refused here, by name
        self.signatures = {name: tool_signature(fn, name) for name, fn in self.tools.items()}
        self.parser = parser or HermesParser()
        self.timeout_s, self.max_output_chars = timeout_s, max_output_chars
        self.max_calls_per_turn = max_calls_per_turn
        self.turn = 0

    def reset(self, **row: Any) -> None:
        self.turn = 0

    def step(self, message: str) -> EnvStep:
        import time

        parsed = self.parser.parse(message)
        if not parsed:
            return EnvStep(done=True)
        calls, observations = [], []
        for i, call in enumerate(parsed):
            t0 = time.perf_counter()
            if call.error is not None:
                status, output = MALFORMED, f"Error: malformed tool call: {call.error}"
            elif i >= self.max_calls_per_turn:
                status, output = (
                    ERROR,
                    (f"Error: more than {self.max_calls_per_turn} tool calls in one message"),
                )
            elif call.name not in self.tools:
                available = ", ".join(sorted(self.tools))
                status, output = (
                    UNKNOWN_TOOL,
                    (f"Error: unknown tool {call.name!r:.60}; available: {available}"),
                )
            else:
                status, output = self._run(call)
            output = clip_output(output, self.max_output_chars)
            calls.append(
                ToolCall(
                    call.name,
                    dict(call.arguments),
                    output,
                    status,
                    self.turn,
                    time.perf_counter() - t0,
                )
            )
            observations.append({"role": "tool", "content": output})
        self.turn += 1
        return EnvStep(observations=observations, tool_calls=calls)

    def _run(self, call: ParsedCall) -> tuple[str, str]:
        """``(status, output)`` of one call of a known tool: its arguments checked against the
        typed signature (a mismatch is answered without calling the tool), then the call."""
        arguments, mismatch = check_arguments(self.signatures[call.name], call.arguments)
        if mismatch is not None:
            return ERROR, mismatch
        fn = self.tools[call.name]
        status, value = call_with_timeout(lambda: fn(**arguments), self.timeout_s)
        if status == OK:
            return OK, str(value)
        if status == TIMEOUT:
            return TIMEOUT, f"Error: tool {call.name!r} timed out after {self.timeout_s:g} s"
        if isinstance(value, ToolError):
            return value.status, value.output
        return ERROR, f"Error: {type(value).__name__}: {value}"


# ---------------------------------------------------------------------------- the Python tool
_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    import warnings

    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


_DISPLAY_HARNESS = """\
import ast as _ast, sys as _sys
_src = {source!r}
try:
    _tree = _ast.parse(_src, "<tool>", "exec")
except SyntaxError as _e:
    print(f"SyntaxError: {{_e.msg}} (line {{_e.lineno}})", file=_sys.stderr)
    raise SystemExit(1)
_last = _tree.body.pop() if _tree.body and isinstance(_tree.body[-1], _ast.Expr) else None
_ns = {{"__name__": "__main__"}}
exec(compile(_tree, "<tool>", "exec"), _ns)
if _last is not None:
    _v = eval(compile(_ast.Expression(_last.value), "<tool>", "eval"), _ns)
    if _v is not None:
        print(repr(_v))
"""


def python_tool(
    limits: Any = None,
    *,
    display_last_expression: bool = True,
    max_output_chars: int = 2000,
    name: str = "python",
) -> Callable[[str], str]:
    """A ``python(code)`` tool running each call in a fresh sandboxed interpreter.

    The code runs under :func:`grpo.sandbox.run_python` with ``limits``
    (:class:`grpo.sandbox.SandboxLimits`; default 5 s wall and CPU time, 256 MB, 16 KB of
    output read back). The result is its stdout, then its stderr (a traceback), then a line
    saying why it stopped if it did not exit normally (timeout, killed); cut to
    ``max_output_chars``. A run that did not exit with status 0 raises :class:`ToolError` with
    that text (status ``"timeout"`` or ``"error"``), which :class:`ToolEnvironment` shows the
    model and records. With ``display_last_expression`` a final expression's value is printed,
    as in a notebook cell (``123*45`` shows ``5535``).

    >>> python_tool()("print(2 + 3)")
    '5'
    """
    from grpo.sandbox import SandboxLimits, run_python

    limits = limits or SandboxLimits(
        wall_time_s=5.0, cpu_time_s=5.0, memory_mb=256, max_output_bytes=16 * 1024
    )

    def python(code: str) -> str:
        """Run Python code in a sandbox and return what it prints.

        Args:
            code: a Python program (standard library only); the value of a final expression is printed.
        """  # noqa: E501 -- the docstring is the tool's JSON schema, shown to the model
        if not isinstance(code, str):
            raise TypeError(f"code must be a string, got {type(code).__name__}")
        program = _DISPLAY_HARNESS.format(source=code) if display_last_expression else code
        res = run_python(program, limits=limits)
        if res.setup_failed:  # the host's fault, not the model's: say so loudly, once
            _warn_once(
                f"python tool: {res.describe()}; every call will fail until the sandbox works"
            )
        parts = [res.stdout.rstrip("\n"), res.stderr.rstrip("\n")]
        if res.output_truncated:
            parts.append("[output truncated]")
        if not res.ok:
            parts.append(f"[{res.describe()}]")
        text = clip_output("\n".join(p for p in parts if p), max_output_chars)
        if not res.ok:
            # out of wall time, or out of CPU time (RLIMIT_CPU's SIGXCPU): both are the call's
            # time limit
            out_of_time = res.timed_out or res.returncode == -signal.SIGXCPU
            raise ToolError(text, TIMEOUT if out_of_time else ERROR)
        return text

    python.__name__ = name
    return python


# ---------------------------------------------------------------------------- environment=
def environment_factory(environment: Any) -> Callable[[], Environment]:
    """``environment`` checked as what ``MultiTurnGenerator(environment=)`` takes: a class, or a
    function of no arguments, called once per trajectory to make a fresh :class:`Environment`
    (trl's ``environment_factory`` contract). Raises ``TypeError`` naming what was given and the
    fix, so a wrong value is refused when the generator is built, not at the first generate.

    A class is checked without being instantiated (no required constructor argument; ``reset``
    and ``step`` methods). A factory function is called twice, as trl probes its
    ``environment_factory``: each product must have ``reset`` and ``step``, and the two must be
    distinct objects (one instance shared by every trajectory would share its state).
    """
    import inspect

    fix = (
        "pass the class (environment=MyEnv) or a function that builds a new one "
        "(environment=lambda: MyEnv(...)); for tools, pass tools=[...] instead"
    )
    given = getattr(environment, "__name__", type(environment).__name__)
    if not callable(environment):
        raise TypeError(
            f"environment= must be a class or a function of no arguments, called once per "
            f"trajectory to make a fresh environment (trl's environment_factory); got a "
            f"{type(environment).__name__} instance: {fix}"
        )
    try:
        inspect.signature(environment).bind()
    except TypeError as e:
        raise TypeError(
            f"environment={given} is called with no arguments for each trajectory, but it "
            f"needs arguments ({e}): {fix}"
        ) from e
    except ValueError:  # a builtin without a signature: the probe below checks it
        pass
    if isinstance(environment, type):
        missing = [m for m in ("reset", "step") if not callable(getattr(environment, m, None))]
        if missing:
            raise TypeError(
                f"environment={given} has no {' or '.join(missing)} method; an environment "
                "has reset(**row) and step(message) (grpo.rollout.tools.Environment)"
            )
        return environment
    first, second = environment(), environment()
    for made in (first, second):
        missing = [m for m in ("reset", "step") if not callable(getattr(made, m, None))]
        if missing:
            raise TypeError(
                f"environment={given} returned a {type(made).__name__}, which has no "
                f"{' or '.join(missing)} method; an environment has reset(**row) and "
                "step(message) (grpo.rollout.tools.Environment)"
            )
    if first is second:
        raise TypeError(
            f"environment={given} returned the same {type(first).__name__} object twice; every "
            "trajectory needs its own (they run concurrently and an environment holds state): "
            f"build a new one in the function, environment=lambda: {type(first).__name__}(...)"
        )
    return environment
