"""Verifiable-answer builders: GSM8K (`problem`, numeric answer) and MMLU (`multiple_choice`).
Both keep their published splits (GSM8K train/test; MMLU dev/val/test)."""
from __future__ import annotations

import csv
import io
import re

from gpt_jax.data.builder_base import SourceBuilder
from gpt_jax.data.readers import BadRecordError, field, iter_jsonl, iter_zip_members


def gsm8k_answer(solution: str) -> str:
    """The number after the final '#### ' line, commas removed ("1,000" -> "1000")."""
    if "####" not in solution:
        raise BadRecordError("solution has no '#### <answer>' line")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    try:
        float(answer)
    except ValueError as e:
        raise BadRecordError(f"final answer {answer!r} is not a number") from e
    return answer


class Gsm8k(SourceBuilder):
    """GSM8K grade-school math: train 7,473 / test 1,319; answer = the final number."""

    RECORD_TYPE = "problem"
    FILES = ("math/gsm8k/train.jsonl", "math/gsm8k/test.jsonl")

    def _records(self):
        for split, i in (("train", 0), ("test", 1)):
            for loc, thunk in iter_jsonl(self.file(i)):
                yield split, loc, (lambda t=thunk: self._convert(t()))

    @staticmethod
    def _convert(obj) -> dict:
        solution = field(obj, "answer")
        return {"question": field(obj, "question"), "solution": solution, "answer": gsm8k_answer(solution)}


_MMLU_MEMBER = re.compile(r"data/(dev|val|test)/(.+)_(dev|val|test)\.csv$")


class Mmlu(SourceBuilder):
    """MMLU, 57 subjects: dev 285 (5-shot exemplars) / val 1,531 / test 14,042; answer = index."""

    RECORD_TYPE = "multiple_choice"
    FILES = ("eval/mmlu/mmlu.zip",)

    def _records(self):
        for loc, thunk in iter_zip_members(self.file(), lambda n: _MMLU_MEMBER.search(n) is not None):
            split, subject, _ = _MMLU_MEMBER.search(loc).groups()
            rows = csv.reader(io.StringIO(thunk().decode("utf-8")))
            for rowno, row in enumerate(rows, start=1):
                yield split, f"{loc}:{rowno}", (lambda r=row, s=subject: self._convert(r, s))

    @staticmethod
    def _convert(row: list[str], subject: str) -> dict:
        if len(row) != 6:
            raise BadRecordError(f"expected 6 columns, got {len(row)}")
        letter = row[5].strip()
        if letter not in ("A", "B", "C", "D"):
            raise BadRecordError(f"answer {letter!r} is not A-D")
        return {"question": row[0], "choices": row[1:5], "answer": "ABCD".index(letter), "source": subject}
