"""Retrieval figures on the synthetic memory set, shared by the memory stage and
benchmarks/memory_retrieval.py: which facts get asked, recall@k, and the median time of a single
query (what one chat turn pays) after a warm-up.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import numpy as np


def asked(facts: Sequence, n: int) -> list:
    """`n` facts spread evenly over the set (every len/n-th), whose questions get asked."""
    return list(facts[:: max(1, len(facts) // n)][:n])


def timed(fn: Callable, queries: Sequence[str], warmup: int = 20) -> tuple[float, list]:
    """(median milliseconds per call, results) of `fn` over `queries`, one query per call."""
    for q in queries[:warmup]:
        fn(q)
    times, out = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times), out


def recall(wanted_ids: Sequence, found: Sequence[Sequence]) -> float:
    """Share of questions whose wanted id is among its hits' ids."""
    return float(np.mean([w in hits for w, hits in zip(wanted_ids, found)]))
