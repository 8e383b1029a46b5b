"""MMLU (Hendrycks et al.): 57 subjects of 4-way multiple choice, k-shot log-likelihood.

The lm-evaluation-harness / original-paper format: a header naming the subject, k solved
questions from the subject's dev split, then the question; each answer letter is scored as the
continuation " A" / " B" / " C" / " D" and the highest log-likelihood is the model's answer.
When k shots do not fit the model's context, shots are dropped (then the question's start is
cut) until it fits; the mean number of shots used is reported (the tiny model's 256 tokens hold
~1 shot; a 1,024-token model holds all 5 for most subjects).

Data: the registry's `mmlu` builder (`$GPT_JAX_DATA/eval/mmlu/mmlu.zip`, read in place; a bad
row is an error naming its file and line).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

LETTERS = "ABCD"
CHANCE = 0.25


def read_split(builder, split: str) -> dict[str, list[dict]]:
    """{subject: [{"question", "choices", "answer" (index)}]} of the registry's `mmlu` builder
    (dev / val / test, in file order)."""
    from gpt_jax.data import registry

    out: dict[str, list[dict]] = {}
    for rec in registry.read_records(builder, split):
        out.setdefault(rec["source"], []).append(rec)
    return out


def _block(q: dict, with_answer: bool) -> str:
    lines = [q["question"].strip()] + [f"{L}. {c}" for L, c in zip(LETTERS, q["choices"])]
    return "\n".join(lines) + "\nAnswer:" + (f" {LETTERS[q['answer']]}\n\n" if with_answer else "")


def prompt_ids(tokenizer, subject: str, shots: list[dict], q: dict, room: int) -> tuple[list[int], int]:
    """(context ids, shots used): the header, as many of the shots as fit in `room` tokens (the
    last ones dropped first), the question."""
    header = f"The following are multiple choice questions (with answers) about " \
             f"{subject.replace('_', ' ')}.\n\n"
    start = [tokenizer.eos_id] + tokenizer.encode(header)
    tail = tokenizer.encode(_block(q, False))
    blocks = [tokenizer.encode(_block(s, True)) for s in shots]
    while blocks and len(start) + sum(map(len, blocks)) + len(tail) > room:
        blocks.pop()
    ids = start + [t for b in blocks for t in b] + tail
    if len(ids) > room:  # not even 0-shot fits: keep the header's first token and the end
        ids = ids[:1] + ids[len(ids) - room + 1:]
    return ids, len(blocks)


def questions(builder, limit: int | None) -> Iterator[tuple[str, list[dict], list[dict]]]:
    """(subject, dev shots, test questions (the first `limit` of each subject))."""
    dev, test = read_split(builder, "dev"), read_split(builder, "test")
    for subject in sorted(test):
        qs = test[subject] if limit is None else test[subject][:limit]
        yield subject, dev.get(subject, []), qs


def score_subject(config, params, tokenizer, subject: str, shots: list[dict], qs: list[dict],
                  k_shot: int) -> dict:
    """{"correct", "total", "shots"} for one subject."""
    from gpt_jax.eval.loglik import choice_logliks

    letters = [tokenizer.encode(f" {L}") for L in LETTERS]
    room = config.max_seq_len - max(map(len, letters))
    contexts, used = zip(*(prompt_ids(tokenizer, subject, shots[:k_shot], q, room) for q in qs))
    ll = choice_logliks(params, config, contexts, [letters] * len(qs), pad_id=tokenizer.pad_id)
    pred = ll.argmax(-1)
    gold = np.array([q["answer"] for q in qs])
    return {"correct": int((pred == gold).sum()), "total": len(qs),
            "shots": float(np.mean(used))}


def summarize(per_subject: dict[str, dict]) -> dict:
    """Micro (every question alike) and macro (every subject alike) accuracy, per subject too."""
    correct = sum(r["correct"] for r in per_subject.values())
    total = sum(r["total"] for r in per_subject.values())
    accs = {s: r["correct"] / r["total"] for s, r in per_subject.items() if r["total"]}
    return {"micro_accuracy": correct / max(total, 1),
            "macro_accuracy": float(np.mean(list(accs.values()))) if accs else 0.0,
            "questions": total, "subjects": len(accs),
            "mean_shots": float(np.mean([r["shots"] for r in per_subject.values()]))
            if per_subject else 0.0,
            "chance": CHANCE, "per_subject": accs}
