"""Tool calls inside the decode engine: per row, batched (`generate(..., tool=calculate)`).

Why in the engine: a reply like "23 + 45 = 68" needs the tool's answer in the middle of the
sampled text, and the model must read it before going on. Doing that per row in a batch, without
re-prefilling whole prompts, means pausing a row, writing the tool's tokens into its output and its
KV cache, and resuming it while the other rows keep their state.

Protocol (the chat template's in-line form, `gpt_jax.data.chat_template`): a row that samples
<|tool_call_start|> expr <|tool_call_end|> pauses at <|tool_call_end|>. The host decodes the ids
since the row's last <|tool_call_start|> (in the prompt too, so a prompt may end inside a call),
runs `tool(expr) -> str` (exceptions become "error: ..." text), and inserts
<|tool_result_start|> result <|tool_result_end|> into the row's output. The pending
<|tool_call_end|> plus those tokens are prefilled as ONE chunk into the row's cache (one batched
prefill for every paused row; other rows take the chunk with valid=False, so their positions and
cache are untouched), then the row samples on. A <|tool_call_end|> with no call open (another
special id since the last start) gets "error: no tool call open" as its result.

Rules:
- Inserted tokens count toward max_new_tokens (a result that does not fit is cut; the row ends).
- `Generation.tool_mask` [B, N] is True exactly on the tool-written tokens; `logprobs` is 0 there,
  so RL losses, KL and value targets can skip them (they are not the policy's actions).
- Sampling keys are per row: row b's k-th output token draws from
  fold_in(fold_in(key, row_ids[b]), k) (`row_ids` default arange), so a row's tokens do not depend
  on the batch it is decoded in. Logit processors see `state.step` as [B] (each row's own index k).
- Schedules: an int W (default 8): the other rows run on until every live row is paused or done,
  or a paused row has waited W steps; then all paused rows are serviced together. "any" (= 0)
  services a call as soon as any row pauses (most host round trips); "all" (= infinity) waits for
  every live row (fewest round trips, but an early caller idles). `benchmarks/tool_schedule.py`
  measures them (docs/tools.md): with every row calling, W = 8 was 12-19% slower than "all"; with
  a quarter of the rows calling, it was the fastest; "any" and "all" each lost 1.5-2x on one.
- Cache slots are shared by the batch (one write index), so a chunk and the steps a paused row
  sits out use slots of every row; the cache is grown (new shape: one recompile) when it fills.
  Positions count only each row's real tokens, so the context limit is unchanged.

The device side is two pure jit'd functions: `prefill` (the engine's own) and `_run_jit` (sample
for the rows that have fresh logits, then a lax.while_loop of decode -> sample until no row may
go on). Output buffers live on the host between calls ([B, N], small); the cache stays on device.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import sampling as S
from gpt_jax import streaming
from gpt_jax.model import GPTConfig
from gpt_jax.seq_utils import bucket, length_bucket

SCHEDULES = {"any": 0, "all": 2**30}  # name -> steps a paused row may wait
DEFAULT_WAIT = 8


class ToolIds(NamedTuple):
    call_start: int
    call_end: int
    result_start: int
    result_end: int

    @classmethod
    def of(cls, tokenizer) -> "ToolIds":
        return cls(*(tokenizer.token_id(n) for n in ("tool_call_start", "tool_call_end",
                                                     "tool_result_start", "tool_result_end")))


class _ToolStatic(NamedTuple):
    base: S._Static
    call_end: int
    wait: int  # steps a paused row may wait for the others before the loop exits


# -- host side: one tool call -------------------------------------------------------------------
def open_call(tokenizer, ids: Sequence[int]) -> str | None:
    """`ids` end with <|tool_call_end|>: the expression since the last <|tool_call_start|>, or None
    when no call is open (another special id comes first)."""
    j = len(ids) - 2
    while j >= 0 and not tokenizer.is_special(int(ids[j])):
        j -= 1
    if j < 0 or int(ids[j]) != ToolIds.of(tokenizer).call_start:
        return None
    return tokenizer.decode([int(i) for i in ids[j + 1: -1]])


def run_tool(tool: Callable[[str], str], expr: str | None) -> str:
    if expr is None:
        return "error: no tool call open"
    try:
        result = tool(expr)
        if isinstance(result, str):
            return result
        return f"error: tool returned {type(result).__name__}"
    except Exception as e:  # noqa: BLE001 - a tool must never crash generation
        return f"error: {type(e).__name__}: {e}"


def run_tools(tool: Callable[[str], str], exprs: Sequence[str | None]) -> list[str]:
    """`run_tool` on each call, concurrently when there are several (threads: a sandboxed Python
    call waits on its subprocess), results in call order."""
    if len(exprs) <= 1:
        return [run_tool(tool, e) for e in exprs]
    with ThreadPoolExecutor(max_workers=min(8, len(exprs))) as pool:
        return list(pool.map(lambda e: run_tool(tool, e), exprs))


def result_ids(tokenizer, result: str) -> list[int]:
    t = ToolIds.of(tokenizer)
    return [t.result_start, *tokenizer.encode(result), t.result_end]


def visible_text(tokenizer, ids: Sequence[int], skip: set[int] = frozenset()) -> str:
    """Reply ids as plain text: tool markers dropped, a call + result reading "expr = result"
    (`chat_template.assistant_text`); other special ids as their strings; `skip` ids dropped."""
    t = ToolIds.of(tokenizer)
    out, run = [], []
    for i in (int(i) for i in ids):
        if i in skip:
            continue
        if not tokenizer.is_special(i):
            run.append(i)
            continue
        out.append(tokenizer.decode(run))
        run = []
        if i == t.call_end:
            out.append(" = ")
        elif i not in t:
            out.append(tokenizer.decode([i]))
    out.append(tokenizer.decode(run))
    return "".join(out)


def grow_cache(cache: dict, extra: int) -> dict:
    """`extra` more (empty, invalid) slots at the end of every layer's cache."""
    def pad(x, axis):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, extra)
        return jnp.pad(x, widths)

    batch = cache["valid"].shape[0]
    axis = -1 if batch == 1 else 2  # sampling.init_cache: [K, D, S] at batch 1, else [B, K, S, D]
    layers = [{k: pad(v, axis) for k, v in layer.items()} for layer in cache["layers"]]
    return {"layers": layers, "valid": pad(cache["valid"], 1), "index": cache["index"]}


