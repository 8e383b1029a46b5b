"""Verifiable tasks: seeded arithmetic problems with disjoint splits and checkable demonstrations;
GSM8K behind the same interface."""
import pytest

from gpt_jax.tasks import ArithmeticTask, check_equations, drills, get_task, parse_answer
from gpt_jax.tasks.arithmetic import (LEVELS, MODES, SYSTEM_PROMPTS, apply_op, column_lines,
                                      pair_is_heldout)
from gpt_jax.tasks.gsm8k import clean_solution


def _chain(p):
    """[(op, a, b, c)] of a problem's operations."""
    out = []
    for line in p.equations.splitlines():
        a, op, b, _, c = line.rstrip(".").split(" ")
        out.append((op, int(a), int(b), int(c)))
    return out


def test_arithmetic_is_seeded_and_splits_are_disjoint():
    task = ArithmeticTask()
    a, b = task.problems("train", 300, seed=3), task.problems("train", 300, seed=3)
    assert a == b and len({p.id for p in a}) == 300
    assert task.problems("train", 50, seed=4) != a[:50]
    held = task.problems("heldout", 300, seed=3)
    train_more = a + task.problems("train", 3000, seed=9)
    base = lambda p: p.id.split(":")[0]  # noqa: E731
    assert not {base(p) for p in held} & {base(p) for p in train_more}
    # held-out problems use at least one held-out operand pair; train problems none
    for p in held:
        assert any(pair_is_heldout(op, x, y) for op, x, y, _ in _chain(p))
    for p in train_more:
        assert not any(pair_is_heldout(op, x, y) for op, x, y, _ in _chain(p))
    # some held-out phrasings are never trained on
    for phrase in ("starts out with", "is given", "picks up", "drops", "trades away",
                   "end up with", "bags holds"):
        assert not any(phrase in p.question for p in train_more), phrase
        assert any(phrase in p.question for p in held), phrase


def test_levels_and_modes():
    task = ArithmeticTask()
    for level, n_steps in (("L1", 1), ("L2", 2), ("L3", 1)):
        problems = task.problems("heldout", 200, seed=0, level=level)
        assert {p.level for p in problems} == {level}
        for p in problems:
            chain = _chain(p)
            assert len(chain) == n_steps and all(c >= 0 for *_, c in chain)
            if level == "L3":
                op, x, y, _ = chain[0]
                assert 100 <= x <= 999 and (op, len(str(y))) in (("*", 2), ("+", 3))
            else:
                assert all(op in "+-" and 1 <= y <= 99 for op, _, y, _ in chain)
        # the same questions in every mode
        for mode in MODES:
            again = [ArithmeticTask.with_mode(p, mode) for p in problems]
            assert [q.question for q in again] == [p.question for p in problems]
            assert all(parse_answer(q.solution) == q.answer for q in again)
    p = ArithmeticTask.with_mode(task.problems("train", 1, level="L2")[0], "direct")
    assert p.solution == f"The answer is {p.answer}." and p.id.endswith(":direct")
    msgs = ArithmeticTask.demonstration(p)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0]["content"] == SYSTEM_PROMPTS["direct"]
    cot = ArithmeticTask.with_mode(p, "cot")
    assert cot.solution == cot.chain
    steps = cot.solution.splitlines()[:-1]
    questions = [ln for ln in steps if ln.endswith(" = ?")]
    # each operation opens with its question line, exactly as the drills write it
    assert [q[:-len(" = ?")] for q in questions] == \
        [eq.split(" = ")[0] for eq in p.equations.splitlines()]
    for line in steps:  # every other written step is a true equation
        if line in questions:
            continue
        lhs, rhs = line.rstrip(".").split(" = ")
        terms = lhs.split(" ")
        value = int(terms[0])
        for op, n in zip(terms[1::2], terms[2::2]):
            value = apply_op(op, value, int(n))
        assert value == int(rhs), line
    assert [ln for ln in cot.solution.splitlines() if ln in p.equations.splitlines()] == \
        p.equations.splitlines()  # each operation's whole equation closes its column steps
    assert ArithmeticTask.with_mode(p, "calc").solution == \
        p.equations + f"\nThe answer is {p.answer}."
    calc = ArithmeticTask.with_mode(p, "calc")
    parts = ArithmeticTask.demonstration(calc)[-1]["content"]
    (op1, a1, b1, c1), (op2, a2, b2, c2) = _chain(p)
    assert parts == [
        {"type": "tool_call", "text": f"{a1} {op1} {b1}"}, {"type": "tool_result", "text": str(c1)},
        {"type": "text", "text": ".\n"},
        {"type": "tool_call", "text": f"{a2} {op2} {b2}"}, {"type": "tool_result", "text": str(c2)},
        {"type": "text", "text": f".\nThe answer is {p.answer}."}]
    mix = task.problems("train", 3000)
    assert {p.level for p in mix} == set(LEVELS) and {p.mode for p in mix} == set(MODES)
    with pytest.raises(ValueError, match="unknown 'L9'"):
        ArithmeticTask(levels="L1,L9")


