"""Multi-turn tool settings in a recipe: the ``multiturn:`` section next to a
:class:`grpo.recipes.schema.Recipe`'s model, data, rewards and trainer.

>>> s = ToolSettings(max_turns=2)
>>> s.max_turns, s.parser, s.tools
(2, 'hermes', ['python'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TOOLS = ("python",)


class ToolSettings(BaseModel):
    """Arguments of :class:`grpo.rollout.multiturn.MultiTurnGenerator` that a YAML file can hold."""

    model_config = ConfigDict(extra="forbid")
    tools: list[Literal["python"]] = Field(["python"], min_length=1, description="Built-in tools to offer.")
    parser: Literal["hermes", "code_block"] = Field("hermes", description="<tool_call> JSON (Hermes/Qwen) or code tags.")
    code_tags: tuple[str, str] = Field(("```python\n", "```"), description="Open/close tags for parser=code_block.")
    max_turns: int = Field(4, ge=1, description="Most assistant turns per trajectory.")
    max_turn_tokens: int | None = Field(None, ge=1, description="Most sampled tokens per turn.")
    tool_timeout_s: float = Field(10.0, gt=0, description="Per tool call.")
    env_timeout_s: float = Field(60.0, gt=0, description="Per environment step (all of a message's calls).")
    max_tool_output_chars: int = Field(2000, ge=1, description="A longer tool result is cut.")
    observations: Literal["messages", "inline"] = Field("messages", description="Tool results as messages or inline.")
    inline_format: str = Field("\n```output\n{}\n```\n", description="Inline observation format ({} = text).")
    stop_at_call: bool = Field(True, description="End a turn right after a call's closing tag.")
    render_tools: bool = Field(True, description="Pass the tool schemas to the chat template.")
    sandbox: dict[str, Any] = Field(default_factory=dict, description="grpo.sandbox.SandboxLimits fields.")

    @field_validator("sandbox")
    @classmethod
    def _limits(cls, v: dict[str, Any]) -> dict[str, Any]:
        from grpo.sandbox import SandboxLimits

        SandboxLimits(**v)  # unknown fields raise here, at load time
        return v

    def build(self, generator: Any):
        """The :class:`MultiTurnGenerator` on ``generator`` (HF or colocated vLLM)."""
        from grpo.rollout.multiturn import MultiTurnGenerator
        from grpo.rollout.tools import CodeBlockParser, HermesParser, python_tool
        from grpo.sandbox import SandboxLimits

        limits = SandboxLimits(**self.sandbox) if self.sandbox else None
        tools = [python_tool(limits, max_output_chars=self.max_tool_output_chars) for _ in self.tools]
        parser = HermesParser() if self.parser == "hermes" else CodeBlockParser("python", *self.code_tags)
        return MultiTurnGenerator(
            generator, tools=tools, parser=parser, max_turns=self.max_turns, max_turn_tokens=self.max_turn_tokens,
            tool_timeout_s=self.tool_timeout_s, env_timeout_s=self.env_timeout_s,
            max_tool_output_chars=self.max_tool_output_chars, observations=self.observations,
            inline_format=self.inline_format, stop_at_call=self.stop_at_call, render_tools=self.render_tools)


def load_tool_recipe(path: str | Path, overrides: list[str] | None = None):
    """``(Recipe, ToolSettings)`` from a recipe YAML with a ``multiturn:`` section; overrides are
    ``key=value`` with dotted keys (``multiturn.max_turns=2``, ``trainer.beta=0``)."""
    import yaml

    from grpo.config import apply_overrides
    from grpo.recipes.schema import Recipe

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe {path} not found")
    data = apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides or [])
    tools = ToolSettings(**(data.pop("multiturn", None) or {}))
    recipe = Recipe(**data)
    if tools.max_turn_tokens is not None and tools.max_turn_tokens > recipe.trainer.sampling.max_tokens:
        raise ValueError(f"multiturn.max_turn_tokens={tools.max_turn_tokens} exceeds trainer.sampling.max_tokens="
                         f"{recipe.trainer.sampling.max_tokens}, the budget of a whole trajectory")
    return recipe, tools