def _chunk(rows: dict[int, list[int]], b: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded [B, C] chunk (C a power of two >= 4) of each serviced row's ids; valid mask."""
    c = bucket(max(len(v) for v in rows.values()), 4)
    tokens = np.full((b, c), pad_id, np.int32)
    valid = np.zeros((b, c), bool)
    for i, ids in rows.items():
        tokens[i, c - len(ids):], valid[i, c - len(ids):] = ids, True
    return tokens, valid


# -- device side --------------------------------------------------------------------------------
def _record(ts: _ToolStatic, logits, rows, st, stop_ids, temperature, top_p, key, row_ids, extra):
    """Samples one token for each row in `rows` at the row's own index and writes it."""
    token, out, logps, finished, paused, lengths = st
    n = ts.base.max_new_tokens
    new, lp = S._pick(ts.base, logits, key, lengths, temperature, top_p, out, finished | ~rows,
                      extra, row_ids)
    b = jnp.arange(out.shape[0])
    at = jnp.minimum(lengths, n - 1)
    out = out.at[b, at].set(jnp.where(rows, new, out[b, at]))
    logps = logps.at[b, at].set(jnp.where(rows, lp, logps[b, at]))
    lengths = lengths + rows.astype(jnp.int32)
    stop = rows & jnp.isin(new, stop_ids)
    finished = finished | stop
    paused = paused | (rows & ~stop & (new == ts.call_end) & (lengths < n))
    return jnp.where(rows, new, token), out, logps, finished, paused, lengths


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(4,))
def _run_jit(ts: _ToolStatic, params, logits, rows, cache, st, stop_ids, temperature, top_p, key,
             row_ids, extra):
    """Samples for `rows` from `logits`, then decode -> sample while some row may go on."""
    config, n = ts.base.config, ts.base.max_new_tokens
    layers = S._layer_params(config, params)
    args = (stop_ids, temperature, top_p, key, row_ids, extra)
    st = _record(ts, logits, rows, st, *args)
    slots = cache["valid"].shape[1]

    def active(st):
        _, _, _, finished, paused, lengths = st
        return ~finished & ~paused & (lengths < n)

    def cond(c):
        cache, st, waited = c
        go = jnp.any(active(st)) & (cache["index"] < slots)
        return go & ~(jnp.any(st[4]) & (waited >= ts.wait))

    def body(c):
        cache, st, waited = c
        waited = waited + jnp.any(st[4]).astype(jnp.int32)
        act = active(st)
        pos = cache["valid"].sum(-1).astype(jnp.int32)  # real tokens already in the row's cache
        logits, cache = S._forward(params, config, st[0][:, None], pos[:, None], act[:, None],
                                   cache, layers)
        return cache, _record(ts, logits[:, 0], act, st, *args), waited

    cache, st, _ = jax.lax.while_loop(cond, body, (cache, st, jnp.int32(0)))
    return cache, st


