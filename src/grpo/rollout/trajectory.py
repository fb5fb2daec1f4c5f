"""The multi-turn record (:class:`Trajectory`, a :class:`grpo.rollout.Rollout`) and its metrics.

A trajectory is one training row: ``completion_ids`` holds every token after the prompt, the
policy's sampled turns (``loss_mask`` 1, their sampler log-probs) interleaved with the tokens
the environment appended (tool results and the chat template's turn markers: ``loss_mask`` 0,
log-prob 0). Being a ``Rollout``, it flows through the rollout source, the batch and the learner
unchanged; ``dataclasses.replace`` (the source's tagging) keeps the extra fields.

What rewards see: ``text`` is the content of the last assistant message (the final answer);
``messages`` are the completion's messages (assistant, tool, assistant, ...), which is what trl
passes multi-turn reward functions as ``completions``; ``tool_calls`` and ``info`` the rest.
:func:`trajectory_columns` builds the reward keywords from them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grpo.rollout.tools import ERROR, MALFORMED, TIMEOUT, UNKNOWN_TOOL, ToolCall
from grpo.rollout.types import Rollout

# Trajectory.stop_reason values
DONE = "done"  # the model answered without a tool call, or the environment said done
MAX_TURNS = "max_turns"  # the turn cap was reached
TOKEN_BUDGET = "token_budget"  # the completion budget (sampling.max_tokens) ran out
CONTEXT = "context"  # the model's context length ran out
TURN_LENGTH = "turn_length"  # one turn ran past max_turn_tokens
ENV_ERROR = "env_error"  # the environment raised
ENV_TIMEOUT = "env_timeout"  # the environment's step ran past its time limit
TEMPLATE_MISMATCH = "template_mismatch"  # the chat template does not extend the token stream
STOP_REASONS = (
    DONE,
    MAX_TURNS,
    TOKEN_BUDGET,
    CONTEXT,
    TURN_LENGTH,
    ENV_ERROR,
    ENV_TIMEOUT,
    TEMPLATE_MISMATCH,
)


@dataclass(frozen=True)
class Trajectory(Rollout):
    """A multi-turn rollout; see the module docstring. ``finish_reason`` is ``"length"`` when a
    length limit ended it (``stop_reason`` token_budget, context or turn_length)."""

    messages: tuple[Mapping[str, Any], ...] = ()
    """The completion as chat messages: assistant turns and the observations shown after them."""
    tool_calls: tuple[ToolCall, ...] = ()
    turns: int = 0
    """Assistant turns sampled."""
    stop_reason: str = DONE
    """Why it ended (one of ``STOP_REASONS``); ``stop_detail`` says more for errors."""
    stop_detail: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)
    """What the environment reported (``EnvStep.info``, merged over the turns)."""
    environment: Any = field(default=None, repr=False, compare=False)
    """The trajectory's environment object after its last step (trl passes these to reward
    functions as ``environments``), e.g. for a reward that reads the final state."""

    @property
    def env_tokens(self) -> int:
        """Tokens the environment appended (``loss_mask`` 0)."""
        return sum(1 for m in self.loss_mask if not m)


def trajectory_columns(rollouts: Sequence[Rollout], prompts: Sequence[Any]) -> dict[str, list]:
    """Reward keywords that show the trajectories, to merge over :func:`grpo.source.reward_inputs`
    (``prompts`` as given to ``generate``): chat-prompt ``completions`` become the full message
    list (trl's multi-turn convention; grpo rewards read the assistant messages' text),
    ``trajectory`` is the record itself (None for a single-turn rollout) and ``environments``
    its environment object (trl's keyword for them)."""

    def completion(r: Rollout) -> Any:
        if isinstance(prompts[r.prompt_index], str):
            return r.text
        return (
            list(r.messages)
            if isinstance(r, Trajectory)
            else [{"role": "assistant", "content": r.text}]
        )

    completions = [completion(r) for r in rollouts]
    trajectories = [r if isinstance(r, Trajectory) else None for r in rollouts]
    return {
        "completions": completions,
        "trajectory": trajectories,
        "environments": [None if t is None else t.environment for t in trajectories],
    }


def trajectory_log(rollout: Rollout) -> dict[str, Any]:
    """The whole trajectory for a line of completions.jsonl ({} for a single-turn rollout):
    ``messages``, its assistant turns (with the tool calls they wrote) and the observations
    shown after them, in order, with their roles, as the multi-turn rollout recorded them
    (``observations="inline"``: one assistant message holding both); ``tool_calls``, each call
    as parsed and answered (``turn``, ``name``, ``arguments``, ``status``, ``output``);
    ``turns``, ``stop_reason`` and ``stop_detail``. Values that JSON cannot hold are written as
    their ``str``.

    >>> trajectory_log(Rollout([1], [2], [0.0], "a", "stop", 0, 0))
    {}
    """
    if not isinstance(rollout, Trajectory):
        return {}
    calls = [
        {
            "turn": c.turn,
            "name": c.name,
            "arguments": dict(c.arguments),
            "status": c.status,
            "output": c.output,
        }
        for c in rollout.tool_calls
    ]
    record = {
        "messages": [dict(m) for m in rollout.messages],
        "tool_calls": calls,
        "turns": rollout.turns,
        "stop_reason": rollout.stop_reason,
        "stop_detail": rollout.stop_detail,
    }
    return json.loads(json.dumps(record, default=str))


def multiturn_metrics(
    rollouts: Sequence[Rollout], totals: Sequence[float | None] | None = None
) -> dict[str, float]:
    """Tool-use metrics of a step's rollouts (single-turn records count as 0 turns of tools).

    ``totals``: each rollout's total reward (None/NaN = unscored), aligned with ``rollouts``;
    gives ``tools/reward_calls_<c>`` (mean reward of trajectories with c = 0, 1, 2, 3+ calls).

    >>> multiturn_metrics([])
    {}
    """
    trajs = [r for r in rollouts if isinstance(r, Trajectory)]
    if not trajs:
        return {}
    n = len(trajs)
    calls = [len(t.tool_calls) for t in trajs]
    statuses = Counter(c.status for t in trajs for c in t.tool_calls)
    n_calls = sum(calls)
    tokens = sum(len(t.completion_ids) for t in trajs)
    out = {
        "tools/turns_mean": sum(t.turns for t in trajs) / n,
        "tools/calls_mean": n_calls / n,
        "tools/call_rate": sum(c > 0 for c in calls) / n,
        "tools/error_frac": (statuses[ERROR] + statuses[MALFORMED] + statuses[UNKNOWN_TOOL])
        / max(n_calls, 1),
        "tools/timeout_frac": statuses[TIMEOUT] / max(n_calls, 1),
        "tools/malformed": float(statuses[MALFORMED]),
        "tools/unknown_tool": float(statuses[UNKNOWN_TOOL]),
        "tools/env_token_frac": sum(t.env_tokens for t in trajs) / max(tokens, 1),
    }
    stops = Counter(t.stop_reason for t in trajs)
    out.update(
        {f"tools/stop_{reason}": stops[reason] / n for reason in STOP_REASONS if stops[reason]}
    )
    if totals is not None:
        if len(totals) != len(rollouts):
            raise ValueError(f"{len(totals)} totals for {len(rollouts)} rollouts")
        by_calls: dict[str, list[float]] = {}
        for r, v in zip(rollouts, totals, strict=True):
            if isinstance(r, Trajectory) and v is not None and v == v:
                c = len(r.tool_calls)
                by_calls.setdefault(str(c) if c < 3 else "3+", []).append(float(v))
        out.update(
            {f"tools/reward_calls_{k}": sum(v) / len(v) for k, v in sorted(by_calls.items())}
        )
    return out
