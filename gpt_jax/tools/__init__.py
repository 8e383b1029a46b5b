"""Tools a model can call from inside its reply (see docs/tools.md): the calculator and sandboxed
Python, and `toolbox`, which makes one engine tool out of several.

The engine (`gpt_jax.engine_tools`) knows one tool-call token pair, so a reply names the tool in
the call's text: `python:` followed by code goes to the Python sandbox, `calculator:` to the
calculator, and a call with no known prefix to the first tool of the box (so the calculator's
calls stay plain `23 + 45`, as the arithmetic task writes them).
"""
from __future__ import annotations

from typing import Callable, Sequence


def _registry() -> dict[str, Callable[[str], str]]:
    from gpt_jax.tools.calculator import calculate
    from gpt_jax.tools.sandbox import python_tool

    return {"calculator": calculate, "python": python_tool}


TOOL_NAMES = ("calculator", "python")


def toolbox(names: Sequence[str]) -> Callable[[str], str]:
    """One `tool(text) -> str` for the engine from the named tools (see the module docstring).
    Its `.label` is the first tool's name (the chat CLI prints calls as `[label] call -> result`)."""
    registry = _registry()
    unknown = [n for n in names if n not in registry]
    if not names or unknown:
        raise ValueError(f"tools {list(names)}: expected a non-empty list of {TOOL_NAMES}")
    tools = {n: registry[n] for n in names}

    def tool(text: str) -> str:
        head, sep, rest = text.lstrip().partition(":")
        if sep and head.strip() in tools:
            return tools[head.strip()](rest.lstrip(" ").removeprefix("\n"))
        return tools[names[0]](text)

    tool.label = names[0] if len(names) == 1 else "tool"
    return tool
