"""The simulated labeler: the gold-score rubric's ordering, calibrated 73% agreement, ties."""
import numpy as np
import pytest

from gpt_jax import labeler
from gpt_jax.tasks import ArithmeticTask


@pytest.fixture(scope="module")
def problem():
    return ArithmeticTask(min_ops=2, max_ops=2, max_digits=2).problems("train", 1)[0]


def test_gold_score_rubric_order(problem):
    lines = problem.solution.splitlines()
    wrong = str(int(problem.answer) + 1)
    correct_terse = f"The answer is {problem.answer}."
    full = problem.solution
    reasoning_wrong_answer = "\n".join(lines[:-1] + [f"The answer is {wrong}."])
    format_only = f"The answer is {wrong}."
    garbage = "blah blah"
    rambling = full + " and also" * 200
    s = {k: labeler.gold_score(problem, v) for k, v in dict(
        full=full, correct_terse=correct_terse, reasoning=reasoning_wrong_answer,
        format_only=format_only, garbage=garbage, rambling=rambling).items()}
    assert s["full"] == pytest.approx(1.3)
    assert s["full"] > s["correct_terse"] > s["reasoning"] > s["format_only"] > s["garbage"]
    assert s["correct_terse"] == pytest.approx(1.05)  # a correct answer beats any reasoning
    assert s["garbage"] == 0.0
    assert s["full"] - 0.05 <= s["rambling"] < s["full"]  # length only penalizes, by <= 0.05
    assert labeler.is_correct(problem, correct_terse) and not labeler.is_correct(problem, garbage)
    assert labeler.gold_score(problem.to_dict(), full) == s["full"]  # dicts work too


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
    comps = ["blah", problem.solution, f"The answer is {problem.answer}.", "blah"]
    r = lab.rank(problem, comps)
    assert r.order[:2] == [1, 2] and sorted(r.order[2:]) == [0, 3]
    assert r.groups[2] == r.groups[3] and len(set(r.groups[:3])) == 3  # the two "blah" are tied
    assert r.gold == sorted(r.gold, reverse=True)
    noisy = labeler.Labeler(flip_rate=0.5, seed=1)
    orders = {tuple(noisy.rank(problem, comps).order) for _ in range(30)}
    assert len(orders) > 1
