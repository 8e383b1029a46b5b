"""Ranking batches for the reward model: [P, K, T] responses of P prompts, best first.

A ranking example (`encode_ranking`) holds, per response, the ids of
    render_for_completion(prompt) + response ids + <|assistant_end|>
(the reward head reads the end token) cut to T tokens: the response keeps up to T - 1 - min(prompt,
T/4) of its tokens (then the end token), and the prompt keeps <|bos|> + its LAST tokens in the
space left, so the response and the end of the prompt always survive. It also keeps the response's
untruncated token count (for the "prefer the longer response" baseline) and a tie group per
response (equal = tied; no pair between them is trained on).

`RankingIterator` mixes sources by weight with grain (each source shuffled per epoch, repeated),
exactly like the SFT iterator: batch k is a pure function of (seed, k), state = {"step": k}.
A prompt with more than K responses contributes a seeded random K of them (order kept); fewer than
K are padded (group -1). Batches:
    tokens    int32 [P, K, T]   (pad = <|pad|>, right-padded)
    eos_index int32 [P, K]      position of the end token (0 for an absent response)
    groups    int32 [P, K]      tie group, -1 = absent
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import grain
import jax
import numpy as np

from gpt_jax.data.step_batches import StepIndexedBatches
from gpt_jax.seq_utils import fit_prompt


@dataclasses.dataclass
class RankingExample:
    ids: list  # per response: np.int32 array of <= T ids ending in <|assistant_end|>
    groups: list  # per response tie group (best first)
    response_lengths: list  # per response: untruncated response tokens (length baseline)
    source: str = ""
    meta: dict | None = None  # e.g. the problem and the gold scores for labeler data


def encode_response(tokenizer, prompt_ids: Sequence[int], response_ids: Sequence[int],
                    max_len: int) -> np.ndarray:
    end = tokenizer.token_id("assistant_end")
    keep_prompt = min(len(prompt_ids), max_len // 4)
    resp = list(response_ids)[: max_len - 1 - keep_prompt] + [end]
    room = max_len - len(resp)
    prompt = fit_prompt(prompt_ids, room)  # prompt_ids start with BOS
    return np.asarray(prompt + resp, np.int32)


def encode_ranking(tokenizer, prompt_messages, responses: Sequence[str], max_len: int,
                   groups: Sequence[int] | None = None, source: str = "",
                   response_ids: Sequence[Sequence[int]] | None = None,
                   meta: dict | None = None) -> RankingExample:
    """`responses` best first (texts; or pass their `response_ids` as generated)."""
    prompt_ids = tokenizer.render_for_completion(prompt_messages)
    if response_ids is None:
        response_ids = [tokenizer.encode(r) for r in responses]
    return RankingExample(
        ids=[encode_response(tokenizer, prompt_ids, r, max_len) for r in response_ids],
        groups=list(range(len(response_ids))) if groups is None else [int(g) for g in groups],
        response_lengths=[len(r) for r in response_ids], source=source, meta=meta)


def held_out(record_id: str, fraction: float, salt: str = "rm") -> bool:
    """Deterministic held-out membership by sha256 of the id."""
    h = int(hashlib.sha256(f"{salt}:{record_id}".encode()).hexdigest()[:8], 16)
    return h / 2**32 < fraction


def _row(ex: RankingExample, k: int, t: int, pad_id: int, rng: np.random.Generator):
    tokens = np.full((k, t), pad_id, np.int32)
    eos = np.zeros(k, np.int32)
    groups = np.full(k, -1, np.int32)
    n = len(ex.ids)
    pick = np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))
    for slot, i in enumerate(pick):
        ids = ex.ids[i][:t]
        tokens[slot, : len(ids)] = ids
        eos[slot], groups[slot] = len(ids) - 1, ex.groups[i]
    return tokens, eos, groups


def stack_examples(examples: Sequence[RankingExample], k: int, t: int, pad_id: int,
                   seed: int = 0) -> dict:
    """A batch dict from a list of examples (eval; deterministic subsets for > K responses)."""
    rows = [_row(ex, k, t, pad_id, np.random.default_rng([seed, i]))
            for i, ex in enumerate(examples)]
    return {"tokens": np.stack([r[0] for r in rows]), "eos_index": np.stack([r[1] for r in rows]),
            "groups": np.stack([r[2] for r in rows])}


class RankingIterator(StepIndexedBatches):
    def __init__(self, examples: dict[str, list[RankingExample]], weights: dict[str, float], *,
                 batch_size: int, k: int, seq_len: int, seed: int, pad_id: int, split: str = "train"):
        self.seed, self.batch_size, self.k, self.seq_len, self.split = seed, batch_size, k, seq_len, split
        P, p = jax.process_count(), jax.process_index()
        if batch_size % P:
            raise ValueError(f"batch_size {batch_size} is not divisible by {P} processes")
        local = batch_size // P
        names = [n for n in weights if weights[n] > 0]
        per_source = []
        for i, name in enumerate(names):
            if not examples.get(name):
                raise ValueError(f"ranking source {name!r} has no {split} examples")
            ds = grain.MapDataset.source(examples[name]).shuffle(seed=(seed * 1_000_003 + i) % 2**32)
            per_source.append(ds.repeat())
        mixed = grain.MapDataset.mix(per_source, [weights[n] for n in names])

        def make_batch(step: int) -> dict:
            rows = []
            for j in range(local):
                slot = step * batch_size + p * local + j
                rows.append(_row(mixed[slot], k, seq_len, pad_id,
                                 np.random.default_rng([seed, slot])))
            return {"tokens": np.stack([r[0] for r in rows]),
                    "eos_index": np.stack([r[1] for r in rows]),
                    "groups": np.stack([r[2] for r in rows])}

        self._serve(make_batch, loader_threads=1, prefetch=2)

    def _extra_state(self) -> dict:
        return {"k": self.k}

    def _restore_extra(self, state: dict) -> None:
        if state.get("k") != self.k:
            raise ValueError(f"data state has k={state.get('k')!r}, iterator has {self.k!r}")
