"""The OpenAI-compatible HTTP layer (FastAPI; SSE through starlette's StreamingResponse).

Routes: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions,
POST /v1/moderations (the workdir's moderation stage; 404 without one), GET /stats (slots, queue, prefix
cache: an extension). Models load on a background thread at startup; until they are loaded and
compiled /health and every route answer 503. With an API key, every route but /health needs
`Authorization: Bearer <key>` (401 otherwise).

This module turns a body into `requests.Request`s (one per prompt; `n` choices each), submits them,
and turns the engine's events (carried to the loop by one `mailbox.Mailbox`) into OpenAI's response
or its SSE chunks (`formats`): nothing here knows the model. A `response_format` is compiled here,
off the event loop, so a bad or too slow one is a 400 before anything is queued. Errors always have
OpenAI's shape; a full admission queue is a 429 with Retry-After; a request past its timeout is a
408 (in a stream: an error event, then [DONE]); a client that disconnects has its rows cancelled,
freeing the slots. With a moderation model, the last user message (a completion's prompt) is
checked before decoding and the reply every few tokens and at its end; a flagged one ends with
finish_reason "content_filter" (a flagged input decodes nothing).
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import secrets
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable, Sequence

from fastapi import Depends, FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from gpt_jax.serve import formats as fmt
from gpt_jax.serve.conversations import ConversationStore
from gpt_jax.memory.store import MemoryStore
from gpt_jax.serve.limits import BodyLimit
from gpt_jax.serve.mailbox import Mailbox, take_batch
from gpt_jax.serve.memory_routes import add_memory_routes, attach_context
from gpt_jax.serve.engine import QueueFull
from gpt_jax.serve.protocol import (APIError, ChatCompletionRequest, CompletionRequest,
                                    ModerationRequest)
from gpt_jax.serve.registry import Moderator, ServedModel
from gpt_jax.serve.requests import Done, Finish, Request
from gpt_jax.serve.webchat import ChatBackend, add_webchat
from gpt_jax.structured import ConstraintError

MODERATION_MODEL = "moderation"
PUBLIC_PATHS = ("/health", "/")  # and /static: a mount, outside the routes' key dependency
LOCAL_OWNER = "local"
COALESCE_ROWS = 8  # rows decoding from which a stream's writes wait `stream_interval_s`
log = logging.getLogger("gpt_jax.serve")


def create_app(load: Callable[[], dict[str, ServedModel]], api_keys: Sequence[str] = (),
               timeout_s: float = 300.0,
               load_moderator: Callable[[], Moderator | None] | None = None,
               chat_db: str | Path | None = None, max_body_bytes: int = 1 << 20,
               stream_interval_s: float = 0.0) -> FastAPI:
    state = {"models": None, "error": None, "moderator": None}
    keys = {f"Bearer {k}": owner_id(k) for k in api_keys}
    store = ConversationStore(chat_db) if chat_db is not None else None
    memory = MemoryStore(chat_db) if chat_db is not None else None

    def load_in_background():
        try:
            state["moderator"] = load_moderator() if load_moderator is not None else None
            state["models"] = load()
        except Exception as e:  # noqa: BLE001 - reported by /health
            log.exception("loading the models failed")
            state["error"] = f"{type(e).__name__}: {e}"

    @asynccontextmanager
    async def lifespan(app):
        state["mailbox"] = Mailbox(asyncio.get_running_loop())  # the engines' events to this loop
        threading.Thread(target=load_in_background, name="load", daemon=True).start()
        yield
        for m in (state["models"] or {}).values():
            m.engine.stop()
        for s in (store, memory):
            if s is not None:
                s.close()

    async def check_key(request: HTTPRequest):
        # a dependency, not an HTTP middleware: starlette's BaseHTTPMiddleware re-streams every
        # response through a memory channel, half the event loop's time at 64 streams
        if keys and request.url.path not in PUBLIC_PATHS:
            if request.headers.get("authorization", "") not in keys:
                raise APIError(401, "missing or wrong API key (Authorization: Bearer <key>)",
                               code="invalid_api_key")

    async def owner(request: HTTPRequest) -> str:
        """Whose conversations: the key's hash ("local" when the server has no keys)."""
        return keys.get(request.headers.get("authorization", ""), LOCAL_OWNER)

    app = FastAPI(title="gpt_jax", lifespan=lifespan, dependencies=[Depends(check_key)])
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg, loc = "the body is not valid JSON", []
        param = ".".join(loc) or None
        return JSONResponse(APIError(400, f"{param + ': ' if param else ''}{msg}",
                                     param=param).body(), status_code=400)

    def models() -> dict[str, ServedModel]:
        if state["models"] is None:
            raise APIError(503, state["error"] or "the models are still loading",
                           type="server_error", code="loading")
        return state["models"]

    def model(name: str) -> ServedModel:
        found = models().get(name)
        if found is None:
            raise APIError(404, f"the model {name!r} does not exist; served: "
                                f"{sorted(models())}", param="model", code="model_not_found")
        return found

    @app.get("/health")
    async def health():
        if state["models"] is None:
            return JSONResponse({"status": "error" if state["error"] else "loading",
                                 "detail": state["error"]}, status_code=503)
        # objects in the cyclic GC's permanent generation (the server freezes its heap once
        # loaded: `serve.__main__.freeze_heap`)
        return {"status": "ok", "models": sorted(state["models"]),
                "gc_frozen": gc.get_freeze_count()}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": m.created, "owned_by": "gpt_jax",
             "context_length": m.context, "chat": m.chat, "builtin_tools": list(m.tool_names)}
            for m in models().values()]}

    @app.get("/stats")
    async def stats():
        return {name: {"slots": m.engine.n_slots, "busy_slots": m.engine.busy_slots(),
                       "waiting": len(m.engine.waiting), "decode_steps": m.engine.steps,
                       "prefix_cache": m.engine.prefix.stats() if m.engine.prefix else None}
                for name, m in models().items()}

    @app.post("/v1/moderations")
    async def moderations(body: ModerationRequest):
        models()  # 503 while loading
        mod = state["moderator"]
        if mod is None:
            raise APIError(404, "no moderation model is served from this workdir (train the "
                                "moderation stage)", param="model", code="model_not_found")
        texts = body.texts()
        probs = await asyncio.to_thread(mod.probs, texts)
        return {"id": f"modr-{secrets.token_hex(12)}", "model": MODERATION_MODEL,
                "results": [{"flagged": bool(p >= mod.threshold),
                             "categories": {"harmful": bool(p >= mod.threshold)},
                             "category_scores": {"harmful": float(p)},
                             "category_applied_input_types": {"harmful": ["text"]}}
                            for p in probs]}

    async def _input_flagged(text: str) -> bool:
        mod = state["moderator"]
        return mod is not None and await asyncio.to_thread(mod.flagged, text)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: HTTPRequest,
                               who: str = Depends(owner)):
        m = model(body.model)
        body.refuse_unsupported()
        if not m.chat:
            raise APIError(400, f"{m.name!r} is a base model: use /v1/completions", param="model")
        messages = [{"role": "system" if x.role == "developer" else x.role, "content": x.text()}
                    for x in body.messages]
        retrieved = (attach_context(messages, m.tokenizer, memory, who, body.memory)
                     if body.memory is not None else None)
        prompt = m.tokenizer.render_for_completion(messages)
        n_top = (body.top_logprobs or 0) if body.logprobs else None
        req = _request(m, body, prompt, body.limit(), n_top, chat=True, param="messages")
        req.grammar = await _grammar(m, body, req.stop_ids)
        users = [x["content"] for x in messages if x["role"] == "user"]
        blocked = bool(users) and await _input_flagged(users[-1])
        return await _respond(m, body, [req], fmt.Chat(m, body, retrieved), http,
                              blocked=blocked)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HTTPRequest):
        m = model(body.model)
        body.refuse_unsupported()
        reqs = []
        for p in body.prompts():
            ids = [m.tokenizer.eos_id, *m.tokenizer.encode(p)] if isinstance(p, str) else list(p)
            if any(not 0 <= i < m.tokenizer.vocab_size for i in ids):
                raise APIError(400, "prompt has token ids outside the vocabulary", param="prompt")
            reqs.append(_request(m, body, ids, body.max_tokens, body.logprobs, chat=False,
                                 param="prompt"))
        grammar = await _grammar(m, body, reqs[0].stop_ids)
        for q in reqs:
            q.grammar = grammar
        texts = [p for p in body.prompts() if isinstance(p, str)]
        blocked = any([await _input_flagged(t) for t in texts])
        return await _respond(m, body, reqs, fmt.Text(m, body), http, blocked=blocked)

    async def _grammar(m: ServedModel, body, stop_ids):
        """The compiled `response_format` (None for free text); a 400 when it does not compile."""
        constraint = body.constraint()
        if constraint is None:
            return None
        try:
            return await asyncio.to_thread(m.engine.compile_constraint, constraint, stop_ids)
        except ConstraintError as e:
            raise APIError(400, f"response_format: {e}", param="response_format") from None

    def _failure(reason: str) -> APIError:
        if reason == "timeout":
            return APIError(408, f"the request took longer than {timeout_s:g} s", type="timeout",
                            code="timeout")
        return APIError(500, "generation failed inside the engine (see the server log); the "
                             "server goes on", type="server_error", code="engine_error")

    def _request(m: ServedModel, body, prompt: list[int], limit: int | None, n_top, chat: bool,
                 param: str) -> Request:
        ctx = m.context
        if len(prompt) >= ctx:
            raise APIError(400, f"this model's context is {ctx} tokens; the prompt has "
                                f"{len(prompt)}", param=param, code="context_length_exceeded")
        limit = ctx - len(prompt) if limit is None else limit
        if len(prompt) + limit > ctx:
            raise APIError(400, f"this model's context is {ctx} tokens; {len(prompt)} in the "
                                f"prompt + max_tokens={limit} exceed it", param="max_tokens",
                           code="context_length_exceeded")
        temperature = 1.0 if body.temperature is None else body.temperature
        mod = state["moderator"]
        return Request(
            moderate=mod.flagged if mod is not None else None,
            moderate_every=mod.every if mod is not None else 16,
            prompt=prompt, max_tokens=limit, on_event=lambda e: None, n=body.n,
            temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
            seed=secrets.randbits(31) if body.seed is None else body.seed,
            stop_ids=m.stop_ids(chat), stop_strings=body.stop_list(), logprobs=n_top,
            tool=m.tool if chat else None, tool_name="+".join(m.tool_names) or "tool",
            timeout_s=timeout_s, adapter=m.adapter)

    async def _respond(m: ServedModel, body, reqs: list[Request], out: fmt.Format,
                       http: HTTPRequest, blocked: bool = False):
        queue, mailbox = asyncio.Queue(), state["mailbox"]
        for k, q in enumerate(reqs):
            q.on_event = lambda e, k=k: mailbox.post(queue, (k, e))
        try:
            for q in reqs:
                if blocked:  # the input was flagged: every choice ends at once, nothing decoded
                    for c in range(q.n):
                        q.on_event(Finish(c, "content_filter"))
                    q.on_event(Done(len(q.prompt), 0, 0))
                else:
                    m.engine.submit(q)
        except QueueFull as e:
            for q in reqs:
                q.cancel()
            raise APIError.busy(e) from None
        except ValueError as e:
            raise APIError(400, str(e), param="n") from None
        if body.stream:
            return StreamingResponse(_stream(reqs, queue, out, body, m.engine),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        pending = len(reqs)
        while pending:
            try:
                k, event = await asyncio.wait_for(queue.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    for q in reqs:
                        q.cancel()
                    return JSONResponse({}, status_code=499)
                continue
            out.add(k, event)
            pending -= isinstance(event, Done)
        if out.failure:
            raise _failure(out.failure)
        return out.response()

    async def _stream(reqs, queue, out: fmt.Format, body, engine):
        """SSE: one write per batch of events (a batch: what the engine produced since the last
        write, usually one token; more when the client or the loop fell behind). Under load (at
        least COALESCE_ROWS rows decoding) each write after the first waits `stream_interval_s`,
        so it carries the tokens decoded meanwhile: fewer writes for the loop and the clients;
        a lone stream is never held back."""
        try:
            yield _sse(out.first_chunks())
            pending, wrote = len(reqs), False
            while pending:
                hold = wrote and stream_interval_s > 0 and engine.busy_slots() >= COALESCE_ROWS
                events = await take_batch(queue, stream_interval_s if hold else 0.0)
                chunks = []
                for k, event in fmt.merge_deltas(events):
                    chunks += out.chunks(k, event)
                    pending -= isinstance(event, Done)
                if chunks:
                    yield _sse(chunks)
                    wrote = True
            if out.failure:
                tail = [_failure(out.failure).body()]
            elif body.stream_options and body.stream_options.include_usage:
                tail = [out.usage_chunk()]
            else:
                tail = []
            yield _sse(tail) + b"data: [DONE]\n\n"
        finally:  # also on a client disconnect (the generator is cancelled)
            for q in reqs:
                q.cancel()

    if store is not None:
        add_webchat(app, store, ChatBackend(model=model, models=models, make_request=_request,
                                            input_flagged=_input_flagged, owner=owner))
        add_memory_routes(app, memory, owner)
    return app


def owner_id(api_key: str) -> str:
    """The owner of a key's conversations: a hash, so the database never holds the key."""
    return "key-" + hashlib.sha256(api_key.encode()).hexdigest()[:24]


def _json(body: dict) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _sse(chunks: list[dict]) -> bytes:
    """Server-sent events, one `data:` line each (JSON has no raw newline)."""
    return "".join(f"data: {_json(c)}\n\n" for c in chunks).encode()
