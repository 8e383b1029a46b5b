"""The OpenAI HTTP API's request bodies (pydantic) and error shape, as far as this server goes.

Parameters are checked here, so a bad one is a 400 naming it (`param`) before anything runs.
Known OpenAI parameters this server does not implement (client-side `tools`, `logit_bias`,
penalties, `echo`, `suffix`, `best_of`) are refused with a 400 that says so, never silently
ignored; unknown extra fields are ignored, as most servers do. `top_k` is an extension (0 = off).

`response_format` (chat and, as an extension, completions): `text`, `json_object`,
`json_schema` ({"json_schema": {"name", "schema", "strict"}}), and the extensions
{"type": "regex", "regex": "..."} and {"type": "grammar", "grammar": "<Lark>"}.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gpt_jax.structured import Constraint, ConstraintError

MAX_STOP = 4


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    @classmethod
    def busy(cls, reason: Exception) -> "APIError":
        """429 with Retry-After: the engine's admission queue is full."""
        return cls(429, f"server busy: {reason}; retry later", type="rate_limit_exceeded",
                   code="rate_limit_exceeded", headers={"Retry-After": "1"})


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    n: int = Field(1, ge=1, le=64)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("a stop sequence may not be empty")
        return v

    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def constraint(self) -> Constraint | None:
        """What `response_format` asks of the output (None: free text); a 400 when malformed."""
        rf = self.response_format
        if not rf:
            return None
        kind = rf.get("type", "text")
        try:
            if kind == "text":
                return None
            if kind == "json_object":
                return Constraint.json_object()
            if kind == "json_schema":
                spec = rf.get("json_schema")
                if not isinstance(spec, dict) or "schema" not in spec:
                    raise ConstraintError('json_schema needs {"json_schema": {"name": ..., '
                                          '"schema": {...}}}')
                return Constraint.json_schema(spec["schema"])
            if kind in ("regex", "grammar") and isinstance(rf.get(kind), str):
                return Constraint.regex(rf[kind]) if kind == "regex" else Constraint.lark(rf[kind])
            raise ConstraintError(f"response_format type {kind!r}: expected text, json_object, "
                                  'json_schema, or the extensions {"type": "regex", "regex": str} '
                                  'and {"type": "grammar", "grammar": str (Lark)}')
        except ConstraintError as e:
            raise APIError(400, f"response_format: {e}", param="response_format") from None

    def refuse_unsupported(self) -> None:
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported by this server", param="logit_bias")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise APIError(400, f"{name} is not supported by this server (use 0)", param=name)


class ContentPart(BaseModel):
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        if any(p.type != "text" for p in self.content):
            raise APIError(400, "only text content parts are supported", param="messages")
        return "".join(p.text or "" for p in self.content)


class MemoryOptions(BaseModel):
    """The `memory` extension of a chat request (gpt_jax.serve.memory_routes)."""
    conversation: str | None = None
    k: int = Field(3, ge=1, le=20)
    min_score: float = Field(0.0, ge=0.0)
    documents: bool = True


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    memory: MemoryOptions | None = None  # extension: retrieved context
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.tools or self.functions:
            raise APIError(400, "client-side tools are not supported: this server runs its own "
                                "built-in tools (see GET /v1/models)", param="tools")
        if self.top_logprobs and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        if any(m.role == "tool" for m in self.messages):
            raise APIError(400, "tool messages are not supported (no client-side tools)",
                           param="messages")

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.echo:
            raise APIError(400, "echo is not supported by this server", param="echo")
        if self.suffix:
            raise APIError(400, "suffix is not supported by this server", param="suffix")
        if self.best_of not in (None, 1, self.n):
            raise APIError(400, "best_of is not supported by this server", param="best_of")

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]
        if not p:
            raise APIError(400, "prompt is empty", param="prompt")
        return list(p)


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: str | list[str] | list[dict[str, Any]]
    model: str | None = None

    def texts(self) -> list[str]:
        """The input as texts (a string, strings, or OpenAI's parts: only "text" parts)."""
        if isinstance(self.input, str):
            return [self.input]
        out = []
        for x in self.input:
            if isinstance(x, str):
                out.append(x)
            elif x.get("type") == "text" and isinstance(x.get("text"), str):
                out.append(x["text"])
            else:
                raise APIError(400, "moderation input parts must be text", param="input")
        if not out:
            raise APIError(400, "moderation input is empty", param="input")
        return out
