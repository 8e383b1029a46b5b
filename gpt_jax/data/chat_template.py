"""The chat template: conversation <-> token ids, with the SFT loss mask.

A conversation is a list of messages `{"role": ..., "content": str}` with roles
`system` (optional, first only), `user`, `assistant` and `tool` (a tool's result). An assistant
message may carry `"tool_call": str` (the call it issues after its text, answered by a following
`tool` message). Rendering:

    <|bos|>
    <|system_start|> text <|system_end|>                                       mask 0
    <|user_start|> [<|retrieval_start|> hit <|retrieval_end|>]... text <|user_end|>  mask 0
    <|assistant_start|> text [<|tool_call_start|> call <|tool_call_end|>] <|assistant_end|>
      ^ mask 0          ^----------------------- mask 1 ---------------------------------^
    <|tool_result_start|> text <|tool_result_end|>                             mask 0

In-line tools (a calculator run by the decode engine inside the turn, see `gpt_jax.engine_tools`):
an assistant `content` may instead be a list of parts `{"type": "text" | "tool_call" |
"tool_result", "text": str}`, where every tool_call is immediately followed by its tool_result:

    <|assistant_start|> text <|tool_call_start|> expr <|tool_call_end|>
                        <|tool_result_start|> result <|tool_result_end|> text ... <|assistant_end|>
      mask: text and the call (its start/end tokens too) 1; the result (its start/end too) 0.

The two forms are unambiguous: a message-level call's <|tool_call_end|> is followed by
<|assistant_end|>, an in-line call's by <|tool_result_start|>. `parse_chat` returns a parts list
only when the turn has in-line tool parts (adjacent text merged, empty text dropped), else a str.
`assistant_text` renders content as plain text, a call + result reading "expr = result".

Retrieved context (`gpt_jax.memory`): a user message may carry `"context": [str, ...]`, the
hits a retriever found for it, rendered before its text, each between the retrieval tokens (mask
0 like the rest of the user turn: the model learns to use them, never to write them). A tokenizer
trained before those tokens existed cannot render context (ValueError).

The mask is 1 exactly on what the model must learn to emit: assistant text, its tool calls, and the
assistant end token (so it learns to stop); never on what a tool wrote. Content goes through
`encode`, which never emits special ids, so message text cannot inject structure. `parse_chat`
inverts rendering exactly, and accepts a generation cut off before its end token (the last message
then ends where the ids end).
"""
from __future__ import annotations

from typing import Sequence

ROLE_TOKENS = {
    "system": ("system_start", "system_end"),
    "user": ("user_start", "user_end"),
    "assistant": ("assistant_start", "assistant_end"),
    "tool": ("tool_result_start", "tool_result_end"),
}
_START_TO_ROLE = {start: role for role, (start, _) in ROLE_TOKENS.items()}


def validate_messages(messages: Sequence[dict]) -> None:
    """Raises ValueError naming the first malformed message."""
    if not messages:
        raise ValueError("conversation has no messages")
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLE_TOKENS:
            raise ValueError(f"message {i}: unknown role {role!r}")
        content = m.get("content")
        if role == "assistant" and isinstance(content, list):
            _validate_parts(content, i)
        elif not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string"
                             + (" or a list of parts" if role == "assistant" else ""))
        if role == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")
        if "tool_call" in m and (role != "assistant" or not isinstance(m["tool_call"], str)):
            raise ValueError(f"message {i}: tool_call must be a string on an assistant message")
        if "context" in m and (role != "user" or not isinstance(m["context"], list) or
                               not all(isinstance(c, str) for c in m["context"])):
            raise ValueError(f"message {i}: context must be a list of strings on a user message")


PART_TYPES = ("text", "tool_call", "tool_result")


def _validate_parts(parts: list, i: int) -> None:
    for j, part in enumerate(parts):
        where = f"message {i} part {j}"
        if not isinstance(part, dict) or part.get("type") not in PART_TYPES:
            raise ValueError(f"{where}: expected {{'type': one of {PART_TYPES}, 'text': str}}")
        if not isinstance(part.get("text"), str):
            raise ValueError(f"{where}: text must be a string")
        after_call = j > 0 and parts[j - 1]["type"] == "tool_call"
        if part["type"] == "tool_result" and not after_call:
            raise ValueError(f"{where}: a tool_result must directly follow a tool_call")
        if after_call and part["type"] != "tool_result":
            raise ValueError(f"message {i} part {j - 1}: a tool_call must be directly followed "
                             "by its tool_result (a final call goes in the message's tool_call)")
    if parts and parts[-1]["type"] == "tool_call":
        raise ValueError(f"message {i} part {len(parts) - 1}: a tool_call must be directly "
                         "followed by its tool_result (a final call goes in the message's "
                         "tool_call)")


def assistant_text(content: str | Sequence[dict]) -> str:
    """Assistant content as plain visible text: a call + its result read "expr = result"."""
    if isinstance(content, str):
        return content
    out = []
    for part in content:
        out.append(part["text"] + " = " if part["type"] == "tool_call" else part["text"])
    return "".join(out)


def _render_content(tok, content, add) -> None:
    """Assistant content: text and calls learned (mask 1), tool results not (mask 0)."""
    if isinstance(content, str):
        add(tok.encode(content), 1)
        return
    sid = tok.special_ids
    for part in content:
        text = tok.encode(part["text"])
        if part["type"] == "text":
            add(text, 1)
        elif part["type"] == "tool_call":
            add([sid["tool_call_start"], *text, sid["tool_call_end"]], 1)
        else:
            add([sid["tool_result_start"], *text, sid["tool_result_end"]], 0)