# -- drivers ------------------------------------------------------------------------------------
def _check(tokenizer) -> ToolIds:
    if tokenizer is None:
        raise ValueError("a tool needs `tokenizer=` (to decode calls and encode results)")
    return ToolIds.of(tokenizer)


def _wait(schedule: str | int) -> int:
    if isinstance(schedule, str) and schedule in SCHEDULES:
        return SCHEDULES[schedule]
    if isinstance(schedule, int) and not isinstance(schedule, bool) and schedule >= 0:
        return min(schedule, SCHEDULES["all"])
    raise ValueError(f"tool schedule {schedule!r}; expected 'any', 'all' or an int >= 0")


def generate_with_tool(params, config: GPTConfig, prompts: Sequence[Sequence[int]],
                       sampling: S.SamplingConfig, tool: Callable[[str], str], tokenizer,
                       logit_processor: S.LogitProcessor | None = None,
                       processor_state: Any = None, pad_id: int = 0,
                       row_ids: Sequence[int] | None = None, schedule: str | int = DEFAULT_WAIT,
                       on_tool: Callable[[int, str, str], None] | None = None) -> S.Generation:
    """`sampling.generate` with tool calls run inside each row (see the module docstring).
    `on_tool(row, expr, result)` sees every call. Returns a Generation with `tool_mask`."""
    tids, wait = _check(tokenizer), _wait(schedule)
    n = sampling.max_new_tokens
    S._check_prompts(config, prompts, n)
    # Sliced once here: every loop call and chunk prefill would otherwise slice stacked weights.
    config, params = S.unstack_layers(config, params)
    k = len(prompts)
    b, p = bucket(k), length_bucket(max(len(x) for x in prompts), 8)
    tokens = np.full((b, p), pad_id, np.int32)
    valid = np.zeros((b, p), bool)
    for i, ids in enumerate(prompts):
        tokens[i, p - len(ids):], valid[i, p - len(ids):] = ids, True
    valid[k:, -1] = True  # batch-padding rows: one dummy token, finished from the start
    live = np.arange(b) < k
    ids_arr = S._row_id_array(np.arange(k) if row_ids is None else row_ids, k, b)
    ts = _ToolStatic(S._static(config, sampling, pad_id, logit_processor), tids.call_end, wait)
    temperature = jnp.float32(sampling.temperature if not sampling.greedy else 1.0)
    args = (S._stop_array(sampling.stop_ids), temperature, jnp.float32(sampling.top_p),
            jax.random.key(sampling.seed), ids_arr, processor_state)
    grow_by = max(16, bucket(n) // 2)
    cache = S.init_cache(config, b, p + n + grow_by)
    logits, cache = S.prefill(params, config, tokens, cache, valid)
    st = (jnp.full((b,), pad_id, jnp.int32), np.full((b, n), pad_id, np.int32),
          np.zeros((b, n), np.float32), ~live, np.zeros((b,), bool), np.zeros((b,), np.int32))
    tool_mask = np.zeros((b, n), bool)
    rows = live
    while True:
        cache, st = _run_jit(ts, params, logits, rows, cache, st, *args)
        token = st[0]
        out, logps, finished, paused, lengths = (np.array(x) for x in jax.device_get(st[1:]))
        if not paused.any():
            if not (~finished & (lengths < n)).any():
                break
            cache = grow_cache(cache, grow_by)  # the cache filled up before the rows finished
            logits, rows = jnp.zeros_like(logits), np.zeros((b,), bool)
            st = (token, out, logps, finished, paused, lengths)
            continue
        chunks = {}
        waiting = np.flatnonzero(paused)
        exprs = [open_call(tokenizer, list(prompts[i]) + out[i, : lengths[i]].tolist())
                 for i in waiting]
        for i, expr, result in zip(waiting, exprs, run_tools(tool, exprs)):
            if on_tool is not None:
                on_tool(int(i), expr if expr is not None else "", result)
            ins = result_ids(tokenizer, result)[: n - lengths[i]]
            out[i, lengths[i]: lengths[i] + len(ins)] = ins
            tool_mask[i, lengths[i]: lengths[i] + len(ins)] = True
            lengths[i] += len(ins)
            chunks[int(i)] = [tids.call_end, *ins]
        chunk, chunk_valid = _chunk(chunks, b, pad_id)
        if int(cache["index"]) + chunk.shape[1] > cache["valid"].shape[1]:
            cache = grow_cache(cache, max(grow_by, chunk.shape[1]))
        logits, cache = S.prefill(params, config, chunk, cache, chunk_valid)
        rows = paused & (lengths < n)  # a row whose result filled its budget is done
        st = (token, out, logps, finished, np.zeros((b,), bool), lengths)
    gen = S.Generation(out[:k], logps[:k], finished[:k] & live[:k], lengths[:k], tool_mask[:k])
    if sampling.stop_strings:
        for i in range(k):
            S._truncate_row(gen, i, tokenizer, sampling.stop_strings, pad_id)
            gen.tool_mask[i, gen.lengths[i]:] = False
    return gen


def stream_with_tool(params, config: GPTConfig, prompt: Sequence[int], sampling: S.SamplingConfig,
                     tokenizer, tool: Callable[[str], str],
                     on_text: Callable[[str], None] | None = None,
                     on_tool: Callable[[str, str], None] | None = None,
                     logit_processor: S.LogitProcessor | None = None, processor_state: Any = None,
                     pad_id: int = 0, row_id: int = 0) -> tuple[S.Generation, str]:
    """`streaming.stream` with tool calls: same tokens as `generate_with_tool` for this one row
    (row id `row_id`). The text is `visible_text` of the reply (a call reads "expr = result");
    stop strings apply to that text. `on_tool(expr, result)` sees every call."""
    tids = _check(tokenizer)
    n = sampling.max_new_tokens
    tokens, valid = streaming.one_row(config, prompt, n, pad_id)
    p = tokens.shape[1]
    grow_by = max(16, bucket(n) // 2)
    cache = S.init_cache(config, 1, p + n + grow_by)
    logits, cache = S.prefill(params, config, jnp.asarray(tokens), cache, jnp.asarray(valid))
    static = S._static(config, sampling, pad_id, logit_processor)
    stop_ids = {int(s) for s in sampling.stop_ids}
    temperature = jnp.float32(sampling.temperature if not sampling.greedy else 1.0)
    key, top_p = jax.random.key(sampling.seed), jnp.float32(sampling.top_p)
    rid = jnp.asarray([row_id], jnp.int32)
    out = np.full((1, n), pad_id, np.int32)
    logps = np.zeros((1, n), np.float32)
    tool_mask = np.zeros((1, n), bool)
    finished, cut, emitted, text, length, pos = False, False, 0, "", 0, len(prompt)
    stops = sampling.stop_strings
    while length < n:
        token, lp = streaming._pick_jit(static, logits, key, jnp.asarray([length], jnp.int32),
                                        temperature, top_p, jnp.asarray(out),
                                        jnp.zeros((1,), bool), processor_state, rid)
        token_id = int(token[0])
        out[0, length], logps[0, length] = token_id, float(lp[0])
        length += 1
        if token_id in stop_ids:
            finished = True
            break
        feed = [token_id]
        if token_id == tids.call_end and length < n:
            expr = open_call(tokenizer, list(prompt) + out[0, :length].tolist())
            result = run_tool(tool, expr)
            if on_tool is not None:
                on_tool(expr if expr is not None else "", result)
            ins = result_ids(tokenizer, result)[: n - length]
            out[0, length: length + len(ins)], tool_mask[0, length: length + len(ins)] = ins, True
            length += len(ins)
            feed += ins
        text = visible_text(tokenizer, out[0, :length])
        hit = min((text.find(s) for s in stops if s in text), default=-1)
        if hit >= 0:
            text, finished, cut = text[:hit], True, True
            break
        safe = len(text) - streaming._held_back(text, stops)
        if on_text is not None and safe > emitted:
            on_text(text[emitted:safe])
            emitted = safe
        if length >= n:
            break
        if int(cache["index"]) + bucket(len(feed), 4) > cache["valid"].shape[1]:
            cache = grow_cache(cache, max(grow_by, bucket(len(feed), 4)))
        if len(feed) == 1:
            logits, cache = S.decode_step(params, config, token, cache,
                                          jnp.asarray([pos], jnp.int32))
        else:
            chunk, chunk_valid = _chunk({0: feed}, 1, pad_id)
            logits, cache = S.prefill(params, config, chunk, cache, chunk_valid)
        pos += len(feed)
    if not cut:
        text = visible_text(tokenizer, out[0, :length], skip=stop_ids)
    if on_text is not None and len(text) > emitted:
        on_text(text[emitted:])
    gen = S.Generation(out, logps, np.array([finished]), np.array([length]), tool_mask)
    return gen, text
