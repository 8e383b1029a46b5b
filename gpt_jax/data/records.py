"""The five normalized record types every dataset builder yields, and converters into them.

    text             {id, source, text}                                  pretraining
    conversation     {id, source, messages: [{role, content}]}           SFT
    ranking          {id, source, prompt: [{role, content}], responses}  reward model / DPO;
                                                                         responses best -> worst
    problem          {id, source, question, solution, answer}            verifiable math (RL)
    multiple_choice  {id, source, question, choices, answer (index)}     MMLU-style eval

Roles are the chat template's: system, user, assistant (see gpt_jax/data/chat_template.py).
`decode` turns what a TFDS data source returns (bytes, dict-of-lists) back into these dicts.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from gpt_jax.data.readers import BadRecordError, field

_T = tfds.features.Text
_MESSAGES = tfds.features.Sequence({"role": _T(), "content": _T()})

FEATURES = {
    "text": lambda: {"id": _T(), "source": _T(), "text": _T()},
    "conversation": lambda: {"id": _T(), "source": _T(), "messages": _MESSAGES},
    "ranking": lambda: {
        "id": _T(), "source": _T(), "prompt": _MESSAGES, "responses": tfds.features.Sequence(_T())
    },
    "problem": lambda: {"id": _T(), "source": _T(), "question": _T(), "solution": _T(), "answer": _T()},
    "multiple_choice": lambda: {
        "id": _T(), "source": _T(), "question": _T(), "choices": tfds.features.Sequence(_T()),
        "answer": np.int32,
    },
}
RECORD_TYPES = tuple(FEATURES)

SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def features(record_type: str) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(FEATURES[record_type]())


def message(role: str, content: Any) -> dict:
    if not isinstance(content, str):
        raise BadRecordError(f"{role} content has type {type(content).__name__}")
    return {"role": role, "content": content}


def alpaca_prompt(obj: dict) -> str:
    """instruction (+ blank line + input when present): the user turn of an Alpaca-format row."""
    instruction = field(obj, "instruction")
    extra = obj.get("input") or ""
    if not isinstance(extra, str):
        raise BadRecordError("field 'input' is not a string")
    return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def history_messages(obj: dict) -> list[dict]:
    """LLaMA-Factory `history: [[user, assistant], ...]` -> messages."""
    history = obj.get("history") or []
    if not isinstance(history, list):
        raise BadRecordError("field 'history' is not a list")
    out = []
    for k, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise BadRecordError(f"history[{k}] is not a [user, assistant] pair")
        out += [message("user", pair[0]), message("assistant", pair[1])]
    return out


def alpaca_conversation(obj: dict, output_key: str = "output") -> list[dict]:
    return history_messages(obj) + [
        message("user", alpaca_prompt(obj)),
        message("assistant", field(obj, output_key)),
    ]


def sharegpt_messages(turns: Any) -> list[dict]:
    """[{from: human|gpt|system, value}] -> messages."""
    if not isinstance(turns, list):
        raise BadRecordError("conversations is not a list")
    out = []
    for k, t in enumerate(turns):
        role = SHAREGPT_ROLES.get(field(t, "from"))
        if role is None:
            raise BadRecordError(f"conversations[{k}] has unknown sender {t['from']!r}")
        out.append(message(role, field(t, "value")))
    return out


def check_conversation(messages: list[dict]) -> list[dict]:
    """A conversation needs >= 1 message; user turns may be last (ShareGPT has 7 such records:
    they are kept as shipped, and the SFT pipeline drops conversations with nothing to learn)."""
    if not messages:
        raise BadRecordError("conversation has no messages")
    return messages


def check_ranking(prompt: list[dict], responses: list[str]) -> dict:
    if not prompt or prompt[-1]["role"] != "user":
        raise BadRecordError("ranking prompt must end with a user turn")
    if len(responses) < 2 or not all(isinstance(r, str) for r in responses):
        raise BadRecordError("ranking needs >= 2 string responses")
    return {"prompt": prompt, "responses": responses}


def _s(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _messages(m: dict) -> list[dict]:
    return [{"role": _s(r), "content": _s(c)} for r, c in zip(m["role"], m["content"])]


def decode(record_type: str, raw: dict) -> dict:
    """A TFDS data-source example (bytes, dict-of-lists) -> the plain record dict."""
    out = {"id": _s(raw["id"]), "source": _s(raw["source"])}
    if record_type == "text":
        out["text"] = _s(raw["text"])
    elif record_type == "conversation":
        out["messages"] = _messages(raw["messages"])
    elif record_type == "ranking":
        out["prompt"] = _messages(raw["prompt"])
        out["responses"] = [_s(r) for r in raw["responses"]]
    elif record_type == "problem":
        out.update({k: _s(raw[k]) for k in ("question", "solution", "answer")})
    elif record_type == "multiple_choice":
        out.update(question=_s(raw["question"]), choices=[_s(c) for c in raw["choices"]],
                   answer=int(raw["answer"]))
    else:
        raise ValueError(f"unknown record type {record_type!r}")
    return out
