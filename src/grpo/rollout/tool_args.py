"""A tool call's arguments checked against the tool function's typed signature.

The rule: an argument is accepted when its JSON value has the type the parameter's annotation
says, which is the type the tool's JSON schema (``transformers.utils.get_json_schema``, rendered
into the prompt) showed the model. The one conversion is a JSON integer for a ``float``
parameter (JSON has one number type; ``2`` is a valid ``number``), passed on as ``2.0``; a JSON
array for a ``tuple`` parameter is passed on as a tuple. Nothing else is converted: ``"3"`` for
``a: int`` is a mismatch, as are ``true`` for ``int``, ``1`` for ``bool``, ``3.0`` for ``int`` and
``3`` for ``str``. A tool that wants to be lenient says so in its annotation (``a: int | str``, or
``Any``) and converts the value itself.

Why not coerce strings: the schema the model was shown says ``integer``, so ``"3"`` breaks the
contract the model was given (JSON Schema validation, and OpenAI's strict function calling,
reject it too). Coercion is ambiguous (``"3.0"``, ``" 3"``, ``"1e3"``, ``"yes"``) and hides the
mistake from the policy and from ``tools/error_frac``, while an ``Error:`` observation tells the
model what to fix and RL can learn it.

Checked annotations: ``int``, ``float``, ``str``, ``bool``, ``None``, ``list`` / ``list[X]``,
``dict`` / ``dict[str, X]``, ``tuple[X, ...]`` / ``tuple[X, Y]``, ``X | Y`` / ``Optional[X]`` /
``Union``, ``Literal[...]``, ``Any`` (and no annotation: anything). Any other annotation is
refused when the tool is registered (:func:`tool_signature`), never silently unchecked.
"""

from __future__ import annotations

import functools
import json
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class ToolSignature:
    """A tool's parameters as :func:`check_arguments` needs them."""

    name: str
    params: Mapping[str, Any]  # name -> resolved annotation (Any when unannotated)
    required: frozenset[str]
    var_keyword: bool  # takes **kwargs: unknown argument names are passed on unchecked

    def describe(self) -> str:
        """``a: int, b: float``, for error messages."""
        return ", ".join(f"{p}: {type_name(t)}" for p, t in self.params.items()) or "none"


def type_name(tp: Any) -> str:
    """A short name for an annotation: ``int``, ``list[int]``, ``int | None``."""
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join("..." if a is Ellipsis else type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    return getattr(tp, "__name__", repr(tp))


def json_type_name(value: Any) -> str:
    """The JSON-ish name of a parsed value, for error messages."""
    if value is None:
        return "null"
    return type(value).__name__


def _check_supported(tp: Any, where: str) -> None:
    if tp is Any or tp in (int, float, str, bool, type(None), list, dict, tuple):
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return
    if origin in (typing.Union, types.UnionType, list, dict, tuple):
        for a in args:
            if a is not Ellipsis:
                _check_supported(a, where)
        return
    raise TypeError(
        f"{where} is annotated {type_name(tp)}, which tool arguments cannot be checked against; "
        "use int, float, str, bool, None, list[...], dict[str, ...], tuple[...], a Union, "
        "Literal[...] or Any (Any: the tool checks the value itself)"
    )


def tool_signature(fn: Callable, name: str | None = None) -> ToolSignature:
    """The checked signature of a tool; raises ``TypeError`` naming the tool and the parameter
    for an annotation that cannot be checked, or a positional-only / ``*args`` parameter (tools
    are called with keywords)."""
    name = name or getattr(fn, "__name__", type(fn).__name__)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise TypeError(f"tool {name!r}: cannot read its signature ({e})") from e
    target = fn
    if isinstance(fn, functools.partial):
        target = fn.func
    elif not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        target = getattr(type(fn), "__call__", fn)  # a callable object: its __call__'s hints
    try:
        hints = typing.get_type_hints(target)
    except Exception as e:  # noqa: BLE001 -- any failure to resolve is reported with its cause
        raise TypeError(
            f"tool {name!r}: its annotations cannot be resolved ({type(e).__name__}: {e}); "
            "define the types it names at module level"
        ) from e
    params, required, var_keyword = {}, set(), False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_keyword = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            raise TypeError(
                f"tool {name!r}: parameter {p.name!r} cannot be given as a keyword; tools are "
                "called with keyword arguments"
            )
        tp = hints.get(p.name, Any)
        _check_supported(tp, f"tool {name!r}: parameter {p.name!r}")
        params[p.name] = tp
        if p.default is p.empty:
            required.add(p.name)
    return ToolSignature(name, params, frozenset(required), var_keyword)


def _convert(value: Any, tp: Any) -> Any:
    """``value`` as the annotation ``tp`` takes it, or ``_MISSING`` when it does not match."""
    if tp is Any:
        return value
    if tp is type(None):
        return None if value is None else _MISSING
    if tp is bool:
        return value if isinstance(value, bool) else _MISSING
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISSING
    if tp is float:
        if isinstance(value, float):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # JSON's one number type: 2 is a number
        return _MISSING
    if tp is str:
        return value if isinstance(value, str) else _MISSING
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if origin is typing.Literal:
        # 1 == True in Python: compare the types too
        ok = any(value == a and type(value) is type(a) for a in args)
        return value if ok else _MISSING
    if origin in (typing.Union, types.UnionType):
        for a in args:
            out = _convert(value, a)
            if out is not _MISSING:
                return out
        return _MISSING
    if origin is list:
        if not isinstance(value, list):
            return _MISSING
        if not args:
            return value
        out = [_convert(v, args[0]) for v in value]
        return _MISSING if any(o is _MISSING for o in out) else out
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _MISSING
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            items = args[:1] * len(value)
        elif len(args) != len(value):
            return _MISSING
        else:
            items = args
        out = [_convert(v, a) for v, a in zip(value, items)]
        return _MISSING if any(o is _MISSING for o in out) else tuple(out)
    if origin is dict:
        if not isinstance(value, dict):
            return _MISSING
        if not args:
            return value
        out = {_convert(k, args[0]): _convert(v, args[1]) for k, v in value.items()}
        return _MISSING if any(o is _MISSING for kv in out.items() for o in kv) else out
    return _MISSING  # unreachable for a signature tool_signature accepted


def check_arguments(
    sig: ToolSignature, arguments: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """``(arguments to call with, None)`` or ``(None, "Error: ...")`` naming the tool, each bad
    argument, the expected and the given type; every problem of the call in one message."""
    problems, out = [], {}
    for key, value in arguments.items():
        if key not in sig.params:
            if sig.var_keyword:
                out[key] = value
                continue
            problems.append(f"unknown argument {key!r:.60} (parameters: {sig.describe()})")
            continue
        tp = sig.params[key]
        converted = _convert(value, tp)
        if converted is _MISSING:
            shown = json.dumps(value, default=repr)  # as the model wrote it: "3", true
            problems.append(
                f"argument {key!r} expects {type_name(tp)}, got {json_type_name(value)} "
                f"({shown:.40})"
            )
        else:
            out[key] = converted
    for key in sig.params:
        if key in sig.required and key not in arguments:
            problems.append(f"missing argument {key!r} ({type_name(sig.params[key])})")
    if problems:
        return None, f"Error: tool {sig.name!r}: " + "; ".join(problems)
    return out, None
