"""Verifiable tasks: seeded arithmetic problems with disjoint splits and checkable demonstrations;
GSM8K behind the same interface."""
import pytest

from gpt_jax.tasks import ArithmeticTask, check_equations, get_task, parse_answer
from gpt_jax.tasks.gsm8k import clean_solution


def test_arithmetic_is_seeded_and_splits_are_disjoint():
    task = ArithmeticTask()
    a, b = task.problems("train", 300, seed=3), task.problems("train", 300, seed=3)
    assert a == b and len({p.id for p in a}) == 300
    assert task.problems("train", 50, seed=4) != a[:50]
    held = task.problems("heldout", 300, seed=3)
    assert not {p.id for p in held} & {p.id for p in a + task.problems("train", 2000, seed=9)}
    for p in held:  # the split is a function of the arithmetic itself
        start = int(p.solution.split(" ", 1)[0])
        steps = tuple((op, int(n)) for _, op, n, _ in
                      (line.rstrip(".").split(" ", 3) for line in p.solution.splitlines()[:-1]))
        assert task.split_of(start, steps) == "heldout"


def test_arithmetic_demonstrations_check_out():
    task = ArithmeticTask(min_ops=1, max_ops=3, max_digits=3)
    for p in task.problems("train", 200):
        n_ops = len(p.solution.splitlines()) - 1
        assert 1 <= n_ops <= 3
        assert check_equations(p.solution) == (n_ops, 0)
        assert parse_answer(p.solution) == p.answer and int(p.answer) >= 0
        assert p.question.endswith("have now?")
        msgs = task.demonstration(p)
        assert [m["role"] for m in msgs] == ["user", "assistant"]
        assert msgs[1]["content"] == p.solution
        assert task.prompt_messages(p) == msgs[:1]
    small = ArithmeticTask(max_ops=1, max_digits=1).problems("train", 20)
    assert all(len(p.solution.splitlines()) == 2 for p in small)


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
