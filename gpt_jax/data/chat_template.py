"""The chat template: conversation <-> token ids, with the SFT loss mask.

A conversation is a list of messages `{"role": ..., "content": str}` with roles
`system` (optional, first only), `user`, `assistant` and `tool` (a tool's result). An assistant
message may carry `"tool_call": str` (the call it issues after its text). Rendering:

    <|bos|>
    <|system_start|> text <|system_end|>                                       mask 0
    <|user_start|> text <|user_end|>                                           mask 0
    <|assistant_start|> text [<|tool_call_start|> call <|tool_call_end|>] <|assistant_end|>
      ^ mask 0          ^----------------------- mask 1 ---------------------------------^
    <|tool_result_start|> text <|tool_result_end|>                             mask 0

The mask is 1 exactly on what the model must learn to emit: assistant text, its tool call, and the
assistant end token (so it learns to stop). Content goes through `encode`, which never emits special
ids, so message text cannot inject structure. `parse_chat` inverts rendering exactly, and accepts a
generation cut off before its end token (the last message then ends where the ids end).
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
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message {i}: content must be a string")
        if role == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")
        if "tool_call" in m and (role != "assistant" or not isinstance(m["tool_call"], str)):
            raise ValueError(f"message {i}: tool_call must be a string on an assistant message")


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
        add(tok.encode(m["content"]), learn)
        if "tool_call" in m:
            add([sid["tool_call_start"], *tok.encode(m["tool_call"]), sid["tool_call_end"]], 1)
        add([sid[end]], learn)
    return ids, mask


def render_for_completion(tok, messages: Sequence[dict]) -> list[int]:
    """Prompt for sampling: the conversation without a trailing assistant turn (e.g. a reference
    answer), then <|assistant_start|>."""
    messages = list(messages)
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    ids, _ = render_chat(tok, messages) if messages else ([tok.bos_id], [0])
    return ids + [tok.token_id("assistant_start")]


def parse_chat(tok, ids: Sequence[int]) -> list[dict]:
    ids = [int(i) for i in ids]
    sid = tok.special_ids
    # Trailing eos/pad (end of a generated sample) carry no message.
    while ids and ids[-1] in (sid["eos"], sid["pad"]):
        ids.pop()
    pos = 1 if ids and ids[0] == tok.bos_id else 0
    messages: list[dict] = []

    def take_until(stop: set[int], start: int) -> tuple[str, int]:
        """Decodes ordinary ids from `start` up to a special id; returns (text, index of it)."""
        j = start
        while j < len(ids) and not tok.is_special(ids[j]):
            j += 1
        if j < len(ids) and ids[j] not in stop:
            raise ValueError(f"unexpected {tok.special_name(ids[j])} at position {j}")
        return tok.decode(ids[start:j]), j

    while pos < len(ids):
        name = tok.special_name(ids[pos])
        if name not in _START_TO_ROLE:
            raise ValueError(f"expected a message start token at position {pos}, got id {ids[pos]}")
        role = _START_TO_ROLE[name]
        end_id = sid[ROLE_TOKENS[role][1]]
        stops = {end_id, sid["tool_call_start"]} if role == "assistant" else {end_id}
        content, pos = take_until(stops, pos + 1)
        msg = {"role": role, "content": content}
        if pos < len(ids) and ids[pos] == sid["tool_call_start"]:
            msg["tool_call"], pos = take_until({sid["tool_call_end"]}, pos + 1)
            pos += 1  # past tool_call_end (or past the end when cut off)
            if pos < len(ids) and ids[pos] != end_id:
                raise ValueError(f"expected assistant_end after the tool call at position {pos}")
        messages.append(msg)
        pos += 1  # past the end token
    return messages
