"""A recipe's optional ``multiturn:`` section: tool use during rollouts (``grpo train`` with tools).

With the section, every rollout is a multi-turn trajectory
(:class:`grpo.rollout.multiturn.MultiTurnGenerator`) on the engine ``trainer.rollout.backend``
names (``hf`` or ``vllm``): the model may call the built-in tools between its turns, and tool
output is masked out of the loss (ToRL, arXiv:2503.23383; ReTool, arXiv:2504.11536). Evaluation
(in training and ``grpo eval``) samples the same way.

```yaml
multiturn: {tools: [python], parser: hermes, max_turns: 4, max_turn_tokens: 1024,
            sandbox: {wall_time_s: 5, memory_mb: 512}}
```

>>> s = MultiTurnSettings(max_turns=2)
>>> s.max_turns, s.parser, s.tools
(2, 'hermes', ['python'])
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TOOLS = ("python",)
"""The built-in tools a recipe can name (:func:`grpo.rollout.tools.python_tool`)."""


class MultiTurnSettings(BaseModel):
    """Arguments of :class:`grpo.rollout.multiturn.MultiTurnGenerator` that a YAML file can hold."""

    model_config = ConfigDict(extra="forbid")
    tools: list[Literal["python"]] = Field(
        ["python"], min_length=1, description="Built-in tools to offer."
    )
    parser: Literal["hermes", "code_block"] = Field(
        "hermes", description="<tool_call> JSON (Hermes/Qwen) or code tags."
    )
    code_tags: tuple[str, str] = Field(
        ("```python\n", "```"), description="Open/close tags for parser=code_block."
    )
    max_turns: int = Field(4, ge=1, description="Most assistant turns per trajectory.")
    max_turn_tokens: int | None = Field(
        None,
        ge=1,
        description="Most sampled tokens per turn (at most "
        "trainer.sampling.max_tokens, the budget of a whole trajectory).",
    )
    tool_timeout_s: float = Field(10.0, gt=0, description="Per tool call.")
    env_timeout_s: float = Field(
        60.0, gt=0, description="Per environment step (all of a message's calls)."
    )
    max_tool_output_chars: int = Field(2000, ge=1, description="A longer tool result is cut.")
    observations: Literal["messages", "inline"] = Field(
        "messages", description="Tool results as messages or inline."
    )
    inline_format: str = Field(
        "\n```output\n{}\n```\n", description="Inline observation format ({} = text)."
    )
    stop_at_call: bool = Field(True, description="End a turn right after a call's closing tag.")
    render_tools: bool = Field(True, description="Pass the tool schemas to the chat template.")
    sandbox: dict[str, Any] = Field(
        default_factory=dict, description="grpo.sandbox.SandboxLimits fields."
    )

    @field_validator("sandbox")
    @classmethod
    def _limits(cls, v: dict[str, Any]) -> dict[str, Any]:
        from grpo.sandbox import SandboxLimits

        SandboxLimits(**v)  # unknown fields raise here, at load time
        return v

    def build(self, generator: Any) -> Any:
        """The :class:`MultiTurnGenerator` on ``generator`` (HF or colocated vLLM)."""
        from grpo.sandbox import SandboxLimits
        from grpo.rollout.multiturn import MultiTurnGenerator
        from grpo.rollout.tools import CodeBlockParser, HermesParser, python_tool

        limits = SandboxLimits(**self.sandbox) if self.sandbox else None
        tools = [
            python_tool(limits, max_output_chars=self.max_tool_output_chars) for _ in self.tools
        ]
        parser = (
            HermesParser()
            if self.parser == "hermes"
            else CodeBlockParser("python", *self.code_tags)
        )
        return MultiTurnGenerator(
            generator,
            tools=tools,
            parser=parser,
            max_turns=self.max_turns,
            max_turn_tokens=self.max_turn_tokens,
            tool_timeout_s=self.tool_timeout_s,
            env_timeout_s=self.env_timeout_s,
            max_tool_output_chars=self.max_tool_output_chars,
            observations=self.observations,
            inline_format=self.inline_format,
            stop_at_call=self.stop_at_call,
            render_tools=self.render_tools,
        )