def _drill_pairs(docs):
    """[(kind, op, a, b, lines)] of the blocks of drill documents, every line checked true."""
    blocks = []
    for doc in docs:
        lines = doc.splitlines()
        i = 0
        while i < len(lines):
            a, op, b, eq, rhs = lines[i].split(" ")
            a, b = int(a), int(b)
            assert eq == "="
            if rhs == "?":
                block = drills.drill_block("worked", op, a, b)
                assert lines[i:i + len(block)] == block
                blocks.append(("worked", op, a, b, block))
                i += len(block)
            else:
                assert int(rhs.rstrip(".")) == apply_op(op, a, b) >= 0
                blocks.append(("plain", op, a, b, [lines[i]]))
                i += 1
    return blocks


def test_drills_are_balanced_and_skip_heldout_pairs():
    docs = drills.drill_documents("train", 200)
    doc_kinds = [{k for k, *_ in _drill_pairs([doc])} for doc in docs]
    assert all(len(k) == 1 for k in doc_kinds)  # one kind per document
    assert 0.6 < sum(k == {"worked"} for k in doc_kinds) / len(docs) < 0.8  # KINDS: 0.7 / 0.3
    blocks = _drill_pairs(docs[:60])
    assert {op for _, op, *_ in blocks} == {"+", "-"}
    by_carries = {"+": {}, "-": {}}
    for kind, op, a, b, _ in blocks:
        assert not pair_is_heldout(op, a, b)
        if op in "+-" and len(str(a)) == len(str(b)) == 2:
            counts = by_carries[op]
            counts[drills.carries(op, a, b)] = counts.get(drills.carries(op, a, b), 0) + 1
    # 2-digit pairs: 0/1/2 carries about a third each (a uniform draw has 2 in ~10%), 0/1 borrows
    # about half each
    for op, possible in (("+", (0, 1, 2)), ("-", (0, 1))):
        total = sum(by_carries[op].values())
        share = 1 / len(possible)
        assert set(by_carries[op]) == set(possible)
        assert all(abs(by_carries[op][k] / total - share) < 0.12 for k in possible), by_carries
    held = _drill_pairs(drills.drill_documents("heldout", 5))
    assert all(pair_is_heldout(op, a, b) for _, op, a, b, _ in held)
    assert drills.carries("+", 95, 7) == 2 and drills.carries("-", 100, 1) == 2
    assert drills.carries("+", 12, 34) == 0 and drills.carries("-", 52, 7) == 1
    assert drills.probe_is_right("plain", "+", 47, 38, " 85.\n12 + 3 = 15.")
    assert drills.probe_is_right("worked", "-", 93, 58, "13 - 8 = 5.\n9 - 1 - 5 = 3.\n93 - 58 = 35.")
    assert drills.probe_is_right("worked", "+", 47, 38, "7+8=15.\n4+3+1=8.\n47+38=85.", sep="")
    assert not drills.probe_is_right("worked", "+", 47, 38, "47 + 38 = 84.")
    probe = drills.probe_pairs(50)
    assert len(set(probe)) == 50 and all(pair_is_heldout(*q) for q in probe)


def test_column_method_lines():
    assert column_lines("+", 47, 38) == ["7 + 8 = 15.", "4 + 3 + 1 = 8.", "47 + 38 = 85."]
    assert column_lines("-", 93, 58) == ["13 - 8 = 5.", "9 - 1 - 5 = 3.", "93 - 58 = 35."]
    assert column_lines("-", 50, 7) == ["10 - 7 = 3.", "5 - 1 = 4.", "50 - 7 = 43."]
    assert column_lines("+", 123, 45) == ["3 + 5 = 8.", "2 + 4 = 6.", "123 + 45 = 168."]
    assert column_lines("-", 72, 2) == ["2 - 2 = 0.", "72 - 2 = 70."]  # 7 brought down
    assert column_lines("+", 5, 7) == ["5 + 7 = 12."]
    assert column_lines("*", 316, 40) == ["316 * 40 = 12640."]


def test_parse_answer_and_equations():
    assert parse_answer("so 3 + 4 = 7.\nThe answer is 7.") == "7"
    assert parse_answer("The answer is 1,234. Actually the answer is 12.50") == "12.5"
    assert parse_answer("#### 72") == "72"
    assert parse_answer("no number here") is None
    assert check_equations("2 + 2 = 4. 3 x 3 = 10. 8 / 2 = 4") == (2, 1)


def test_gsm8k_solution_cleaning():
    sol = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert clean_solution(sol, "72") == "Natalia sold 48/2 = 24 clips in May.\nThe answer is 72."


def test_gsm8k_behind_the_same_interface(tmp_path):
    task = get_task("gsm8k", cache_dir=str(tmp_path))
    held = task.problems("heldout", 5)
    assert len(held) == 5 and len(task.problems("heldout")) == 1319
    for p in held:
        assert parse_answer(p.solution) == p.answer
        assert "<<" not in p.solution
    with pytest.raises(ValueError):
        task.problems("test")
