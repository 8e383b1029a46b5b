"""Decode slots for continuous batching: the device side of the serving engine.

Slots (rows) share one KV cache [R, K, C, D] per layer. Each slot holds one sequence laid out from
column 0 (column = position), with its own length, so requests of any lengths and ages decode
together in ONE jitted step:

- `decode(tokens, lengths, active)`: every slot's last token written at its own column
  (`model.write_cache` with a [R] index) and one new token sampled per slot. The engine keeps R
  and C at buckets of the rows and lengths in use (`resize`, one copy when they change), so a
  step costs what is in use, not the capacity (slicing a block out per step cost 3x: copies).
  Idle slots compute too but their writes are never marked valid.
- `extend(row, start, chunk)`: prefill a chunk (a prompt, the rest of a prompt after a prefix-cache
  hit, or a tool's result) into a one-row cache at columns [start, start + n); the chunk is
  right-padded to a length bucket, the padding stays invalid and is overwritten later. Returns
  the next token, sampled from the logits of the chunk's last real token. Rows move between the
  slots and `extend` with `take_row` / `put_row` (`row_from_prefix` starts one from a
  prefix-cache hit), so `extend` compiles per (columns, chunk) and not per number of slots.
- `prefill_rows` / `put_rows`: the prompts of several new rows in one call (a wave of admissions),
  then into their slots: one dispatch for the wave instead of one `extend` per row.
- `read_prefix`: a slot's first P columns to host arrays (for the prefix cache).

Sampling is per row with traced parameters (temperature, top-p, top-k, seed, choice index, step),
so requests with different settings share one compiled program; the static `mode` skips the
random draw when every row is greedy and adds top-k / top-p only when some row asks. Row keys
are fold_in(fold_in(key(seed), choice), step): a request's tokens depend on its seed, not on its slot or neighbours. Log-probs are those
of the temperature-scaled distribution before truncation (as `gpt_jax.sampling`), with the
`n_top` best alternatives for OpenAI's `top_logprobs`.

A query always sees its own column, so no row's softmax is ever empty (no NaN reaches a cache).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.model import GPTConfig
from gpt_jax.sampling import head_logits, run_blocks
from gpt_jax.seq_utils import bucket
from gpt_jax.structured import apply_bitmask


class RowSampling(NamedTuple):
    """Per-row sampling parameters, each [B] (a pytree of arrays, all traced)."""

    temperature: jax.Array  # float32; <= 0: greedy
    top_p: jax.Array  # float32; 1: off
    top_k: jax.Array  # int32; 0: off
    seed: jax.Array  # int32
    choice: jax.Array  # int32: the choice index within its request (n > 1)
    step: jax.Array  # int32: index of the token being sampled within the reply

    @classmethod
    def of(cls, rows: list[tuple[float, float, int, int, int, int]]) -> "RowSampling":
        """From (temperature, top_p, top_k, seed, choice, step) per row; a seed of any size is
        reduced to 32 bits."""
        cols = list(zip(*rows))
        seeds = np.array([int(s) % 2**32 for s in cols[3]], np.uint32).view(np.int32)
        return cls(np.array(cols[0], np.float32), np.array(cols[1], np.float32),
                   np.array(cols[2], np.int32), seeds, np.array(cols[4], np.int32),
                   np.array(cols[5], np.int32))


class SlotStatic(NamedTuple):
    """What changes the compiled program (hashable)."""

    config: GPTConfig
    mode: str  # "greedy" (every row), "sample", or "filtered" (some row uses top-k or top-p)
    k_cap: int  # filtered: candidates for top-k (>= every row's top_k; 0: no row uses top-k)
    n_top: int  # alternatives returned per token; 0: no row asks log-probs (none computed)
    vocab_limit: int  # ids >= this are never sampled (a model vocab padded past the tokenizer's)


def static_for(config: GPTConfig, vocab_limit: int, requests, n_top: int) -> SlotStatic:
    """The sampling program for rows of these requests (`temperature`, `top_k`, `top_p`,
    `logprobs` each): greedy when none samples, "filtered" when one uses top-k / top-p (k
    candidates bucketed); `n_top` alternatives when one asks log-probs, else none."""
    sampled = [q for q in requests if q.temperature > 0]
    filtered = [q for q in sampled if q.top_k > 0 or q.top_p < 1]
    mode = "filtered" if filtered else "sample" if sampled else "greedy"
    k_max = max((q.top_k for q in filtered), default=0)
    k_cap = min(bucket(k_max, 8), vocab_limit) if k_max else 0
    asked = any(q.logprobs is not None for q in requests)
    return SlotStatic(config, mode, k_cap, min(n_top, vocab_limit) if asked else 0, vocab_limit)


class Sampled(NamedTuple):
    token: jax.Array  # [B] int32
    logprob: jax.Array  # [B] float32
    top_logprobs: jax.Array  # [B, n_top] float32
    top_ids: jax.Array  # [B, n_top] int32


def _nucleus_floor(probs, top_p, iters: int = 40):
    """Per row, the largest probability t with sum(probs >= t) >= top_p (to float precision), by
    bisection: the smallest set of most likely tokens holding top_p of the mass is probs >= t.
    No sort (XLA:CPU sorts [B, V] slowly: 25 ms at 64 x 2048, against ~1 ms here)."""
    lo = jnp.zeros(probs.shape[:1])
    hi = probs.max(-1) * (1 + 1e-6) + 1e-30

    def body(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        enough = jnp.sum(jnp.where(probs >= mid[:, None], probs, 0.0), -1) >= top_p
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    return jax.lax.fori_loop(0, iters, body, (lo, hi))[0]


def first_argmax(x):
    """jnp.argmax over the last axis (the first index of the maximum), as a max and a min:
    XLA:CPU's variadic argmax reduce is ~2.5x slower ([64, 2048]: 0.35 against 0.15 ms)."""
    m = x.max(-1, keepdims=True)
    return jnp.min(jnp.where(x == m, jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape[-1]), -1)


