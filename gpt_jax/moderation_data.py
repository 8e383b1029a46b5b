"""The moderation classifier's data: harmful requests against benign instructions, from shipped sets.

- harmful (label 1): the first human turn of every dialogue in the HH-RLHF harmless set
  (`hh_rlhf_harmless_test`: red-team attempts to get harmful help);
- benign (label 0): the first user turn of the English SFT sets (LIMA, alpaca, code_alpaca,
  GPTeacher, the self-instruct seeds). English only on both sides, so the classifier cannot
  learn "Chinese means benign" from the data's make-up.

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
    for m in messages:
        if m["role"] == "user" and m["content"].strip():
            return m["content"].strip()
    return None


def load_examples(data_dir, cache_dir, heldout_fraction: float,
                  skip_bad_records: bool = False) -> dict[str, list[Example]]:
    """{"train": [...], "heldout": [...]} from every split of the sets above."""
    from gpt_jax.data import registry
    from gpt_jax.data.ranking import held_out

    out: dict[str, list[Example]] = {"train": [], "heldout": []}
    for label, names in ((1, HARMFUL_SETS), (0, BENIGN_SETS)):
        for name in names:
            builder = registry.prepare(name, data_dir=data_dir, cache_dir=cache_dir,
                                       skip_bad_records=skip_bad_records)
            for split in builder.info.splits:
                for rec in registry.read_records(builder, split):
                    msgs = rec["prompt"] if label else rec["messages"]
                    text = first_user_turn(msgs)
                    if text is None:
                        continue
                    part = "heldout" if held_out(rec["id"], heldout_fraction,
                                                 salt="moderation") else "train"
                    out[part].append(Example(text, label, name, rec["id"]))
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