def render_chat(tok, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    validate_messages(messages)
    sid = tok.special_ids
    ids, mask = [tok.bos_id], [0]

    def add(new_ids, value):
        ids.extend(new_ids)
        mask.extend([value] * len(new_ids))

    for m in messages:
        start, end = ROLE_TOKENS[m["role"]]
        add([sid[start]], 0)
        learn = 1 if m["role"] == "assistant" else 0
        if learn:
            _render_content(tok, m["content"], add)
        else:
            for hit in m.get("context", ()):
                add([_retrieval_id(tok, "retrieval_start"), *tok.encode(hit),
                     _retrieval_id(tok, "retrieval_end")], 0)
            add(tok.encode(m["content"]), 0)
        if "tool_call" in m:
            add([sid["tool_call_start"], *tok.encode(m["tool_call"]), sid["tool_call_end"]], 1)
        add([sid[end]], learn)
    return ids, mask


def _retrieval_id(tok, name: str) -> int:
    if name not in tok.special_ids:
        raise ValueError("this tokenizer has no retrieval tokens (trained before they existed): "
                         "retrain the tokenizer stage to render retrieved context")
    return tok.special_ids[name]


def render_for_completion(tok, messages: Sequence[dict]) -> list[int]:
    """Prompt for sampling: the conversation without a trailing assistant turn (e.g. a reference
    answer), then <|assistant_start|>."""
    messages = list(messages)
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    ids, _ = render_chat(tok, messages) if messages else ([tok.bos_id], [0])
    return ids + [tok.token_id("assistant_start")]


def _take_until(tok, ids: list[int], stop: set[int], start: int) -> tuple[str, int]:
    """Decodes ordinary ids from `start` up to a special id; returns (text, index of it)."""
    j = start
    while j < len(ids) and not tok.is_special(ids[j]):
        j += 1
    if j < len(ids) and ids[j] not in stop:
        raise ValueError(f"unexpected {tok.special_name(ids[j])} at position {j}")
    return tok.decode(ids[start:j]), j


def parse_assistant(tok, ids: Sequence[int], start: int = 0):
    """An assistant turn's body from `ids[start]` (just after <|assistant_start|>) ->
    (content: str or parts list, message-level tool_call or None, index of <|assistant_end|>
    or len(ids) when the turn is cut off)."""
    ids = [int(i) for i in ids]
    sid = tok.special_ids
    end_id, call_start = sid["assistant_end"], sid["tool_call_start"]
    call_end = sid["tool_call_end"]
    parts: list[dict] = []

    def add(kind: str, text: str) -> None:
        if kind == "text" and parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += text
        elif kind != "text" or text:
            parts.append({"type": kind, "text": text})

    pos, tool_call = start, None
    while True:
        text, pos = _take_until(tok, ids, {end_id, call_start}, pos)
        add("text", text)
        if pos >= len(ids) or ids[pos] == end_id:
            break
        call, pos = _take_until(tok, ids, {call_end}, pos + 1)
        pos += 1  # past tool_call_end (or past the end when cut off)
        if pos < len(ids) and ids[pos] == sid["tool_result_start"]:  # in-line: the tool's answer
            result, pos = _take_until(tok, ids, {sid["tool_result_end"]}, pos + 1)
            add("tool_call", call)
            add("tool_result", result)
            pos = min(pos + 1, len(ids))  # past tool_result_end
            continue
        if pos < len(ids) and ids[pos] != end_id:
            raise ValueError(f"expected assistant_end after the tool call at position {pos}")
        tool_call, pos = call, min(pos, len(ids))
        break
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts), tool_call, pos
    return parts, tool_call, pos


def parse_chat(tok, ids: Sequence[int]) -> list[dict]:
    ids = [int(i) for i in ids]
    sid = tok.special_ids
    # Trailing eos/pad (end of a generated sample) carry no message.
    while ids and ids[-1] in (sid["eos"], sid["pad"]):
        ids.pop()
    pos = 1 if ids and ids[0] == tok.bos_id else 0
    messages: list[dict] = []
    while pos < len(ids):
        name = tok.special_name(ids[pos])
        if name not in _START_TO_ROLE:
            raise ValueError(f"expected a message start token at position {pos}, got id {ids[pos]}")
        role = _START_TO_ROLE[name]
        if role == "assistant":
            content, tool_call, pos = parse_assistant(tok, ids, pos + 1)
            msg = {"role": role, "content": content}
            if tool_call is not None:
                msg["tool_call"] = tool_call
        else:
            end_id = sid[ROLE_TOKENS[role][1]]
            pos, context = pos + 1, []
            while role == "user" and pos < len(ids) and ids[pos] == sid.get("retrieval_start"):
                hit, pos = _take_until(tok, ids, {sid["retrieval_end"]}, pos + 1)
                context.append(hit)
                pos += 1  # past retrieval_end
            content, pos = _take_until(tok, ids, {end_id}, pos)
            msg = {"role": role, "content": content}
            if context:
                msg["context"] = context
        messages.append(msg)
        pos += 1  # past the end token
    return messages


def assistant_ids(tok, content) -> list[int]:
    """An assistant reply (str or content parts) as the ids a model would write for it, without
    <|assistant_start|> and the end token: tool calls and results as their special tokens."""
    ids, _ = render_chat(tok, [{"role": "assistant", "content": content}])
    return ids[2:-1]  # without <|bos|><|assistant_start|> ... <|assistant_end|>