def sample_rows(st: SlotStatic, logits, rows: RowSampling) -> Sampled:
    """logits [B, V] -> one token per row under that row's own parameters.

    Sampling draws ONE uniform per row and inverts the CDF of the (filtered) distribution: exact,
    and far cheaper than a Gumbel draw over the vocabulary. Top-k keeps the row's top_k largest
    (lax.top_k over `k_cap` candidates), then top-p the nucleus of what is left. Greedy rows with
    no log-probs asked (`n_top` 0) skip the softmax: logprob comes back 0 (a 64-row step at 64
    columns: 1.8 against 2.2 ms with the softmax and 20 alternatives)."""
    v = logits.shape[-1]
    b = logits.shape[0]
    logits = jnp.where(jnp.arange(v) < st.vocab_limit, logits, -jnp.inf)
    argmax = first_argmax(logits)
    if st.mode == "greedy" and st.n_top == 0:
        return Sampled(argmax.astype(jnp.int32), jnp.zeros(b, jnp.float32),
                       jnp.zeros((b, 0), jnp.float32), jnp.zeros((b, 0), jnp.int32))
    greedy = rows.temperature <= 0
    scaled = logits / jnp.where(greedy, 1.0, rows.temperature)[:, None]
    logp = jax.nn.log_softmax(scaled, axis=-1)
    if st.mode == "greedy":
        token = argmax
    else:
        probs = jnp.exp(logp)
        if st.mode == "filtered":
            if st.k_cap:
                kth = jax.lax.top_k(scaled, st.k_cap)[0]
                kth = jnp.take_along_axis(kth, jnp.clip(rows.top_k - 1, 0, st.k_cap - 1)[:, None],
                                          axis=-1)
                probs = jnp.where((rows.top_k[:, None] > 0) & (scaled < kth), 0.0, probs)
            probs = probs / probs.sum(-1, keepdims=True)
            floor = _nucleus_floor(probs, rows.top_p)
            probs = jnp.where((rows.top_p[:, None] < 1) & (probs < floor[:, None]), 0.0, probs)
        keys = jax.vmap(lambda s, c, i: jax.random.fold_in(
            jax.random.fold_in(jax.random.key(s), c), i))(rows.seed, rows.choice, rows.step)
        u = jax.vmap(jax.random.uniform)(keys)
        cdf = jnp.cumsum(probs, axis=-1)
        sampled = jnp.minimum(jnp.sum(cdf <= (u * cdf[:, -1])[:, None], axis=-1), v - 1)
        token = jnp.where(greedy, argmax, sampled)
    token = token.astype(jnp.int32)
    if st.n_top:
        top_lp, top_ids = jax.lax.top_k(logp, st.n_top)
    else:
        top_lp, top_ids = jnp.zeros((b, 0), jnp.float32), jnp.zeros((b, 0), jnp.int32)
    return Sampled(token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0], top_lp,
                   top_ids.astype(jnp.int32))


