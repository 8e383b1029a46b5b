"""The simulated labeler: the gold-score rubric's ordering, calibrated 73% agreement, ties."""
import numpy as np
import pytest

from gpt_jax import labeler
from gpt_jax.tasks import ArithmeticTask


@pytest.fixture(scope="module")
def problem():
    task = ArithmeticTask()
    return task.with_mode(task.problems("train", 1, level="L2")[0], "cot")


def test_gold_score_is_correctness_first(problem):
    lines = problem.solution.splitlines()
    wrong = str(int(problem.answer) + 1)
    full = problem.solution
    s = {k: labeler.gold_score(problem, v) for k, v in dict(
        full=full,
        correct_terse=f"The answer is {problem.answer}.",
        reasoning_wrong_answer="\n".join(lines[:-1] + [f"The answer is {wrong}."]),
        format_only=f"The answer is {wrong}.",
        garbage="blah blah",
        twice=full + " " * (len(full) + 1),    # 2x + 1 char: almost no penalty
        rambling=full + " and also" * 200,     # far beyond 2x: the whole length penalty
        rambling_wrong=format_only_long(wrong, len(full))).items()}
    assert s["full"] == s["correct_terse"] == pytest.approx(1.1)
    assert s["reasoning_wrong_answer"] == s["format_only"] == pytest.approx(0.1)
    assert s["garbage"] == 0.0
    assert s["twice"] == pytest.approx(1.1 - 0.1 / len(full))
    assert s["rambling"] == pytest.approx(1.0)  # a long right answer still beats any wrong one
    assert s["rambling"] > s["format_only"] > s["rambling_wrong"]
    assert s["rambling_wrong"] == pytest.approx(0.0)
    assert labeler.is_correct(problem, full) and not labeler.is_correct(problem, "blah")
    assert labeler.gold_score(problem.to_dict(), full) == s["full"]  # dicts work too


def format_only_long(wrong: str, ref_len: int) -> str:
    return f"The answer is {wrong}." + "x" * (3 * ref_len)


@pytest.mark.parametrize("k", [2, 4, 7])
def test_default_agreement_is_73_percent(k):
    lab = labeler.Labeler(seed=0)
    agree = total = 0
    rng = np.random.default_rng(k)
    for _ in range(1500):
        gold = rng.permutation(k).astype(float)
        order = labeler._copeland(gold, lab.flip_rate_for(k), lab.rng)
        a, t = labeler.pairwise_agreement(order, gold)
        agree, total = agree + a, total + t
    assert agree / total == pytest.approx(labeler.DEFAULT_AGREEMENT, abs=0.02)


def test_noise_free_ranking_and_ties(problem):
    lab = labeler.Labeler(flip_rate=0.0, seed=0)
    comps = ["blah", problem.solution, f"The answer is {int(problem.answer) + 1}.", "blah"]
    r = lab.rank(problem, comps)
    assert r.order[:2] == [1, 2] and sorted(r.order[2:]) == [0, 3]
    assert r.groups[2] == r.groups[3] and len(set(r.groups[:3])) == 3  # the two "blah" are tied
    assert r.gold == sorted(r.gold, reverse=True)
    noisy = labeler.Labeler(flip_rate=0.5, seed=1)
    orders = {tuple(noisy.rank(problem, comps).order) for _ in range(30)}
    assert len(orders) > 1
