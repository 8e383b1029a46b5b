"""Engine events -> OpenAI's response bodies and stream chunks, for chat and for text completions.

A `Format` collects the events of a request's prompts (choice index = prompt * n + choice) into
the non-streaming body (`add` ... `response`), or turns each into SSE chunks (`first_chunks`,
`chunks`, `usage_chunk`). Streams follow what the official client expects: the first delta of a
chat choice carries the role, each choice gets exactly one chunk with a non-null finish_reason,
and the usage chunk has empty choices. Built-in tool calls appear as `builtin_tool_calls` on the
message (and `builtin_tool_call` on the delta that ran it): {"name", "input", "output"}; the
content itself reads "expr = result", as the model saw it.
"""
from __future__ import annotations

import time
import uuid

from gpt_jax.serve.requests import Delta, Done, Finish

FAILED = ("timeout", "error")


def merge_deltas(events: list[tuple[int, object]]) -> list[tuple[int, object]]:
    """(prompt, event) pairs with each choice's consecutive plain deltas joined into one (its
    order kept; tool-call deltas and finishes stay as they are): a stream that fell behind the
    engine catches up in fewer, larger chunks."""
    out, open_at = [], {}
    for k, e in events:
        key = (k, getattr(e, "choice", None))
        if isinstance(e, Delta) and e.tool_call is None and key in open_at:
            j = open_at[key]
            prev = out[j][1]
            out[j] = (k, Delta(e.choice, prev.text + e.text, prev.logprobs + e.logprobs))
            continue
        out.append((k, e))
        if isinstance(e, Delta) and e.tool_call is None:
            open_at[key] = len(out) - 1
        else:
            open_at.pop(key, None)
    return out


class Format:
    object_name = ""
    chunk_name = ""

    def __init__(self, model, body):
        self.model, self.n, self.tok = model, body.n, model.tokenizer
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.text: dict[int, list[str]] = {}
        self.logprobs: dict[int, list] = {}
        self.tools: dict[int, list[dict]] = {}
        self.finish: dict[int, str] = {}
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
        self.failure: str | None = None  # "timeout" or "error" (a choice ended without a reply)
        self.want_logprobs = False

    def _index(self, k: int, choice: int) -> int:
        return k * self.n + choice

    def _count(self, event: Done) -> None:
        self.usage["prompt_tokens"] += event.prompt_tokens
        self.usage["completion_tokens"] += event.completion_tokens
        self.usage["cached_tokens"] += event.cached_tokens

    def add(self, k: int, event) -> None:
        if isinstance(event, Delta):
            i = self._index(k, event.choice)
            self.text.setdefault(i, []).append(event.text)
            self.logprobs.setdefault(i, []).extend(event.logprobs)
            if event.tool_call:
                self.tools.setdefault(i, []).append(event.tool_call)
        elif isinstance(event, Finish):
            self.finish[self._index(k, event.choice)] = event.reason
            if event.reason in FAILED:
                self._fail(event.reason)
        elif isinstance(event, Done):
            self._count(event)

    def _fail(self, reason: str) -> None:
        self.failure = "error" if "error" in (reason, self.failure) else reason

    def usage_body(self) -> dict:
        u = self.usage
        return {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
                "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
                "prompt_tokens_details": {"cached_tokens": u["cached_tokens"]}}

    def _envelope(self, name: str, choices: list, **extra) -> dict:
        return {"id": self.id, "object": name, "created": self.created, "model": self.model.name,
                "choices": choices, **extra}

    def response(self) -> dict:
        choices = [self._choice(i) for i in sorted(self.finish)]
        return self._envelope(self.object_name, choices, usage=self.usage_body())

    def usage_chunk(self) -> dict:
        return self._envelope(self.chunk_name, [], usage=self.usage_body())

    def chunks(self, k: int, event) -> list[dict]:
        if isinstance(event, Done):
            self._count(event)
            return []
        if isinstance(event, Finish):
            if event.reason in FAILED:
                self._fail(event.reason)
                return []
            if event.reason == "cancelled":
                return []
            i = self._index(k, event.choice)
            return [self._envelope(self.chunk_name, [self._chunk_choice(i, None, event.reason)])]
        i = self._index(k, event.choice)
        if not event.text and not event.logprobs and not event.tool_call:
            return []
        return [self._envelope(self.chunk_name, [self._chunk_choice(i, event, None)])]

    def _token(self, token: int, logprob: float) -> dict:
        return {"token": self.tok.decode([token]), "logprob": logprob,
                "bytes": list(self.tok.token_bytes(token))}


class Chat(Format):
    object_name, chunk_name, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def __init__(self, model, body, retrieved: list | None = None):
        """`retrieved`: the memory hits put in the prompt (the `memory` extension), listed in the
        response and in each stream's first chunk."""
        super().__init__(model, body)
        self.want_logprobs = bool(body.logprobs)
        self.choices = body.n
        self.extra = {} if retrieved is None else {"retrieved": retrieved}

    def response(self) -> dict:
        return {**super().response(), **self.extra}

    def _logprobs(self, entries) -> dict | None:
        if not self.want_logprobs:
            return None
        return {"content": [{**self._token(e.token, e.logprob),
                             "top_logprobs": [self._token(t, lp) for t, lp in e.top]}
                            for e in entries]}

    def _choice(self, i: int) -> dict:
        message = {"role": "assistant", "content": "".join(self.text.get(i, [])),
                   "refusal": None}
        if self.tools.get(i):
            message["builtin_tool_calls"] = self.tools[i]
        return {"index": i, "message": message, "logprobs": self._logprobs(self.logprobs.get(i, [])),
                "finish_reason": self.finish[i]}

    def first_chunks(self) -> list[dict]:
        return [self._envelope(self.chunk_name, [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
             "finish_reason": None}], **self.extra) for i in range(self.choices)]

    def _chunk_choice(self, i: int, event: Delta | None, reason: str | None) -> dict:
        if event is None:
            return {"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}
        delta = {"content": event.text}
        if event.tool_call:
            delta["builtin_tool_call"] = event.tool_call
        return {"index": i, "delta": delta,
                "logprobs": self._logprobs(event.logprobs) if event.logprobs else None,
                "finish_reason": None}


class Text(Format):
    object_name, chunk_name, id_prefix = "text_completion", "text_completion", "cmpl"

    def __init__(self, model, body):
        super().__init__(model, body)
        self.want_logprobs = body.logprobs is not None

    def _logprobs(self, entries, offset: int = 0) -> dict | None:
        if not self.want_logprobs:
            return None
        tokens = [self.tok.decode([e.token]) for e in entries]
        offsets, pos = [], offset
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{self.tok.decode([t]): lp for t, lp in e.top} for e in entries],
                "text_offset": offsets}

    def _choice(self, i: int) -> dict:
        return {"index": i, "text": "".join(self.text.get(i, [])),
                "logprobs": self._logprobs(self.logprobs.get(i, [])),
                "finish_reason": self.finish[i]}

    def first_chunks(self) -> list[dict]:
        return []

    def _chunk_choice(self, i: int, event: Delta | None, reason: str | None) -> dict:
        if event is None:
            return {"index": i, "text": "", "logprobs": None, "finish_reason": reason}
        return {"index": i, "text": event.text,
                "logprobs": self._logprobs(event.logprobs) if event.logprobs else None,
                "finish_reason": None}