def init_slots(config: GPTConfig, n_rows: int, n_cols: int) -> dict:
    """Empty slots: per-layer {"k","v"} [n_rows, K, n_cols, D] and valid [n_rows, n_cols]."""
    shape = (n_rows, config.kv_heads, n_cols, config.head_dim)
    return {"layers": [{"k": jnp.zeros(shape, config.compute_dtype),
                        "v": jnp.zeros(shape, config.compute_dtype)}
                       for _ in range(config.n_layers)],
            "valid": jnp.zeros((n_rows, n_cols), bool)}


def cache_shape(cache) -> tuple[int, int]:
    """(rows, columns) of a slots cache."""
    return tuple(cache["valid"].shape)


def _map_kv(f, cache, *rest):
    """f applied to every layer's "k" and "v" (and the matching leaves of the caches `rest`)."""
    return [{k: f(c[k], *(r["layers"][i][k] for r in rest)) for k in ("k", "v")}
            for i, c in enumerate(cache["layers"])]


def _resized(cache, n_rows: int, n_cols: int, xp):
    """The cache grown or cut to [n_rows, n_cols] with array module `xp` (numpy or jax.numpy):
    what is kept keeps its place, the rest is zeros."""
    r, c = min(n_rows, cache_shape(cache)[0]), min(n_cols, cache_shape(cache)[1])

    def fit(x):  # [R, K, C, D] or valid [R, C]
        x = xp.asarray(x)
        if x.ndim == 2:
            return xp.pad(x[:r, :c], [(0, n_rows - r), (0, n_cols - c)])
        return xp.pad(x[:r, :, :c], [(0, n_rows - r), (0, 0), (0, n_cols - c), (0, 0)])

    return {"layers": _map_kv(fit, cache), "valid": fit(cache["valid"])}


def resize(cache, n_rows: int, n_cols: int):
    """The cache grown or cut to [n_rows, n_cols] (what is kept keeps its place), as numpy
    arrays (`jax.device_put` them). On the host, not jitted: a jitted resize compiles once per
    (old shape, new shape) pair, and a burst of requests meets new pairs for a while (a 0.1 s
    stall each); the engine jits only the pairs its warm-up compiled (`resize_on_device`).
    (`jnp.asarray` would compile a copy program per shape.)"""
    return _resized(cache, n_rows, n_cols, np)


@functools.partial(jax.jit, static_argnums=(1, 2))
def resize_on_device(cache, n_rows: int, n_cols: int):
    """`resize` as a program (one per (old shape, new shape) pair: the engine uses it for the
    pairs its warm-up compiled, the column steps of a growing or cut cache; a 64 x 128 -> 64 x
    192 grow takes ~2.3 ms, against 3.5-35 ms through the host in a busy server)."""
    return _resized(cache, n_rows, n_cols, jnp)


