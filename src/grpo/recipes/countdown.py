"""Countdown (TinyZero; reasoning-gym's generator): reach ``target`` with each number once.

An example of subclassing :class:`grpo.rewards.Reward`. The expression is parsed with ``ast``
and evaluated over a whitelist of nodes (numbers, + - * /, parentheses): model output is never
passed to ``eval``.
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from fractions import Fraction

from grpo.rewards import Reward, Unscorable

_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int)
        and not isinstance(node.value, bool)
    ):
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ZeroDivisionError
        return _OPS[type(node.op)](left, right)
    raise ValueError(f"disallowed syntax: {type(node).__name__}")


class CountdownReward(Reward):
    """1.0 if the last ``<answer>`` is an expression using exactly the given numbers that equals
    the target, else 0.0.

    >>> CountdownReward().score("<answer>(3 + 5) * 2</answer>", numbers=[2, 3, 5], target=16)
    1.0
    >>> CountdownReward().score("<answer>3 * 5</answer>", numbers=[2, 3, 5], target=15)
    0.0
    """

    def score(self, completion: str, **example) -> float | None:
        numbers, target = example.get("numbers"), example.get("target")
        if numbers is None or target is None:
            raise Unscorable("example has no 'numbers' / 'target'")
        found = _ANSWER.findall(completion)
        if not found or len(found[-1]) > 200:
            return 0.0
        expr = found[-1].split("=")[0].strip()
        try:
            used: list[int] = []
            value = _evaluate(ast.parse(expr, mode="eval"), used)
        except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
            return 0.0
        return float(Counter(used) == Counter(numbers) and value == target)
