"""The retrieval memory over HTTP (an extension of the OpenAI API; `gpt_jax.memory`):

    POST /v1/memories              {"conversation": str, "text": str} -> 201 {"id", ...}
    GET  /v1/memories?conversation=...   {"data": [...]}, the caller's own
    DELETE /v1/memories?conversation=... 204

and, on /v1/chat/completions, the request field `"memory": {"conversation": str | null, "k": 3,
"min_score": 0, "documents": true}`: the last user message is sent with what BM25 finds for it
among the caller's documents (added with the chat CLI's --documents on the same workdir) and
that conversation's memories, rendered between the retrieval tokens; a non-streamed response
lists them in `retrieved`. Memories are owned like web-chat conversations (by API key).
"""
from __future__ import annotations

from fastapi import Depends, FastAPI, Response
from pydantic import BaseModel, Field

from gpt_jax.memory.store import MemoryStore
from gpt_jax.serve.protocol import APIError, MemoryOptions


class NewMemory(BaseModel):
    conversation: str = Field(min_length=1, max_length=200)
    text: str = Field(min_length=1, max_length=8_000)


def add_memory_routes(app: FastAPI, store: MemoryStore, owner) -> None:
    @app.post("/v1/memories", status_code=201)
    async def remember(body: NewMemory, who: str = Depends(owner)):
        mid = store.add_memory(who, body.conversation, body.text)
        return {"id": mid, "object": "memory", "conversation": body.conversation,
                "text": body.text}

    @app.get("/v1/memories")
    async def memories(conversation: str, who: str = Depends(owner)):
        return {"object": "list", "data": [
            {"id": m["id"], "object": "memory", "conversation": m["scope"], "text": m["text"]}
            for m in store.items(who, "memories", conversation)]}

    @app.delete("/v1/memories", status_code=204)
    async def forget(conversation: str, who: str = Depends(owner)):
        store.delete_scope(who, conversation)
        return Response(status_code=204)


def attach_context(messages: list[dict], tokenizer, store: MemoryStore | None, who: str,
                   opts: MemoryOptions) -> list[str]:
    """Put the hits for the last user message into its `context`; returns them."""
    if store is None:
        raise APIError(400, "this server keeps no memory (it was started without a chat "
                            "database)", param="memory")
    if "retrieval_start" not in tokenizer.special_ids:
        raise APIError(400, "this model's tokenizer has no retrieval tokens (trained before "
                            "they existed)", param="memory")
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise APIError(400, "memory needs a user message to search for", param="memory")
    index = store.retriever(who, opts.conversation, documents=opts.documents)
    hits = [h.text for h in index.search(users[-1]["content"], opts.k, opts.min_score)]
    if hits:
        users[-1]["context"] = hits
    return hits