@jax.jit
def take_row(cache, slot):
    """Slot `slot` as a one-row cache."""
    def take(x):
        return jax.lax.dynamic_slice_in_dim(x, slot, 1, axis=0)
    return {"layers": _map_kv(take, cache), "valid": take(cache["valid"])}


@functools.partial(jax.jit, donate_argnums=0)
def put_row(cache, row, slot):
    """A one-row cache (as wide as the cache) back into slot `slot`."""
    def put(x, r):
        return jax.lax.dynamic_update_slice_in_dim(x, r.astype(x.dtype), slot, axis=0)
    return {"layers": _map_kv(put, cache, row), "valid": put(cache["valid"], row["valid"])}


@functools.partial(jax.jit, static_argnums=(0, 4))
def row_from_prefix(config: GPTConfig, keys, values, n, n_cols: int):
    """A one-row cache of n_cols columns holding a prefix: keys/values [L, K, P, D] in columns
    [0, P), the first n valid (n = 0: an empty row)."""
    row = init_slots(config, 1, n_cols)
    layers = [{"k": jax.lax.dynamic_update_slice(c["k"], keys[i][None].astype(c["k"].dtype),
                                                 (0, 0, 0, 0)),
               "v": jax.lax.dynamic_update_slice(c["v"], values[i][None].astype(c["v"].dtype),
                                                 (0, 0, 0, 0))}
              for i, c in enumerate(row["layers"])]
    return {"layers": layers, "valid": (jnp.arange(n_cols) < n)[None]}


@functools.partial(jax.jit, static_argnums=1, donate_argnums=2)
def extend(params, st: SlotStatic, row, start, tokens, n_real, rows: RowSampling, bitmask=None,
           lora=None):
    """tokens [1, T] (n_real real, then padding) into a one-row cache at columns
    [start, start + T) -> (row, Sampled [1]) for the token after the last real one, sampled
    under `bitmask` [1, ceil(V/32)] when given (a constrained row; None: another program). Columns
    >= start + n_real end up invalid. Compiled per (row width, T) only: the engine moves the row
    out of and back into the slots (`take_row` / `put_row`), so the number of slots never matters.
    `lora`: (the engine's `AdapterTable.device`, the row's adapter index [1]), or None."""
    config = st.config
    t, s = tokens.shape[1], row["valid"].shape[1]
    cols = start + jnp.arange(t)
    positions = jnp.minimum(cols, config.max_seq_len - 1)[None]  # padding may run past the table
    valid = row["valid"] & (jnp.arange(s) < start)[None]
    valid = jax.lax.dynamic_update_slice(valid, (jnp.arange(t) < n_real)[None], (0, start))
    mask = (valid[:, None, :] | (jnp.arange(s)[None, :] == cols[:, None])[None]) & (
        jnp.arange(s)[None, None, :] <= cols[None, :, None])
    lora = _rows_lora(lora)
    x, layers = run_blocks(params, config, tokens, positions, mask, row["layers"], start,
                           lora=lora)
    last = jax.lax.dynamic_slice_in_dim(x, n_real - 1, 1, axis=1)
    logits = apply_bitmask(head_logits(params, config, last, lora)[:, 0], bitmask)
    return {"layers": layers, "valid": valid}, sample_rows(st, logits, rows)


