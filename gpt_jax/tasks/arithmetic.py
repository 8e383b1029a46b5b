"""Arithmetic word problems from a seed: 1-3 operations (+, -, x) on 1-3 digit numbers.

    Q: "Mia has 23 marbles. She buys 45 more. Then she gives away 12. How many marbles does Mia
        have now?"
    A: "23 + 45 = 68.\n68 - 12 = 56.\nThe answer is 56."

One equation line per operation, then the final sentence that `base.parse_answer` reads, so the
chain of thought is checkable step by step (the labeler's "well-formed reasoning") and the answer
exactly. Subtractions never go below zero; a multiplier is a single digit 2-9.

Train/held-out split: a problem's split is a pure function of its arithmetic (start number, ops,
operands), sha256-hashed; `heldout_percent` of that space is held out. So the two splits share no
computation, whatever names and objects dress it, and any seed gives disjoint sets.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random

from gpt_jax.tasks.base import Problem, demonstration, prompt_messages

NAMES = [("Mia", "She"), ("Tom", "He"), ("Ava", "She"), ("Leo", "He"), ("Zoe", "She"),
         ("Sam", "He"), ("Ivy", "She"), ("Max", "He"), ("Eva", "She"), ("Ben", "He")]
ITEMS = ["apples", "marbles", "books", "coins", "stickers", "pencils", "cards", "shells"]
ADD = ["{p} buys {n} more.", "{p} finds {n} more.", "{p} gets {n} more."]
SUB = ["{p} gives away {n}.", "{p} loses {n}.", "{p} sells {n}."]
MUL = ["{p} then has {n} times as many.", "The number grows {n} times."]


@dataclasses.dataclass(frozen=True)
class ArithmeticTask:
    min_ops: int = 1
    max_ops: int = 3
    max_digits: int = 3
    heldout_percent: int = 10
    name: str = "arithmetic"

    def __post_init__(self):
        if not 1 <= self.min_ops <= self.max_ops:
            raise ValueError(f"need 1 <= min_ops <= max_ops, got {self.min_ops}, {self.max_ops}")
        if not 1 <= self.max_digits <= 6:
            raise ValueError(f"max_digits={self.max_digits}; expected 1..6")

    # -- generation ---------------------------------------------------------------------------
    def split_of(self, start: int, steps: tuple) -> str:
        key = f"{start}|" + "|".join(f"{op}{n}" for op, n in steps)
        h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
        return "heldout" if h % 100 < self.heldout_percent else "train"

    def _number(self, rng: random.Random) -> int:
        digits = rng.randint(1, self.max_digits)
        return rng.randint(1 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    def _draw(self, rng: random.Random) -> tuple[int, tuple]:
        value = start = self._number(rng)
        steps = []
        for _ in range(rng.randint(self.min_ops, self.max_ops)):
            op = rng.choice("+-x")
            if op == "x":
                n = rng.randint(2, 9)
            else:
                n = self._number(rng)
                if op == "-" and n > value:
                    op = "+" if value < 1 else op
                    n = n if op == "+" else rng.randint(1, value)
            value = value + n if op == "+" else value - n if op == "-" else value * n
            steps.append((op, n))
        return start, tuple(steps)

    def render(self, start: int, steps: tuple, rng: random.Random) -> Problem:
        name, pron = rng.choice(NAMES)
        item = rng.choice(ITEMS)
        sentences, lines, value = [f"{name} has {start} {item}."], [], start
        for k, (op, n) in enumerate(steps):
            template = rng.choice({"+": ADD, "-": SUB, "x": MUL}[op])
            text = template.format(p=pron, n=n)
            if k and template.startswith("{p}") and "then" not in template and rng.random() < 0.5:
                text = f"Then {pron.lower()}{text[len(pron):]}"
            sentences.append(text)
            new = value + n if op == "+" else value - n if op == "-" else value * n
            lines.append(f"{value} {op} {n} = {new}.")
            value = new
        question = " ".join(sentences) + f" How many {item} does {name} have now?"
        solution = "\n".join(lines + [f"The answer is {value}."])
        key = f"{start}|" + "|".join(f"{op}{n}" for op, n in steps)
        return Problem(id=f"arith-{hashlib.sha256(key.encode()).hexdigest()[:12]}",
                       question=question, answer=str(value), solution=solution, source=self.name)

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """`n` distinct problems of `split` ("train" | "heldout"), a pure function of the seed."""
        if split not in ("train", "heldout"):
            raise ValueError(f"split={split!r}; expected 'train' or 'heldout'")
        rng = random.Random(f"{self.name}:{split}:{seed}")
        out, seen, tries = [], set(), 0
        while len(out) < n:
            tries += 1
            if tries > 200 * n + 10_000:
                raise ValueError(f"cannot draw {n} distinct {split} problems with {self}")
            start, steps = self._draw(rng)
            if (start, steps) in seen or self.split_of(start, steps) != split:
                continue
            seen.add((start, steps))
            out.append(self.render(start, steps, rng))
        return out

    prompt_messages = staticmethod(prompt_messages)
    demonstration = staticmethod(demonstration)
