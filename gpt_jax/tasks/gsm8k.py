"""GSM8K (shipped math/gsm8k) behind the task interface, for models large enough to attempt it.

Splits: "train" = GSM8K train (7,473), "heldout" = GSM8K test (1,319). The demonstration is the
reference solution with its calculator annotations `<<48/2=24>>` removed and the final "#### N"
line rewritten as "The answer is N.", the same closing sentence as the arithmetic task.
"""
from __future__ import annotations

import dataclasses
import re

from gpt_jax.tasks.base import Problem, demonstration, normalize_number, prompt_messages

_CALC = re.compile(r"<<[^>]*>>")


def clean_solution(solution: str, answer: str) -> str:
    body = solution.rsplit("####", 1)[0].strip()
    return f"{_CALC.sub('', body)}\nThe answer is {answer}."


@dataclasses.dataclass(frozen=True)
class Gsm8kTask:
    data_dir: str | None = None
    cache_dir: str = ""
    name: str = "gsm8k"

    def problems(self, split: str, n: int | None = None, seed: int = 0) -> list[Problem]:
        """The first `n` (all if None) problems of the split, in a seed-shuffled order."""
        import random

        from gpt_jax.data import registry

        if split not in ("train", "heldout"):
            raise ValueError(f"split={split!r}; expected 'train' or 'heldout'")
        if not self.cache_dir:
            raise ValueError("Gsm8kTask needs cache_dir (where the TFDS files are built)")
        builder = registry.prepare("gsm8k", data_dir=self.data_dir, cache_dir=self.cache_dir)
        out = []
        for rec in registry.read_records(builder, "train" if split == "train" else "test"):
            answer = normalize_number(rec["answer"]) or rec["answer"]
            out.append(Problem(id=rec["id"], question=rec["question"], answer=answer,
                               solution=clean_solution(rec["solution"], answer), source=self.name))
        random.Random(f"{self.name}:{split}:{seed}").shuffle(out)
        return out if n is None else out[:n]

    prompt_messages = staticmethod(prompt_messages)
    demonstration = staticmethod(demonstration)