@functools.partial(jax.jit, static_argnums=1, donate_argnums=2)
def decode(params, st: SlotStatic, cache, tokens, prev_tokens, use_prev, lengths, active,
           rows: RowSampling, bitmask=None, lora=None):
    """tokens [R] written at columns lengths [R] (valid where `active`) -> (cache, Sampled [R]),
    sampled under `bitmask` [R, ceil(V/32)] when some row is constrained (the others' rows of it
    all ones; None, the usual case, compiles a program without it). Where `use_prev` [R], the
    token written is `prev_tokens` [R] instead: the previous step's samples, still on the device
    (the engine dispatches a step before it has read the last one back).

    Over the whole cache, which the engine keeps sized to the rows and lengths in use (`resize`):
    a step reads each cached column once and copies nothing. `lora`: (`AdapterTable.device`,
    each slot's adapter index [R]), or None."""
    config = st.config
    tokens = jnp.where(use_prev, prev_tokens, tokens)
    cols = jnp.arange(cache_shape(cache)[1])[None, :]
    valid = cache["valid"] | ((cols == lengths[:, None]) & active[:, None])
    mask = ((valid | (cols == lengths[:, None])) & (cols <= lengths[:, None]))[:, None, :]
    positions = jnp.minimum(lengths, config.max_seq_len - 1)[:, None]
    lora = _rows_lora(lora)
    x, layers = run_blocks(params, config, tokens[:, None], positions, mask, cache["layers"],
                           lengths, lora=lora)
    logits = apply_bitmask(head_logits(params, config, x, lora)[:, 0], bitmask)
    return {"layers": layers, "valid": valid}, sample_rows(st, logits, rows)


@functools.partial(jax.jit, static_argnums=1)
def prefill_rows(params, st: SlotStatic, tokens, n_real, rows: RowSampling, lora=None):
    """New rows' prompts in one call: tokens [B, T], row b's n_real[b] real tokens from column 0,
    then padding -> (rows {"layers": k/v [B, K, T, D], "valid" [B, T]}, Sampled [B] for the token
    after each row's last real one). The same computation as `extend` of each row alone into an
    empty row (tested equal); `put_rows` moves the rows into their slots. Compiled per (B, T)."""
    config = st.config
    b, t = tokens.shape
    cols = jnp.arange(t)
    valid = cols[None, :] < n_real[:, None]
    mask = (valid[:, None, :] | (cols[None, :] == cols[:, None])[None]) & (
        cols[None, None, :] <= cols[None, :, None])
    positions = jnp.broadcast_to(jnp.minimum(cols, config.max_seq_len - 1)[None], (b, t))
    lora = _rows_lora(lora)
    empty = init_slots(config, b, t)["layers"]
    x, layers = run_blocks(params, config, tokens, positions, mask, empty, 0, lora=lora)
    last = jnp.take_along_axis(x, (n_real - 1)[:, None, None], axis=1)
    logits = head_logits(params, config, last, lora)[:, 0]
    return {"layers": layers, "valid": valid}, sample_rows(st, logits, rows)


@functools.partial(jax.jit, donate_argnums=0)
def put_rows(cache, rows, slot_ids):
    """`prefill_rows`'s rows [B, K, T, D] into columns [0, T) of slots `slot_ids` [B] (the rest of
    each such slot invalid); an id past the last slot is dropped (a batch's padding rows)."""
    t = rows["valid"].shape[1]

    def put(x, r):
        return x.at[slot_ids, :, :t].set(r.astype(x.dtype), mode="drop")

    valid = jnp.zeros((slot_ids.shape[0], cache["valid"].shape[1]), bool)
    valid = valid.at[:, :t].set(rows["valid"])
    return {"layers": _map_kv(put, cache, rows),
            "valid": cache["valid"].at[slot_ids].set(valid, mode="drop")}


def _rows_lora(lora):
    if lora is None:
        return None
    from gpt_jax.lora_batch import gather

    return gather(*lora)


@functools.partial(jax.jit, static_argnums=2)
def read_prefix(cache, slot, p: int):
    """(keys, values) [L, K, p, D] of `slot`'s first p columns."""
    def take(x):
        return jax.lax.dynamic_slice(x, (slot, 0, 0, 0), (1, x.shape[1], p, x.shape[3]))[0]
    return (jnp.stack([take(c["k"]) for c in cache["layers"]]),
            jnp.stack([take(c["v"]) for c in cache["layers"]]))
