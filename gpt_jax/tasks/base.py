"""What every verifiable task shares: the Problem record, answer parsing, chat rendering.

A task turns problems into chat conversations:
- `prompt_messages(problem)`  -> [{"role": "user", ...}]: what a policy is asked (PPO, sampling);
- `demonstration(problem)`    -> prompt + the assistant's chain-of-thought reply (SFT data).

Every demonstration ends in the same parseable sentence, "The answer is N.", so one parser
(`parse_answer`) reads the final answer of any task's completions; GSM8K's "#### N" is accepted too.
"""
from __future__ import annotations

import dataclasses
import re

ANSWER_RE = re.compile(r"(?:answer is|####)\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
# "12 + 7 = 19" (also "12 x 3", "12 * 3", "12 × 3", "12 / 3"), numbers may carry commas/decimals.
EQUATION_RE = re.compile(
    r"(-?\d[\d,]*\.?\d*)\s*([-+*/x×÷])\s*(-?\d[\d,]*\.?\d*)\s*=\s*(-?\d[\d,]*\.?\d*)")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One verifiable problem. `answer` is the canonical final number as a string."""

    id: str
    question: str
    answer: str
    solution: str  # the demonstration reply as text (ending "The answer is N.")
    source: str = ""
    level: str = ""  # the task's difficulty level, if it has levels ("L1", ...)
    mode: str = ""  # the answer mode the prompt asks for, if the task has modes ("cot", ...)
    chain: str = ""  # the full worked solution, whatever the mode's reply shows of it
    equations: str = ""  # one "a op b = c." line per operation (what a tool call computes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def normalize_number(text: str | None) -> str | None:
    """'1,234' -> '1234', '3.50' -> '3.5', '7.0' -> '7'; None for anything unparseable."""
    if text is None:
        return None
    text = text.replace(",", "").strip().rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return None
    if value == int(value):
        return str(int(value))
    return repr(value)


def parse_answer(text: str) -> str | None:
    """The LAST "The answer is N" (or "#### N") in `text`, normalized; None if there is none."""
    matches = ANSWER_RE.findall(text)
    return normalize_number(matches[-1]) if matches else None


def _to_float(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def check_equations(text: str) -> tuple[int, int]:
    """(correct, wrong) counts of the "a op b = c" statements in `text` (checked to 1e-6)."""
    ok = bad = 0
    for a, op, b, c in EQUATION_RE.findall(text):
        x, y, z = _to_float(a), _to_float(b), _to_float(c)
        if x is None or y is None or z is None:
            bad += 1
            continue
        if op == "+":
            v = x + y
        elif op == "-":
            v = x - y
        elif op in "*x×":
            v = x * y
        else:
            v = x / y if y else float("nan")
        if abs(v - z) <= 1e-6 * max(1.0, abs(v)):
            ok += 1
        else:
            bad += 1
    return ok, bad


def prompt_messages(problem: Problem) -> list[dict]:
    return [{"role": "user", "content": problem.question}]


def demonstration(problem: Problem) -> list[dict]:
    return prompt_messages(problem) + [{"role": "assistant", "content": problem.solution}]
