"""Constrained decoding inside the batched engine (`generate(..., constraints=[...])`).

Each row may carry its own `structured.Constraint` (JSON schema, regex, Lark grammar) or none.
Per step the host fills an int32 bitmask [B, ceil(V/32)] for the constrained rows (llguidance,
`gpt_jax.structured`) and the jitted sampler unpacks it and sets the disallowed logits to -inf
before temperature / top-k / top-p. Shapes are static (the mask is always [B, W]); a step in
which no constrained row samples runs the mask-free compiled sampler, so unconstrained decoding
pays nothing.

Forced tokens: after each sampled token the grammar may force a run of tokens (a fixed key such
as `","age":`). They are written to the row's output without sampling (`Generation.forced` marks
them, log-prob 0) and fed to the model one per step, in the batch's ordinary decode step, while
the row samples nothing and needs no mask. A forced run at the very start (`{"name":"`) is
prefilled with the prompt. Why not the whole run as one chunk: on a CPU a [B, 16] chunk step
costs several decode steps for every row of the batch, and the other rows decode anyway
(`benchmarks/constrained_overhead.py` measured chunks 28% slower per token than no masks at
batch 8; feeding one per step costs no more than an unconstrained step).
When the grammar is complete (nothing may follow) the row ends with its first stop id; a stop id
is allowed earlier only where the grammar accepts, because the stop ids are llguidance's
end-of-sequence tokens.

Overlap: the step is split in two jitted calls, sample (masked) and forward. After a sample the
host dispatches the forward (async) and, while the device runs it, advances the matchers and
computes the next masks.

Sampling keys are per row (`sampling.row_keys`, index = the row's own token count), so a row
decodes to the same tokens alone or in a batch with other constraints or none.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import sampling as S
from gpt_jax import structured
from gpt_jax.model import GPTConfig
from gpt_jax.seq_utils import bucket, length_bucket


@functools.partial(jax.jit, static_argnums=0)
def _sample_jit(static: S._Static, logits, bitmask, key, lengths, temperature, top_p, out,
                finished, extra, row_ids):
    """One token per row from `logits` [B, V] with the mask applied (bitmask None: no mask)."""
    logits = structured.apply_bitmask(logits, bitmask)
    return S._pick(static, logits, key, lengths, temperature, top_p, out, finished, extra, row_ids)


def _open(matchers, finished, pending) -> dict[int, structured.RowMatcher]:
    """The constrained rows that sample next step (live, no forced run waiting)."""
    return {i: m for i, m in enumerate(matchers)
            if m is not None and not finished[i] and i not in pending}


def generate_constrained(params, config: GPTConfig, prompts: Sequence[Sequence[int]],
                         sampling: S.SamplingConfig, constraints: Sequence[Any], tokenizer,
                         logit_processor: S.LogitProcessor | None = None,
                         processor_state: Any = None, pad_id: int = 0,
                         row_ids: Sequence[int] | None = None,
                         fast_forward: bool = True) -> S.Generation:
    """`sampling.generate` with one constraint (or None) per prompt; see the module docstring.
    `fast_forward=False` samples forced tokens one per step under a one-token mask instead of
    inserting them (each then gets a log-prob, 0, as a sampled action; slower).
    Raises `structured.ConstraintError` for an invalid constraint before running anything."""
    k, n = len(prompts), sampling.max_new_tokens
    if len(constraints) != k:
        raise ValueError(f"{len(constraints)} constraints for {k} prompts")
    S._check_prompts(config, prompts, n)
    stop_ids = [int(s) for s in sampling.stop_ids]
    if any(c is not None for c in constraints) and not stop_ids:
        raise structured.ConstraintError("constrained decoding needs sampling.stop_ids (the "
                                         "token that ends a finished output)")
    matchers = structured.matchers_for(constraints, tokenizer, config.vocab_size, stop_ids)
    config, params = S.unstack_layers(config, params)
    out = np.full((bucket(k), n), pad_id, np.int32)
    logps = np.zeros(out.shape, np.float32)
    forced = np.zeros(out.shape, bool)
    b = out.shape[0]
    lengths = np.zeros((b,), np.int32)
    finished = np.arange(b) >= k  # batch padding rows never run
    done = np.zeros((b,), bool)  # finished on a stop (not on the budget)
    pending: dict[int, list[int]] = {}  # forced tokens written to `out`, not yet fed

    def write(i: int, ids: list[int], is_forced: bool) -> list[int]:
        ids = ids[: n - lengths[i]]
        out[i, lengths[i]: lengths[i] + len(ids)] = ids
        forced[i, lengths[i]: lengths[i] + len(ids)] = is_forced
        lengths[i] += len(ids)
        finished[i] |= lengths[i] >= n
        return ids

    def after(i: int, ff: list[int]) -> None:
        if ff:
            pending[i] = write(i, ff, True)
        if matchers[i].done and not finished[i]:  # complete: the row ends with its stop id
            write(i, [stop_ids[0]], True)
            finished[i] = done[i] = True

    starts = [m.forced() if m is not None and fast_forward else [] for m in matchers]
    full = [list(p) + f[:n] for p, f in zip(prompts, starts)]  # the start's forced run: prefilled
    for i, m in enumerate(matchers):
        if m is not None:
            write(i, starts[i], True)
            after(i, [])
    p = length_bucket(max(len(x) for x in full), 8)
    tokens = np.full((b, p), pad_id, np.int32)
    valid = np.zeros((b, p), bool)
    for i, ids in enumerate(full):
        tokens[i, p - len(ids):], valid[i, p - len(ids):] = ids, True
    valid[k:, -1] = True
    ids_arr = S._row_id_array(np.arange(k) if row_ids is None else row_ids, k, b)
    static = S._static(config, sampling, pad_id, logit_processor)
    temperature = jnp.float32(sampling.temperature if not sampling.greedy else 1.0)
    key, top_p = jax.random.key(sampling.seed), jnp.float32(sampling.top_p)
    cache = S.init_cache(config, b, p + n)  # one slot per step: never fills
    logits, cache = S.prefill(params, config, tokens, cache, valid)
    pos = valid.sum(-1).astype(np.int32)  # real tokens in each row's cache

    bitmask = structured.new_bitmask(b, config.vocab_size)
    structured.fill_masks(_open(matchers, finished, pending), bitmask)
    while True:
        sample_rows = [i for i in range(b) if not finished[i] and i not in pending]
        feeds = np.full((b,), pad_id, np.int32)  # rows with nothing to feed take a pad token
        fed = False
        for i in list(pending):
            if not finished[i]:  # (a row its grammar ended needs no more of its forced run)
                feeds[i], fed = pending[i].pop(0), True
            if finished[i] or not pending[i]:
                del pending[i]
        if sample_rows:
            use_mask = any(matchers[i] is not None for i in sample_rows)
            skip = np.ones((b,), bool)
            skip[sample_rows] = False
            token, lp = jax.device_get(_sample_jit(
                static, logits, jnp.array(bitmask) if use_mask else None, key,
                jnp.asarray(lengths), temperature, top_p, jnp.asarray(out), jnp.asarray(skip),
                processor_state, ids_arr))
            for i in sample_rows:
                t = int(token[i])
                logps[i, lengths[i]] = lp[i]
                write(i, [t], False)
                done[i] = t in stop_ids
                finished[i] |= done[i]
                feeds[i], fed = t, fed or not finished[i]
        if not fed:  # every live row feeds a token each step; none did: all finished
            break
        # Dispatch the forward first (async), then do the host's grammar work beside it.
        logits, cache = S.decode_step(params, config, jnp.asarray(feeds), cache, pos.copy())
        pos += 1
        for i in sample_rows:
            if matchers[i] is not None and not finished[i]:
                after(i, matchers[i].advance(int(out[i, lengths[i] - 1]), fast_forward))
        structured.fill_masks(_open(matchers, finished, pending), bitmask)
    gen = S.Generation(out[:k], logps[:k], done[:k], lengths[:k], forced=forced[:k])
    if sampling.stop_strings:
        for i in range(k):
            S._truncate_row(gen, i, tokenizer, sampling.stop_strings, pad_id)
    return gen
