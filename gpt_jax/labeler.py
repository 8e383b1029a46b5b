"""A programmatic labeler: the stand-in for InstructGPT's human rankers, on verifiable tasks.

Gold score (`gold_score(problem, completion)`), correctness first:

    +1.00  correct final answer: the last "The answer is N" (or "#### N") equals the answer
    +0.10  format: a final answer is stated in the parseable form at all
    -0.10  length: x min(1, extra characters beyond 2x the reference reply / reference length)

so a correct answer always outranks any incorrect one (1 - 0.1 > 0.1), whatever its length; among
answers equally right or wrong, a stated answer beats none, and only a reply more than twice the
reference's length loses anything. The score is deterministic: use it as the PPO/eval metric
("gold reward"); `is_correct` gives plain accuracy. (Scoring the written steps as well made the
rubric's small terms dominate while no answer was ever right: a policy then gained by length.)

Noisy rankings (`Labeler.rank`): the labeler compares every pair of the K completions by gold
score, flips each non-tied comparison with probability `flip_rate`, and orders the completions by
their number of (noisy) wins (Copeland; ties between equal win counts broken at random). Completions
with equal gold scores are a tie ("equally good"): they get the same tie group and no pair between
them is trained on. The pairwise agreement of the RESULTING ranking with the gold order is what
matters downstream; it is higher than 1 - flip_rate for K > 2 (aggregation corrects some flips), so
by default the flip rate is calibrated per K by simulation so that labeler-gold agreement on
untied pairs is 73% (`DEFAULT_AGREEMENT`, InstructGPT's inter-labeler agreement) for every K.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

from gpt_jax.tasks.base import Problem, parse_answer

DEFAULT_AGREEMENT = 0.73
W_CORRECT, W_FORMAT, W_LENGTH = 1.0, 0.1, 0.1
LENGTH_ALLOWANCE = 2.0  # no length penalty up to this multiple of the reference reply


def _fields(problem) -> tuple[str, str]:
    if isinstance(problem, Problem):
        return problem.answer, problem.solution
    return str(problem["answer"]), str(problem.get("solution", ""))


def is_correct(problem, completion: str) -> bool:
    answer, _ = _fields(problem)
    got = parse_answer(completion)
    return got is not None and got == parse_answer(f"The answer is {answer}")


def score_parts(problem, completion: str) -> dict[str, float]:
    """The rubric's terms for one completion (weights applied in `gold_score`)."""
    _, solution = _fields(problem)
    ref_len = max(1, len(solution))
    extra = max(0.0, len(completion) - LENGTH_ALLOWANCE * ref_len) / ref_len
    return {
        "correct": float(is_correct(problem, completion)),
        "format": float(parse_answer(completion) is not None),
        "length": float(min(1.0, extra)),
    }


def gold_score(problem, completion: str) -> float:
    """The noise-free reward of `completion` (assistant text) for `problem` (Problem or dict with
    "answer" and "solution")."""
    p = score_parts(problem, completion)
    return W_CORRECT * p["correct"] + W_FORMAT * p["format"] - W_LENGTH * p["length"]


def gold_scores(problems: Sequence, completions: Sequence[str]) -> np.ndarray:
    return np.asarray([gold_score(p, c) for p, c in zip(problems, completions)], np.float64)


# -- noisy rankings -------------------------------------------------------------------------------
@dataclasses.dataclass
class Ranking:
    order: list[int]  # completion indices, best first
    groups: list[int]  # tie group of each entry of `order` (equal = tied, not a training pair)
    gold: list[float]  # gold score of each entry of `order`


def _copeland(gold: np.ndarray, flip_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Indices best-first from noisy pairwise comparisons of `gold` (ties = half a win each)."""
    k = len(gold)
    wins = np.zeros(k)
    for i in range(k):
        for j in range(i + 1, k):
            if gold[i] == gold[j]:
                wins[i] += 0.5
                wins[j] += 0.5
                continue
            i_better = gold[i] > gold[j]
            if rng.random() < flip_rate:
                i_better = not i_better
            wins[i if i_better else j] += 1
    return np.lexsort((rng.random(k), -wins))


def pairwise_agreement(order: Sequence[int], gold: Sequence[float]) -> tuple[int, int]:
    """(agreeing, total) over untied gold pairs: does `order` (best first) put the better first?"""
    agree = total = 0
    for a in range(len(order)):
        for b in range(a + 1, len(order)):
            ga, gb = gold[order[a]], gold[order[b]]
            if ga != gb:
                total += 1
                agree += ga > gb
    return agree, total


def _simulated_agreement(k: int, flip_rate: float, trials: int, seed: int = 1234) -> float:
    """Mean pairwise agreement with gold of Copeland rankings of K distinct-gold items (vectorized
    version of `_copeland`; item i is the i-th best)."""
    rng = np.random.default_rng(seed)
    iu = np.triu_indices(k, 1)
    flips = rng.random((trials, len(iu[0]))) < flip_rate  # True: the worse one wins that pair
    beats = np.zeros((trials, k, k))
    beats[:, iu[0], iu[1]] = ~flips
    beats[:, iu[1], iu[0]] = flips
    wins = beats.sum(-1)
    key = -wins + rng.random((trials, k)) * 1e-3  # random tie-break between equal win counts
    pos = np.argsort(np.argsort(key, axis=-1), axis=-1)
    return float((pos[:, iu[0]] < pos[:, iu[1]]).mean())


@functools.lru_cache(maxsize=None)
def calibrated_flip_rate(k: int, agreement: float = DEFAULT_AGREEMENT,
                         trials: int = 20000) -> float:
    """The flip rate whose Copeland rankings of K distinct-gold completions agree with gold on
    `agreement` of pairs: 1 - agreement for K = 2, else bisection over a fixed-seed simulation
    (deterministic, ~0.1 s)."""
    if k < 2:
        return 0.0
    if k == 2:
        return 1.0 - agreement
    lo, hi = 0.0, 0.5
    for _ in range(16):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _simulated_agreement(k, mid, trials) > agreement else (lo, mid)
    return (lo + hi) / 2


class Labeler:
    """Ranks K completions of a problem by gold score with calibrated noise (see module doc).

    flip_rate=None: calibrated per K to `agreement` (default 0.73); a number: that flip rate for
    every comparison; 0: the noise-free gold ranking.
    """

    def __init__(self, flip_rate: float | None = None, agreement: float = DEFAULT_AGREEMENT,
                 seed: int = 0):
        self.flip_rate, self.agreement = flip_rate, agreement
        self.rng = np.random.default_rng(seed)

    def flip_rate_for(self, k: int) -> float:
        if self.flip_rate is not None:
            return float(self.flip_rate)
        return calibrated_flip_rate(k, round(self.agreement, 4))

    def rank(self, problem, completions: Sequence[str]) -> Ranking:
        gold = gold_scores([problem] * len(completions), completions)
        order = _copeland(gold, self.flip_rate_for(len(completions)), self.rng)
        # Tie groups: equal gold score = same group, numbered by first appearance in `order`.
        ids: dict[float, int] = {}
        groups = [ids.setdefault(float(gold[i]), len(ids)) for i in order]
        return Ranking([int(i) for i in order], groups, [float(gold[i]) for i in order])
