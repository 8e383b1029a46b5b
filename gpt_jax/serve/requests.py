"""What the serving engine is asked and what it answers, independent of HTTP.

A `Request` is one prompt (token ids) with its sampling settings and `n` choices; the engine runs
each choice as one row in a decode slot and reports through `on_event` (called on the engine's
thread, so the server hands events over to its event loop):

- `Delta(choice, text, logprobs, tool_call)`: new visible text (never half a UTF-8 character,
  never the start of a stop string that may still complete), the tokens behind it with their
  log-probs, or a built-in tool call that just ran ({"name", "input", "output"});
- `Finish(choice, reason)`: "stop" (an end token or stop string), "length" (max_tokens or the
  context), "timeout", "cancelled";
- `Done(prompt_tokens, completion_tokens, cached_tokens)`: after the last choice finished.

`RowText` turns a row's generated ids into those deltas: the reply's visible text (tool markers
rendered "expr = result" as in `engine_tools.visible_text`), held back while it might be the start
of a stop string or ends inside a UTF-8 character (`streaming._held_back`).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

from gpt_jax.engine_tools import ToolIds
from gpt_jax.streaming import _held_back


class TokenLogprob(NamedTuple):
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (id, logprob) best first; empty unless asked


class Delta(NamedTuple):
    choice: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_call: dict | None = None


class Finish(NamedTuple):
    choice: int
    reason: str


class Done(NamedTuple):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclasses.dataclass(eq=False)
class Request:
    prompt: list[int]
    max_tokens: int
    on_event: Callable[[object], None]
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k >= 0: each token's log-prob and its k best
    tool: Callable[[str], str] | None = None
    tool_name: str = "calculator"
    timeout_s: float = 300.0
    grammar: Any = None  # a compiled constraint (`Engine.compile_constraint`): output must match
    moderate: Callable[[str], bool] | None = None  # reply text -> flagged (ends it: content_filter)
    moderate_every: int = 16  # tokens between checks of a streamed reply
    adapter: str | None = None  # a LoRA adapter of the engine (`Engine(adapters=...)`), or none
    # set by the engine
    submitted: float = dataclasses.field(default_factory=time.monotonic)
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    finished_choices: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def deadline(self) -> float:
        return self.submitted + self.timeout_s

    def cancel(self) -> None:
        self.cancelled.set()


class RowText:
    """A reply's visible text as its ids arrive; `add` returns the text now safe to show.

    Incremental `engine_tools.visible_text`: the text up to the last special id is fixed, so only
    the plain run after it is decoded again per token (a whole re-decode per token cost a quarter
    of the engine thread at 64 rows)."""

    def __init__(self, tokenizer, stop_ids: Sequence[int], stop_strings: Sequence[str]):
        self.tok, self.skip, self.stops = tokenizer, set(stop_ids), tuple(stop_strings)
        self.tool = ToolIds.of(tokenizer) if "tool_call_end" in tokenizer.special_ids else None
        self.ids: list[int] = []
        self.fixed, self.run = "", []
        self.emitted = 0
        self.stopped = False  # a stop string completed: the text ends before it

    def _text(self) -> str:
        return self.fixed + self.tok.decode(self.run)

    def _push(self, i: int) -> None:
        if i in self.skip:
            return
        if not self.tok.is_special(i):
            self.run.append(i)
            return
        self.fixed += self.tok.decode(self.run)
        self.run = []
        if self.tool is not None and i == self.tool.call_end:
            self.fixed += " = "
        elif self.tool is None or i not in self.tool:
            self.fixed += self.tok.decode([i])

    def add(self, ids: Sequence[int]) -> str:
        for i in ids:
            self.ids.append(int(i))
            self._push(int(i))
        text = self._text()
        hit = min((text.find(s) for s in self.stops if s in text), default=-1)
        if hit >= 0:
            self.stopped = True
            return self._emit(text[:hit])
        return self._emit(text[: len(text) - _held_back(text, self.stops)])

    def flush(self) -> str:
        """The rest of the text at the end of the row (held-back text included, unless a stop
        string cut it)."""
        if self.stopped:
            return ""
        return self._emit(self._text())

    def _emit(self, text: str) -> str:
        if len(text) <= self.emitted:
            return ""
        out, self.emitted = text[self.emitted:], len(text)
        return out
