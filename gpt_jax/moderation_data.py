"""The moderation classifier's data: harmful requests against benign texts, from shipped sets.

- harmful (label 1): the first human turn of every dialogue in the HH-RLHF harmless set
  (`hh_rlhf_harmless_test`: red-team attempts to get harmful help);
- benign (label 0): the first user turn of the English SFT sets (LIMA, alpaca, code_alpaca,
  GPTeacher, the self-instruct seeds) and, with `replies`, their first assistant reply (the
  server checks replies too); with `arithmetic` > 0, that many of the arithmetic task's training
  problems (`gpt_jax.tasks.arithmetic`, the recipe's own task, every mode): the question and the
  reply as a client sees it ("21 + 9 = 30.\nThe answer is 30."). Without them a classifier
  trained on requests alone flagged "What is 47 + 38?" (p 0.95) and cut a calculator reply.
  English only on both sides, so the classifier cannot learn "Chinese means benign" from the
  data's make-up.

Split by record id (`ranking.held_out`, salted "moderation"): a record is in the held-out set or
the training set whatever else is in the data. A text is encoded as the model reads a check:
BOS + the text's tokens (the start kept when too long) + EOS, at most `seq_len` ids.
"""
from __future__ import annotations

import dataclasses

import numpy as np

HARMFUL_SETS = ("hh_rlhf_harmless_test",)
BENIGN_SETS = ("lima", "alpaca_en_demo", "code_alpaca", "gpteacher", "alpaca_seed_tasks")


@dataclasses.dataclass
class Example:
    text: str
    label: int  # 1 harmful, 0 benign
    source: str
    id: str


def first_user_turn(messages) -> str | None:
    return first_turn(messages, "user")


def first_turn(messages, role: str) -> str | None:
    """The first non-empty text turn of `role` (a reply made of parts: its visible text)."""
    for m in messages:
        if m["role"] == role:
            text = visible_text(m["content"]).strip()
            if text:
                return text
    return None


def visible_text(content) -> str:
    """A message's text as a client reads it: a calculator call and its result as "21 + 9 = 30"
    (what the server streams for a built-in tool call)."""
    if isinstance(content, str):
        return content
    out = []
    for part in content:
        if part["type"] == "tool_result":
            out.append(" = " + part["text"])
        else:
            out.append(part["text"])
    return "".join(out)


def load_examples(data_dir, cache_dir, heldout_fraction: float, skip_bad_records: bool = False,
                  replies: bool = False, arithmetic: int = 0) -> dict[str, list[Example]]:
    """{"train": [...], "heldout": [...]} from every split of the sets above (sources: the set's
    name, "<name>:reply" for replies, "arithmetic" / "arithmetic:reply")."""
    from gpt_jax.data import registry
    from gpt_jax.data.ranking import held_out

    out: dict[str, list[Example]] = {"train": [], "heldout": []}

    def add(text, label, source, rid):
        if text:
            part = "heldout" if held_out(rid, heldout_fraction, salt="moderation") else "train"
            out[part].append(Example(text, label, source, rid))

    for label, names in ((1, HARMFUL_SETS), (0, BENIGN_SETS)):
        for name in names:
            builder = registry.prepare(name, data_dir=data_dir, cache_dir=cache_dir,
                                       skip_bad_records=skip_bad_records)
            for split in builder.info.splits:
                for rec in registry.read_records(builder, split):
                    msgs = rec["prompt"] if label else rec["messages"]
                    add(first_user_turn(msgs), label, name, rec["id"])
                    if replies and not label:  # a record's request and reply: one side
                        add(first_turn(msgs, "assistant"), 0, f"{name}:reply", rec["id"])
    if arithmetic:
        from gpt_jax.tasks import get_task

        task = get_task("arithmetic")
        for i, problem in enumerate(task.problems("train", int(arithmetic), seed=0)):
            msgs = task.demonstration(problem)
            add(first_user_turn(msgs), 0, "arithmetic", f"arithmetic-{i}")
            add(first_turn(msgs, "assistant"), 0, "arithmetic:reply", f"arithmetic-{i}")
    return out


def encode(tokenizer, text: str, seq_len: int) -> list[int]:
    ids = tokenizer.encode(text)[: seq_len - 2]
    return [tokenizer.bos_id, *ids, tokenizer.eos_id]


def batch(tokenizer, texts, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """tokens [N, seq_len] (right-padded), eos_index [N]."""
    tokens = np.full((len(texts), seq_len), tokenizer.pad_id, np.int32)
    eos = np.zeros((len(texts),), np.int32)
    for i, t in enumerate(texts):
        ids = encode(tokenizer, t, seq_len)
        tokens[i, : len(ids)], eos[i] = ids, len(ids) - 1
    return tokens, eos
