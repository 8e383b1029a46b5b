"""Inference engine: KV-cache prefill/decode, sampling, whole-generation on device, streaming.

Three ways in, all built from the same two jit'd pure functions over an explicit cache pytree:
- `prefill(params, config, tokens, cache, valid)` / `decode_step(params, config, token, cache, pos)`:
  one chunk / one token through the model, cache donated (updated in place);
- `generate(params, config, prompts, sampling)`: left-pads a batch of prompts, prefills once, then
  samples every new token inside ONE jit'd `lax.while_loop` (exits early once all rows stopped):
  no host round-trip per token, which is what makes batch-1 decoding fast on CPU;
- `gpt_jax.streaming.stream(...)`: the same prefill/decode_step driven from a host loop, with a
  text callback for interactive use (chat) and host-side stop strings.
With `tool=` (e.g. the calculator) both run tool calls inside the reply: see `gpt_jax.engine_tools`
(a separate program; without a tool nothing here changes).

Why layer by layer rather than through `GPT.apply`: a cache threaded through the layer scan is one
stacked [L, B, K, S, D] array, and XLA:CPU copies the whole of it per step (slice out a layer,
update, stack back): 3-5x slower at batch 16. Here the cache holds one {"k","v"} [B, K, S, D]
buffer per layer ([K, D, S] at batch 1, see `model.attend_slots_minor`), updated in place by
dynamic_update_slice, and the forward is the model's own pieces on the model's params
(`model.embed`, each layer's `Block`, `Norm`, `model.lm_logits`: one implementation of each for
training and decoding); tests check token-for-token equality with full recompute through
`GPT.apply`, for both families and at batch 1 and > 1.

Padding: prompts are left-padded; each row's positions count only its real tokens and padded slots
are masked out, so a prompt decodes to the same tokens alone or in a batch of mixed lengths.
Shapes are bucketed (batch: powers of two; prompt length: `seq_utils.length_bucket`) so a new
prompt rarely recompiles.

Sampling order: logit processor -> temperature -> top-k -> top-p -> categorical (greedy when
temperature == 0). The returned log-probs are the log-softmax of the processed logits divided by
the temperature (1 when greedy), BEFORE top-k/top-p truncation, so they equal
`scoring.logprobs(..., temperature=T)` of the same completion: what PPO's ratio needs.
Keys: by default step i draws the whole batch from fold_in(key, i). With `row_ids` each row draws
from fold_in(fold_in(key, row_id), i), so a row's tokens depend only on (seed, row_id, its
prompt), not on the batch it is in or its position there.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.model import Block, GPTConfig, Norm, attention_mask, embed, lm_logits
from gpt_jax.seq_utils import bucket, length_bucket, positions_from_valid


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    max_new_tokens: int = 64
    stop_ids: tuple[int, ...] = ()  # eos / end-of-turn ids; the stop token is kept in the output
    stop_strings: tuple[str, ...] = ()  # host-side; needs a tokenizer
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclasses.dataclass
class Generation:
    tokens: np.ndarray  # [B, N] int32, pad_id after each row's end
    logprobs: np.ndarray  # [B, N] float32, 0 after each row's end
    finished: np.ndarray  # [B] bool: stopped on a stop id/string (False: hit max_new_tokens)
    lengths: np.ndarray  # [B] generated tokens, stop token included
    # [B, N] bool, with a tool only: True on tokens the tool wrote (<|tool_result_start|> result
    # <|tool_result_end|>); their logprobs are 0 and RL losses/KL/values must skip them.
    tool_mask: np.ndarray | None = None
    # [B, N] bool, with constraints only: True on tokens the grammar forced (and the stop token
    # that ends a completed grammar): written without sampling, log-prob 0.
    forced: np.ndarray | None = None

    def row(self, i: int) -> list[int]:
        return [int(t) for t in self.tokens[i, : self.lengths[i]]]


class ProcessorState(NamedTuple):
    """What a logit processor sees each step (a pytree; all of it is traced)."""

    step: jax.Array  # int32 scalar: index of the token being sampled ([B], per row, with a tool)
    tokens: jax.Array  # [B, N] tokens generated so far (pad beyond `step`)
    finished: jax.Array  # [B] bool
    extra: Any  # the caller's `processor_state`, unchanged


LogitProcessor = Callable[[jax.Array, ProcessorState], jax.Array]


# -- cache and forward --------------------------------------------------------------------------
def init_cache(config: GPTConfig, batch_size: int, max_len: int) -> dict[str, Any]:
    """Empty cache: per-layer {"k","v"} [B, n_kv_heads, S, head_dim] ([n_kv_heads, head_dim, S] when
    B == 1), valid [B, S], index."""
    shape = (batch_size, config.kv_heads, max_len, config.head_dim)
    if batch_size == 1:  # slots minor: what XLA:CPU's batch-1 attention dots want
        shape = (config.kv_heads, config.head_dim, max_len)
    zeros = lambda: jnp.zeros(shape, config.compute_dtype)  # noqa: E731
    return {
        "layers": [{"k": zeros(), "v": zeros()} for _ in range(config.n_layers)],
        "valid": jnp.zeros((batch_size, max_len), bool),
        "index": jnp.zeros((), jnp.int32),
    }


def unstack_layers(config: GPTConfig, params: dict) -> tuple[GPTConfig, dict]:
    """Scanned params -> the model's own unscanned layout ("block_i"); do it once before a host loop
    (slicing stacked weights inside every decode step would copy them)."""
    if not config.scan_layers:
        return config, params
    blocks = params["blocks"]
    params = {k: v for k, v in params.items() if k != "blocks"}
    for i in range(config.n_layers):
        params[f"block_{i}"] = jax.tree.map(lambda x: x[i], blocks)
    return dataclasses.replace(config, scan_layers=False), params


def _layer_params(config: GPTConfig, params: dict) -> list:
    if config.scan_layers:
        return [jax.tree.map(lambda x: x[i], params["blocks"]) for i in range(config.n_layers)]
    return [params[f"block_{i}"] for i in range(config.n_layers)]


def _forward(params, config: GPTConfig, tokens, positions, valid, cache, layers=None,
             last_only=False):
    """tokens [B, T] at `positions`, written to slots [index, index + T) -> (logits [B, T, V], cache).

    `GPT.__call__`'s pieces (`embed`, `Block`, the final `Norm`, `lm_logits`) with a per-layer
    cache. `last_only`: logits of the last slot only ([B, 1, V]), skipping the head elsewhere.
    """
    index = cache["index"]
    cache_valid = jax.lax.dynamic_update_slice(cache["valid"], valid, (0, index))
    mask = attention_mask(positions, cache_valid=cache_valid, cache_index=index, t=tokens.shape[1])
    x, new_layers = run_blocks(params, config, tokens, positions, mask, cache["layers"], index,
                               layers)
    if last_only:
        x = x[:, -1:]
    new_cache = {"layers": new_layers, "valid": cache_valid, "index": index + tokens.shape[1]}
    return head_logits(params, config, x), new_cache


def run_blocks(params, config: GPTConfig, tokens, positions, mask, cache_layers, index,
               layers=None, lora=None):
    """Embeddings + every block with its layer cache: (hidden [B, T, D] before the final norm,
    new cache layers). `index`: the cache write position, a scalar or [B] (per row). `lora`: the
    per-row adapters (`lora_batch.gather` of an `AdapterTable.device`: "layers", one dict of
    pairs per layer, and "tokens" when some adapter trains token rows), or None."""
    x = embed(config, params, tokens, positions)
    if lora is not None and "tokens" in lora:
        from gpt_jax.lora_batch import token_embed

        x = token_embed(lora["tokens"], tokens, x)
    layers = _layer_params(config, params) if layers is None else layers
    new_layers = []
    for i, (layer_params, layer_cache) in enumerate(zip(layers, cache_layers)):
        variables = {"params": layer_params}
        if lora is not None:
            variables["lora"] = lora["layers"][i]
        x, c = Block(config).apply(variables, x, positions, mask, layer_cache, index)
        new_layers.append(c)
    return x, new_layers


def head_logits(params, config: GPTConfig, x, lora=None):
    """Hidden [B, T, D] -> float32 logits [B, T, V]: the final norm, then the output head (plus
    each row's output-head updates when `lora` has token rows or `lm_head` pairs)."""
    variables = {"params": params["ln_f"]}
    if lora is not None and "ln_f" in lora:  # each row's adapter delta of the final norm
        variables["lora"] = lora["ln_f"]
    hidden = Norm(config).apply(variables, x)
    logits = lm_logits(config, params, hidden)
    if lora is not None and ("tokens" in lora or "head" in lora):
        from gpt_jax.lora_batch import head_update

        logits = head_update(lora, hidden, logits, config.vocab_size)
    return logits


def _prefill(params, config, tokens, cache, valid=None, layers=None):
    if valid is None:
        valid = jnp.ones(tokens.shape, bool)
    # Position = real tokens before this one in the row (earlier chunks included).
    positions = positions_from_valid(valid, start=cache["valid"].sum(-1, keepdims=True))
    logits, cache = _forward(params, config, tokens, positions, valid, cache, layers, last_only=True)
    return logits[:, -1], cache


@functools.partial(jax.jit, static_argnums=1, donate_argnums=3)
def prefill(params, config: GPTConfig, tokens, cache, valid=None):
    """Left-padded chunk [B, T] (valid False on padding) -> (logits of the last slot [B, V], cache)."""
    return _prefill(params, config, tokens, cache, valid)


def _decode_step(params, config, token, cache, pos, layers=None):
    b = token.shape[0]
    logits, cache = _forward(params, config, token[:, None], pos[:, None].astype(jnp.int32),
                             jnp.ones((b, 1), bool), cache, layers)
    return logits[:, 0], cache


@functools.partial(jax.jit, static_argnums=1, donate_argnums=3)
def decode_step(params, config: GPTConfig, token, cache, pos):
    """One new token per row: token [B] at positions pos [B] -> (logits [B, V], cache)."""
    return _decode_step(params, config, token, cache, pos)


# -- sampling -----------------------------------------------------------------------------------
def filter_logits(scaled, top_k: int, top_p):
    """-inf outside the top-k and outside the nucleus (smallest set of mass >= top_p)."""
    if top_k and top_k < scaled.shape[-1]:
        kth = jax.lax.top_k(scaled, top_k)[0][:, -1:]
        scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    if top_p is not None:
        desc = -jnp.sort(-scaled, axis=-1)
        probs = jax.nn.softmax(desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly ahead of each token
        cutoff = jnp.min(jnp.where(before < top_p, desc, jnp.inf), axis=-1, keepdims=True)
        scaled = jnp.where(scaled < cutoff, -jnp.inf, scaled)
    return scaled


def sample_logits(logits, key, temperature, top_p, greedy: bool, top_k: int, use_top_p: bool):
    """logits [B, V] (already processed) -> (token [B] int32, log-prob [B] at temperature).
    `key`: one key for the batch, or [B] keys (one per row)."""
    if greedy:
        logp = jax.nn.log_softmax(logits, axis=-1)
        token = jnp.argmax(logits, axis=-1)
    else:
        scaled = logits / temperature
        logp = jax.nn.log_softmax(scaled, axis=-1)
        filtered = filter_logits(scaled, top_k, top_p if use_top_p else None)
        if key.ndim == 1:  # one key per row
            token = jax.vmap(jax.random.categorical)(key, filtered)
        else:
            token = jax.random.categorical(key, filtered)
    token = token.astype(jnp.int32)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


class _Static(NamedTuple):
    """Everything that changes the compiled program (hashable)."""

    config: GPTConfig
    max_new_tokens: int
    greedy: bool
    top_k: int
    use_top_p: bool
    pad_id: int
    processor: LogitProcessor | None


def row_keys(key, row_ids, step):
    """[B] keys fold_in(fold_in(key, row_id), step); `step` a scalar or [B] (per-row index)."""
    step = jnp.broadcast_to(step, row_ids.shape)
    return jax.vmap(lambda r, s: jax.random.fold_in(jax.random.fold_in(key, r), s))(row_ids, step)


def _pick(static: _Static, logits, key, step, temperature, top_p, tokens, finished, extra,
          row_ids=None):
    if static.processor is not None:
        logits = static.processor(logits, ProcessorState(step, tokens, finished, extra))
    key = jax.random.fold_in(key, step) if row_ids is None else row_keys(key, row_ids, step)
    return sample_logits(logits, key, temperature, top_p, static.greedy, static.top_k,
                         static.use_top_p)


@functools.partial(jax.jit, static_argnums=0)
def _generate_jit(static: _Static, params, tokens, valid, live, stop_ids, temperature, top_p, key,
                  extra, row_ids=None):
    """The whole generation on device: prefill, then a while_loop of sample -> decode."""
    config, n = static.config, static.max_new_tokens
    b, p = tokens.shape
    layers = _layer_params(config, params)  # sliced once, outside the loop
    cache = init_cache(config, b, p + n)
    logits, cache = _prefill(params, config, tokens, cache, valid, layers)
    prompt_len = valid.sum(-1).astype(jnp.int32)

    def record(i, logits, out, logps, finished, lengths):
        token, lp = _pick(static, logits, key, i, temperature, top_p, out, finished, extra, row_ids)
        token = jnp.where(finished, static.pad_id, token)
        out = out.at[:, i].set(token)
        logps = logps.at[:, i].set(jnp.where(finished, 0.0, lp))
        lengths = lengths + (~finished).astype(jnp.int32)
        finished = finished | jnp.isin(token, stop_ids)
        return token, out, logps, finished, lengths

    out = jnp.full((b, n), static.pad_id, jnp.int32)
    logps = jnp.zeros((b, n), jnp.float32)
    token, out, logps, finished, lengths = record(0, logits, out, logps, ~live,
                                                  jnp.zeros((b,), jnp.int32))

    def cond(c):
        return (c[0] < n) & ~jnp.all(c[5])

    def body(c):
        i, cache, token, out, logps, finished, lengths = c
        logits, cache = _decode_step(params, config, token, cache, prompt_len + i - 1, layers)
        token, out, logps, finished, lengths = record(i, logits, out, logps, finished, lengths)
        return i + 1, cache, token, out, logps, finished, lengths

    init = (jnp.int32(1), cache, token, out, logps, finished, lengths)
    _, _, _, out, logps, finished, lengths = jax.lax.while_loop(cond, body, init)
    return out, logps, finished & live, lengths


def _static(config, sampling: SamplingConfig, pad_id, processor) -> _Static:
    return _Static(config, sampling.max_new_tokens, sampling.greedy, int(sampling.top_k),
                   sampling.top_p < 1.0, int(pad_id), processor)


def _stop_array(stop_ids) -> np.ndarray:
    """Stop ids as a fixed-size traced array (-1 = unused), so changing them never recompiles."""
    stop_ids = [int(s) for s in stop_ids]
    out = np.full((max(8, bucket(len(stop_ids))),), -1, np.int32)
    out[: len(stop_ids)] = stop_ids
    return out


def _check_prompts(config: GPTConfig, prompts: Sequence[Sequence[int]], n: int) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    if longest + n > config.max_seq_len:
        raise ValueError(f"prompt of {longest} tokens + max_new_tokens={n} exceeds the model "
                         f"context of {config.max_seq_len} tokens")


def generate(params, config: GPTConfig, prompts: Sequence[Sequence[int]],
             sampling: SamplingConfig = SamplingConfig(), logit_processor: LogitProcessor | None = None,
             processor_state: Any = None, pad_id: int = 0, tokenizer=None,
             row_ids: Sequence[int] | None = None, tool: Callable[[str], str] | None = None,
             tool_schedule: str | int = 8, constraints: Sequence[Any] | None = None) -> Generation:
    """Samples up to `max_new_tokens` after each prompt (lists of ids), all rows in one device loop.

    Compiles once per (batch bucket, prompt-length bucket, max_new_tokens, sampling mode).
    Stop strings (needing `tokenizer`) are applied afterwards by truncation.
    `row_ids`: per-row sampling keys (see the module docstring). `tool` (str -> str, needs
    `tokenizer`): run tool calls inside the reply, see `engine_tools.generate_with_tool`.
    `constraints` (one `structured.Constraint` or None per prompt, needs `tokenizer` and stop ids):
    structured output, see `engine_constrained.generate_constrained`.
    """
    if constraints is not None and any(c is not None for c in constraints):
        if tool is not None:
            raise ValueError("constraints and a tool in the same generation are not supported")
        from gpt_jax import engine_constrained

        return engine_constrained.generate_constrained(
            params, config, prompts, sampling, constraints, tokenizer,
            logit_processor=logit_processor, processor_state=processor_state, pad_id=pad_id,
            row_ids=row_ids)
    if tool is not None:
        from gpt_jax import engine_tools

        return engine_tools.generate_with_tool(
            params, config, prompts, sampling, tool=tool, tokenizer=tokenizer,
            logit_processor=logit_processor, processor_state=processor_state, pad_id=pad_id,
            row_ids=row_ids, schedule=tool_schedule)
    n = sampling.max_new_tokens
    _check_prompts(config, prompts, n)
    b, p = bucket(len(prompts)), length_bucket(max(len(x) for x in prompts), 8)
    tokens = np.full((b, p), pad_id, np.int32)
    valid = np.zeros((b, p), bool)
    for i, ids in enumerate(prompts):
        tokens[i, p - len(ids):], valid[i, p - len(ids):] = ids, True
    valid[len(prompts):, -1] = True  # batch-padding rows: one dummy token, finished from the start
    live = np.arange(b) < len(prompts)
    if row_ids is not None:
        row_ids = _row_id_array(row_ids, len(prompts), b)
    static = _static(config, sampling, pad_id, logit_processor)
    temperature = jnp.float32(sampling.temperature if not sampling.greedy else 1.0)
    out, logps, finished, lengths = jax.device_get(_generate_jit(
        static, params, tokens, valid, live, _stop_array(sampling.stop_ids), temperature,
        jnp.float32(sampling.top_p),
        jax.random.key(sampling.seed), processor_state, row_ids))
    k = len(prompts)
    gen = Generation(np.array(out[:k]), np.array(logps[:k]), np.array(finished[:k]),
                     np.array(lengths[:k]))
    if sampling.stop_strings:
        if tokenizer is None:
            raise ValueError("stop_strings need a tokenizer")
        for i in range(k):
            _truncate_row(gen, i, tokenizer, sampling.stop_strings, pad_id)
    return gen


def _row_id_array(row_ids, k: int, b: int) -> np.ndarray:
    """Row ids for k rows, batch-padded to b (padding rows get ids no real row uses)."""
    ids = np.asarray(row_ids, np.int64).reshape(-1)
    if ids.shape[0] != k:
        raise ValueError(f"row_ids has {ids.shape[0]} entries for {k} prompts")
    if (ids < 0).any() or (ids >= 2**31 - b).any():
        raise ValueError("row_ids must lie in [0, 2**31 - batch)")
    return np.concatenate([ids, 2**31 - 1 - np.arange(b - k)]).astype(np.int32)


def _truncate_row(gen: Generation, i: int, tokenizer, stop_strings, pad_id: int) -> None:
    ids = gen.row(i)
    if not any(s in tokenizer.decode(ids) for s in stop_strings):
        return
    for t in range(1, len(ids) + 1):  # the first token whose text completes a stop string
        if any(s in tokenizer.decode(ids[:t]) for s in stop_strings):
            gen.tokens[i, t:], gen.logprobs[i, t:] = pad_id, 0.0
            gen.lengths[i], gen.finished[i] = t, True
            return
