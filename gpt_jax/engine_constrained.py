"""Constrained decoding inside the batched engine (`generate(..., constraints=[...])`).

Each row may carry its own `structured.Constraint` (JSON schema, regex, Lark grammar) or none.
Per step the host fills an int32 bitmask [B, ceil(V/32)] for the constrained rows (llguidance,
`gpt_jax.structured`) and the jitted sampler unpacks it and sets the disallowed logits to -inf
before temperature / top-k / top-p. Shapes are static (the mask is always [B, W]); a batch with
no constrained row runs the mask-free compiled sampler, so unconstrained decoding pays nothing.

Forced tokens: after each sampled token the grammar may force a run of tokens (a fixed key such
as `"name":"`). They are written to the row's output without sampling (`Generation.forced` marks
them, log-prob 0) and fed to the model as one chunk on the next step, while that row samples
nothing. When the grammar is complete (nothing may follow) the row ends with its first stop id;
a stop id is allowed earlier only where the grammar accepts, because the stop ids are
llguidance's end-of-sequence tokens.

Overlap: the step is split in two jitted calls, sample (masked) and forward. After a sample the
host dispatches the forward (async) and, while the device runs it, advances the matchers and
computes the next masks, so the mask work hides behind the model (`benchmarks/
constrained_overhead.py` measures what is left).

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
from gpt_jax.engine_tools import _chunk, grow_cache
from gpt_jax.model import GPTConfig
from gpt_jax.seq_utils import bucket, length_bucket


@functools.partial(jax.jit, static_argnums=0)
def _sample_jit(static: S._Static, logits, bitmask, key, lengths, temperature, top_p, out,
                finished, extra, row_ids):
    """One token per row from `logits` [B, V] with the mask applied (bitmask None: no mask)."""
    logits = structured.apply_bitmask(logits, bitmask)
    return S._pick(static, logits, key, lengths, temperature, top_p, out, finished, extra, row_ids)


def _forward(params, config, feeds: dict[int, list[int]], b: int, pad_id: int, cache):
    """Feeds each row its tokens (one sampled token, or a forced run) -> (logits [B, V], cache)."""
    if all(len(v) == 1 for v in feeds.values()):
        token = np.full((b,), pad_id, np.int32)
        valid = np.zeros((b, 1), bool)
        for i, ids in feeds.items():
            token[i], valid[i, 0] = ids[0], True
        if valid.all():
            pos = np.asarray(cache["valid"].sum(-1), np.int32)
            return S.decode_step(params, config, jnp.asarray(token), cache, pos)
        return S.prefill(params, config, token[:, None], cache, valid)
    chunk, valid = _chunk(feeds, b, pad_id)
    return S.prefill(params, config, chunk, cache, valid)


def _open(matchers, finished, pending) -> dict[int, structured.RowMatcher]:
    """The constrained rows that sample next step (live, no forced run waiting)."""
    return {i: m for i, m in enumerate(matchers)
            if m is not None and not finished[i] and i not in pending}


def generate_constrained(params, config: GPTConfig, prompts: Sequence[Sequence[int]],
                         sampling: S.SamplingConfig, constraints: Sequence[Any], tokenizer,
                         logit_processor: S.LogitProcessor | None = None,
                         processor_state: Any = None, pad_id: int = 0,
                         row_ids: Sequence[int] | None = None) -> S.Generation:
    """`sampling.generate` with one constraint (or None) per prompt; see the module docstring.
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
    b, p = bucket(k), length_bucket(max(len(x) for x in prompts), 8)
    tokens = np.full((b, p), pad_id, np.int32)
    valid = np.zeros((b, p), bool)
    for i, ids in enumerate(prompts):
        tokens[i, p - len(ids):], valid[i, p - len(ids):] = ids, True
    valid[k:, -1] = True
    ids_arr = S._row_id_array(np.arange(k) if row_ids is None else row_ids, k, b)
    static = S._static(config, sampling, pad_id, logit_processor)
    temperature = jnp.float32(sampling.temperature if not sampling.greedy else 1.0)
    key, top_p = jax.random.key(sampling.seed), jnp.float32(sampling.top_p)
    grow_by = max(16, bucket(n) // 2)
    cache = S.init_cache(config, b, p + n + grow_by)
    logits, cache = S.prefill(params, config, tokens, cache, valid)

    out = np.full((b, n), pad_id, np.int32)
    logps = np.zeros((b, n), np.float32)
    forced = np.zeros((b, n), bool)
    lengths = np.zeros((b,), np.int32)
    finished = np.arange(b) >= k  # batch padding rows never run
    done = np.zeros((b,), bool)  # finished on a stop (not on the budget)
    pending: dict[int, list[int]] = {}  # forced tokens written to `out`, not yet fed

    def write(i: int, ids: list[int], is_forced: bool) -> list[int]:
        ids = ids[: n - lengths[i]]
        out[i, lengths[i]: lengths[i] + len(ids)] = ids
        forced[i, lengths[i]: lengths[i] + len(ids)] = is_forced
        lengths[i] += len(ids)
        return ids

    def end(i: int) -> None:  # the grammar is complete: the row ends with its stop id
        if lengths[i] < n:
            write(i, [stop_ids[0]], True)
            done[i] = True
        finished[i] = True

    def after(i: int, ff: list[int]) -> None:
        if ff:
            pending[i] = write(i, ff, True)
        if matchers[i].done:
            end(i)
        if lengths[i] >= n:
            finished[i] = True

    for i, m in enumerate(matchers):  # a grammar may force the output's first tokens
        if m is not None:
            after(i, m.forced())
    bitmask = structured.new_bitmask(b, config.vocab_size)
    structured.fill_masks(_open(matchers, finished, pending), bitmask)
    while True:
        sample_rows = [i for i in range(b) if not finished[i] and i not in pending]
        feeds = {i: pending.pop(i) for i in list(pending)}
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
                out[i, lengths[i]], logps[i, lengths[i]] = t, lp[i]
                lengths[i] += 1
                finished[i] = done[i] = t in stop_ids
                finished[i] |= lengths[i] >= n
                feeds[i] = [t]
        feeds = {i: v for i, v in feeds.items() if not finished[i]}
        if not feeds:  # every live row either feeds something or has finished
            break
        # Dispatch the forward first (async), then do the host's grammar work beside it.
        width = bucket(max(map(len, feeds.values())), 4)
        if int(cache["index"]) + width > cache["valid"].shape[1]:
            cache = grow_cache(cache, max(grow_by, width))
        logits, cache = _forward(params, config, feeds, b, pad_id, cache)
        for i in sample_rows:
            if matchers[i] is not None and not finished[i]:
                after(i, matchers[i].advance(int(out[i, lengths[i] - 1])))
        structured.fill_masks(_open(matchers, finished, pending), bitmask)
    gen = S.Generation(out[:k], logps[:k], done[:k], lengths[:k], forced=forced[:k])
    if sampling.stop_strings:
        for i in range(k):
            S._truncate_row(gen, i, tokenizer, sampling.stop_strings, pad_id)
    return gen
