"""Streaming decode: one prompt, token by token from a host loop, with a text callback (what the
chat CLI shows as it decodes) and host-side stop strings.

It drives the same jit'd `sampling.prefill` / `sampling.decode_step` and the same sampling rule
(`sampling._pick`) as the on-device `sampling.generate`, so a seed gives the same tokens either
way (tested); with a tool it hands over to `engine_tools.stream_with_tool`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax import sampling as S
from gpt_jax.model import GPTConfig
from gpt_jax.seq_utils import length_bucket


@functools.partial(jax.jit, static_argnums=0)
def _pick_jit(static: S._Static, logits, key, step, temperature, top_p, tokens, finished, extra,
              row_ids=None):
    return S._pick(static, logits, key, step, temperature, top_p, tokens, finished, extra, row_ids)


def _held_back(text: str, stop_strings: Sequence[str]) -> int:
    """How many trailing chars might start a stop string (or are an incomplete UTF-8 char)."""
    hold = 0
    for s in stop_strings:
        for j in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:j]):
                hold = max(hold, j)
                break
    while hold < len(text) and text[len(text) - hold - 1] == "\ufffd":
        hold += 1
    return hold


def one_row(config: GPTConfig, prompt: Sequence[int], n: int, pad_id: int):
    """A checked prompt, left-padded to its bucket: (tokens [1, P], valid [1, P])."""
    S._check_prompts(config, [prompt], n)
    p = length_bucket(len(prompt), 8)
    tokens = np.full((1, p), pad_id, np.int32)
    tokens[0, p - len(prompt):] = prompt
    return tokens, np.arange(p)[None] >= p - len(prompt)


def stream(params, config: GPTConfig, prompt: Sequence[int], sampling: S.SamplingConfig,
           tokenizer=None, on_text: Callable[[str], None] | None = None,
           logit_processor: S.LogitProcessor | None = None, processor_state: Any = None,
           pad_id: int = 0, tool: Callable[[str], str] | None = None,
           on_tool: Callable[[str, str], None] | None = None) -> tuple[S.Generation, str]:
    """One prompt, token by token on the host; `on_text` receives the reply as it decodes.

    Text that might be the start of a stop string is held back until it is not, so the stop string
    itself is never printed. Returns (Generation with one row, reply text without the stop string).
    Pass params through `unstack_layers` once beforehand for speed. With `tool` (needs
    `tokenizer`), see `engine_tools.stream_with_tool`; `on_tool(expr, result)` sees each call.
    """
    if tool is not None:
        from gpt_jax import engine_tools

        return engine_tools.stream_with_tool(
            params, config, prompt, sampling, tokenizer=tokenizer, tool=tool, on_text=on_text,
            on_tool=on_tool, logit_processor=logit_processor, processor_state=processor_state,
            pad_id=pad_id)
    n = sampling.max_new_tokens
    tokens, valid = one_row(config, prompt, n, pad_id)
    p = tokens.shape[1]
    cache = S.init_cache(config, 1, p + n)
    logits, cache = S.prefill(params, config, jnp.asarray(tokens), cache, jnp.asarray(valid))
    static = S._static(config, sampling, pad_id, logit_processor)
    stop_ids = {int(s) for s in sampling.stop_ids}
    temperature = jnp.float32(sampling.temperature if not sampling.greedy else 1.0)
    key, top_p = jax.random.key(sampling.seed), jnp.float32(sampling.top_p)
    out = np.full((1, n), pad_id, np.int32)
    logps = np.zeros((1, n), np.float32)
    finished, cut, emitted, text = False, False, 0, ""
    stops = sampling.stop_strings
    length = 0
    for i in range(n):
        token, lp = _pick_jit(static, logits, key, jnp.int32(i), temperature, top_p,
                              jnp.asarray(out), jnp.zeros((1,), bool), processor_state)
        token_id = int(token[0])
        out[0, i], logps[0, i], length = token_id, float(lp[0]), i + 1
        if token_id in stop_ids:
            finished = True
            break
        if tokenizer is not None:
            text = tokenizer.decode(out[0, :length])
            hit = min((text.find(s) for s in stops if s in text), default=-1)
            if hit >= 0:
                text, finished, cut = text[:hit], True, True
                break
            safe = len(text) - _held_back(text, stops)
            if on_text is not None and safe > emitted:
                on_text(text[emitted:safe])
                emitted = safe
        if i + 1 < n:
            logits, cache = S.decode_step(params, config, token, cache,
                                        jnp.asarray([len(prompt) + i], jnp.int32))
    if tokenizer is not None:
        if not cut:  # the whole reply, without its stop token
            text = tokenizer.decode([t for t in out[0, :length] if t not in stop_ids])
        if on_text is not None and len(text) > emitted:
            on_text(text[emitted:])
    gen = S.Generation(out, logps, np.array([finished]), np.array([length]))
    return gen, text
