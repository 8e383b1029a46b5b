"""Arithmetic drills for pretraining: "47 + 38 = 85" lines, so the model practises the digit
arithmetic of the task before SFT ever asks for it.

Small transformers learn column arithmetic from data where every digit is its own token
(gpt_jax/tokenizer.py) and where the hard cases are common: a uniform draw of 2-digit additions
has a carry in under half of them, so drills are balanced by the number of carries (additions) or
borrows (subtractions): the count is drawn uniformly from those possible for the digit lengths,
then operands are drawn until they have it.

Mix (`OPS`): additions and subtractions of 1-3-digit numbers (the task's L1/L2 steps and L3 sums;
a difference is never negative) and single-digit times tables up to 12 x 12. Equations use the
task's own spacing ("a op b = c"), so a drill is exactly a chain-of-thought line without its
full stop. Operand pairs that `arithmetic.pair_is_heldout` reserves for evaluation are never drilled.

`drill_documents(split, n_docs, seed)` is a pure function of its arguments; the "heldout" split
holds only held-out pairs (for the pretraining eval loss and the `probe`), "train" none of them.
"""
from __future__ import annotations

import random

from gpt_jax.tasks.arithmetic import apply_op, pair_is_heldout

LINES_PER_DOC = 48
# (op, weight): the share of each operation among drills.
OPS = (("+", 0.45), ("-", 0.45), ("*", 0.10))
# Operand lengths (digits) of + and -: mostly 2 digits, the task's L1/L2 operands.
DIGITS, DIGIT_WEIGHTS = (1, 2, 3), (0.2, 0.5, 0.3)


def carries(op: str, a: int, b: int) -> int:
    """Column carries of a + b, or borrows of a - b (a >= b)."""
    count, carry = 0, 0
    while a or b:
        da, db = a % 10, b % 10
        if op == "+":
            carry = 1 if da + db + carry >= 10 else 0
        else:
            carry = 1 if da - db - carry < 0 else 0
        count += carry
        a, b = a // 10, b // 10
    return count


def _digits(rng: random.Random, d: int) -> int:
    return rng.randint(1 if d == 1 else 10 ** (d - 1), 10**d - 1)


def draw_pair(rng: random.Random, op: str) -> tuple[int, int]:
    """One (a, b) for `op`, balanced by carries/borrows (+, -) or a times-table entry (*)."""
    if op == "*":
        return rng.randint(2, 12), rng.randint(2, 12)
    da, db = rng.choices(DIGITS, DIGIT_WEIGHTS, k=2)
    if op == "-" and db > da:
        da, db = db, da
    # The most carries the shorter operand's columns allow; a difference never borrows at its top
    # digit (a >= b), so equal-length subtractions have one fewer.
    most = min(da, db) - (1 if op == "-" and da == db else 0)
    target = rng.randint(0, most)
    a = b = 0
    for _ in range(200):
        a, b = _digits(rng, da), _digits(rng, db)
        if op == "-" and b > a:
            a, b = b, a
        if carries(op, a, b) == target:
            break
    return a, b


def drill_line(op: str, a: int, b: int) -> str:
    return f"{a} {op} {b} = {apply_op(op, a, b)}"


def drill_documents(split: str, n_docs: int, seed: int = 0) -> list[str]:
    """`n_docs` documents of LINES_PER_DOC drill lines each, none using a pair of the other split."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split={split!r}; expected 'train' or 'heldout'")
    rng = random.Random(f"drills:{split}:{seed}")
    ops, weights = zip(*OPS)
    docs = []
    for _ in range(n_docs):
        lines = []
        while len(lines) < LINES_PER_DOC:
            op = rng.choices(ops, weights)[0]
            a, b = draw_pair(rng, op)
            if pair_is_heldout(op, a, b) == (split == "heldout"):
                lines.append(drill_line(op, a, b))
        docs.append("\n".join(lines) + "\n")
    return docs


def probe_pairs(n: int, seed: int = 0) -> list[tuple[str, int, int]]:
    """`n` held-out 2-digit additions and subtractions (half each) for the pretraining probe."""
    rng = random.Random(f"drills:probe:{seed}")
    out, seen = [], set()
    while len(out) < n:
        op = "+" if len(out) % 2 == 0 else "-"
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if op == "-" and b > a:
            a, b = b, a
        if (op, a, b) not in seen and pair_is_heldout(op, a, b):
            seen.add((op, a, b))
            out.append((op, a, b))
    return out


def drill_probe(params, model_config, tokenizer, n: int = 200, seed: int = 0) -> dict:
    """Greedy exact match of the model on `n` held-out "a + b =" / "a - b =" drills (2-digit),
    each asked as a pretraining document opening (<|eos|> then the drill's left side)."""
    from gpt_jax.sampling import SamplingConfig, generate

    pairs = probe_pairs(n, seed)
    prompts = [[tokenizer.eos_id, *tokenizer.encode(f"{a} {op} {b} =")] for op, a, b in pairs]
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=6, stop_ids=(tokenizer.eos_id,),
                              stop_strings=("\n",))
    gen = generate(params, model_config, prompts, sampling, pad_id=tokenizer.pad_id,
                   tokenizer=tokenizer)
    right = {"+": [], "-": []}
    for i, (op, a, b) in enumerate(pairs):
        text = tokenizer.decode([t for t in gen.row(i) if t != tokenizer.eos_id])
        right[op].append(text.strip() == str(apply_op(op, a, b)))
    return {"accuracy": sum(map(sum, right.values())) / n, "n": n,
            "add_accuracy": sum(right["+"]) / max(1, len(right["+"])),
            "sub_accuracy": sum(right["-"]) / max(1, len(right["-"]))}
