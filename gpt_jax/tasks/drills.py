"""Arithmetic drills for pretraining, so the model practises the task's arithmetic before SFT asks
for it. A drill document holds blocks of one kind:

- worked sums (`WORKED`, 70% of documents): "47 + 38 = ?" then the column method of the task's
  chain of thought ("7 + 8 = 15.", "4 + 3 + 1 = 8.", "47 + 38 = 85."; `arithmetic.worked_lines`,
  the very text the cot mode writes): single-digit facts with the carry or borrow written out,
  and the composition of the result from them;
- plain equations "47 + 38 = 85." (what the direct mode needs in one step: far harder).

One kind per document, so a few lines of context tell the model (and the probe) which one comes
next. Times tables were a third kind; dropping them measured 4x better on the worked probe at the
same tokens (a 4-layer d=128 model, 3M drill tokens: 0.125 with 10% times-table blocks, 0.50
without; docs/arithmetic.md, "How fast drills are learned"): the memorised products competed with
the column facts, and the task's products are the calculator's job.

Small transformers learn digit arithmetic from data where every digit is its own token
(gpt_jax/tokenizer.py) and where the hard cases are common: a uniform draw of 2-digit additions
has a carry in under half of them, so operand pairs are balanced by the number of carries
(additions) or borrows (subtractions): the count is drawn uniformly from those possible for the
digit lengths, then operands are drawn until they have it. Operands are 1-3 digits, mostly 2 (the
task's L1/L2 numbers). Operand pairs that `arithmetic.pair_is_heldout` reserves for evaluation are
never drilled.

`drill_documents(split, n_docs, seed)` is a pure function of its arguments; the "heldout" split
holds only held-out pairs (for the pretraining eval loss), "train" none of them. The probes
(`drill_probe`) ask held-out pairs both ways: "a op b =" after plain context lines (in one step)
and "a op b = ?" (worked).
"""
from __future__ import annotations

import random

from gpt_jax.tasks.arithmetic import apply_op, pair_is_heldout, worked_lines

LINES_PER_DOC = 48
# (document kind, weight): worked column sums, plain +/- equations.
KINDS = (("worked", 0.7), ("plain", 0.3))
# The plain probe's context: train pairs as plain lines, so "a op b =" reads as a plain drill.
PLAIN_CONTEXT = ("23 + 14 = 37.", "81 - 36 = 45.", "58 + 27 = 85.", "64 - 29 = 35.")
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
    """One (a, b) for `op` (+ or -), balanced by carries/borrows."""
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


def drill_block(kind: str, op: str, a: int, b: int) -> list[str]:
    if kind == "worked":
        return worked_lines(op, a, b)
    return [f"{a} {op} {b} = {apply_op(op, a, b)}."]


def drill_documents(split: str, n_docs: int, seed: int = 0) -> list[str]:
    """`n_docs` documents of about LINES_PER_DOC lines, none using a pair of the other split."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split={split!r}; expected 'train' or 'heldout'")
    rng = random.Random(f"drills:{split}:{seed}")
    kinds, weights = zip(*KINDS)
    docs = []
    for _ in range(n_docs):
        lines = []
        kind = rng.choices(kinds, weights)[0]
        while len(lines) < LINES_PER_DOC:
            op = rng.choice("+-")
            a, b = draw_pair(rng, op)
            if pair_is_heldout(op, a, b) == (split == "heldout"):
                lines += drill_block(kind, op, a, b)
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


# The probes' prompts (after <|eos|>) and new tokens: a worked 2-digit block is at most 40 tokens.
PROBE_ASKS = {"plain": ("\n".join(PLAIN_CONTEXT) + "\n{a} {op} {b} =", 6),
              "worked": ("{a} {op} {b} = ?\n", 40)}


def probe_is_right(kind: str, op: str, a: int, b: int, text: str, sep: str = " ") -> bool:
    """Whether a probe's continuation `text` answers `a op b`: `plain` reads its first line,
    `worked` the line that restates the pair ("a op b = c."). `sep` is the drills' spacing."""
    if kind == "plain":
        got = text.split("\n")[0].strip().rstrip(".")
    else:
        head = sep.join((str(a), op, str(b), "=")) + sep
        got = next((ln[len(head):].rstrip(".") for ln in text.split("\n")
                    if ln.startswith(head)), None)
    return got == str(apply_op(op, a, b))


def drill_probe(params, model_config, tokenizer, n: int = 200, seed: int = 0) -> dict:
    """Greedy exact match on `n` held-out 2-digit additions and subtractions, each asked as a
    pretraining document opening (<|eos|>, then the drill): `plain` "a op b =" after the
    PLAIN_CONTEXT lines (one step) and `worked` "a op b = ?" followed by the model's own column
    steps (its last equation is read)."""
    from gpt_jax.sampling import SamplingConfig, generate

    pairs = probe_pairs(n, seed)
    out = {"n": n}
    for kind, (ask, new_tokens) in PROBE_ASKS.items():
        prompts = [[tokenizer.eos_id, *tokenizer.encode(ask.format(a=a, op=op, b=b))]
                   for op, a, b in pairs]
        # a short-context model gets what fits (it then reads fewer worked lines)
        new_tokens = min(new_tokens, model_config.max_seq_len - max(map(len, prompts)))
        if new_tokens < 1:
            out[f"{kind}_accuracy"] = None
            continue
        sampling = SamplingConfig(temperature=0.0, max_new_tokens=new_tokens,
                                  stop_ids=(tokenizer.eos_id,))
        gen = generate(params, model_config, prompts, sampling, pad_id=tokenizer.pad_id)
        right = [probe_is_right(kind, op, a, b, tokenizer.decode(
                     [t for t in gen.row(i) if t != tokenizer.eos_id]))
                 for i, (op, a, b) in enumerate(pairs)]
        out[f"{kind}_accuracy"] = sum(right) / n
    return out
