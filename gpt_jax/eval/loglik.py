"""Batched log-likelihood scoring for the evaluation suites: multiple choice and bits per byte.

lm-evaluation-harness conventions: a multiple-choice question scores each continuation by
log p(continuation | context) (summed over its tokens), and the answer is the argmax. When every
continuation is one token (MMLU's " A" / " B" / " C" / " D" with our tokenizer) one forward of
the context gives all of them (`next_token_logprobs`); otherwise each (context, continuation)
row goes through `scoring.logprobs`. Everything is jitted over fixed row chunks and power-of-two
lengths, so a whole suite compiles a handful of programs and never loops over examples in Python
inside the model.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import scoring
from gpt_jax.model import GPT, GPTConfig
from gpt_jax.seq_utils import bucket

ROWS = 16  # rows per jitted call


@functools.partial(jax.jit, static_argnums=1)
def _last_logprobs(params, config: GPTConfig, tokens, last):
    logits = GPT(config).apply({"params": params}, tokens)  # [B, T, V]
    at = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
    return jax.nn.log_softmax(at.astype(jnp.float32), axis=-1)


def next_token_logprobs(params, config: GPTConfig, contexts: Sequence[Sequence[int]],
                        pad_id: int = 0) -> np.ndarray:
    """log p(next token | context) for every token: [len(contexts), V] float32."""
    out = []
    for start in range(0, len(contexts), ROWS):
        chunk = contexts[start:start + ROWS]
        t = min(bucket(max(len(c) for c in chunk), 8), config.max_seq_len)
        tokens = np.full((ROWS, t), pad_id, np.int32)
        last = np.zeros((ROWS,), np.int32)
        for i, c in enumerate(chunk):
            if not 0 < len(c) <= config.max_seq_len:
                raise ValueError(f"a context of {len(c)} tokens (model context "
                                 f"{config.max_seq_len})")
            tokens[i, : len(c)], last[i] = c, len(c) - 1
        out.append(np.asarray(_last_logprobs(params, config, tokens, last))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, config.vocab_size), np.float32)


def choice_logliks(params, config: GPTConfig, contexts: Sequence[Sequence[int]],
                   choices: Sequence[Sequence[Sequence[int]]], pad_id: int = 0) -> np.ndarray:
    """[n_questions, n_choices] summed log p(choice | context) (every question the same number of
    choices)."""
    if all(len(c) == 1 for cs in choices for c in cs):
        lp = next_token_logprobs(params, config, contexts, pad_id)
        ids = np.array([[c[0] for c in cs] for cs in choices], np.int64)
        return np.take_along_axis(lp, ids, axis=1)
    flat = [(i, j) for i, cs in enumerate(choices) for j in range(len(cs))]
    sums = np.zeros(len(flat), np.float64)
    for start in range(0, len(flat), ROWS):
        part = flat[start:start + ROWS]
        lp, _ = scoring.logprobs(params, config, [contexts[i] for i, _ in part],
                                 [choices[i][j] for i, j in part], pad_id=pad_id)
        sums[start:start + len(part)] = lp.sum(-1)
    return sums.reshape(len(choices), -1)


def text_nats(params, config: GPTConfig, docs: Sequence[Sequence[int]], bos: int,
              pad_id: int = 0) -> float:
    """Total -log p (nats) of every token of every document, each scored in windows of the model's
    context that start with `bos` and overlap by nothing (each token is predicted once, from the
    tokens before it in its window)."""
    window = config.max_seq_len - 1
    pieces = [d[s:s + window] for d in docs for s in range(0, len(d), window)]
    total = 0.0
    for start in range(0, len(pieces), ROWS):
        part = pieces[start:start + ROWS]
        lp, mask = scoring.logprobs(params, config, [[bos]] * len(part), part, pad_id=pad_id)
        total -= float(np.asarray(lp, np.float64)[mask].sum())
    return total
