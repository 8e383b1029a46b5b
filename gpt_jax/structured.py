"""Structured output: a JSON schema, a regex or a Lark grammar turned into a per-row token mask.

Why llguidance: it compiles a schema / regex / grammar against OUR vocabulary (byte-level BPE,
every token's bytes) and, after each token, fills a bitmask of the tokens that keep the output a
valid prefix of the language in ~0.1 ms for a 2k vocabulary; it also reports the tokens the
grammar forces (a fixed key like `{"name":"`), which the engine then inserts without sampling.
Nothing here depends on torch.

The pieces:
- `Constraint`: what the caller asks for (`Constraint.json_schema(schema)`, `.regex(pattern)`,
  `.lark(grammar)`, `.json_object()`), hashable, so compiled grammars are cached by it;
- `grammar_tokenizer(tokenizer, vocab_size, stop_ids)`: the llguidance tokenizer built from our
  `tokenizer.json` once per (tokenizer, model vocab, stop ids) and cached. Its end-of-sequence ids
  are the generation's stop ids, so the mask allows a stop token only where the grammar accepts;
  ids past the tokenizer's vocabulary (model vocab padding) are never allowed;
- `compile_constraint(constraint, lltok)`: validates and builds the matcher in a worker thread
  (llguidance drops the GIL) and gives up after `COMPILE_TIMEOUT_S`; an invalid schema, regex or
  grammar, or one too slow to compile, raises `ConstraintError` with llguidance's reason;
- `RowMatcher`: one row's matcher (a copy of the compiled one): `advance(token)` consumes a
  sampled token and returns the tokens the grammar now forces (already consumed);
- `fill_masks(rows, bitmask)`: every constrained row's mask (in llguidance's thread pool when
  there are many rows and spare cores); `unpack_bitmask` / `apply_bitmask`: the jitted side, int32 [B, ceil(V/32)] -> a
  [B, V] -inf mask on the logits.

JSON is generated compact (`,` and `:` with no whitespace): flexible whitespace would let a model
pad forever, and the parsed value is the same.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from typing import Sequence

import jax.numpy as jnp
import llguidance as llg
import llguidance.numpy as llg_np
import numpy as np

COMPILE_TIMEOUT_S = 5.0
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
KINDS = ("json_schema", "json_object", "regex", "lark")


class ConstraintError(ValueError):
    """The schema / regex / grammar is invalid, or did not compile in time."""


@dataclasses.dataclass(frozen=True)
class Constraint:
    """What the output must match. `spec`: the schema as canonical JSON text, the regex, or the
    Lark grammar (use the constructors)."""

    kind: str
    spec: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConstraintError(f"constraint kind {self.kind!r}; expected one of {KINDS}")

    @classmethod
    def json_schema(cls, schema: dict | str) -> "Constraint":
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ConstraintError(f"the JSON schema is not JSON: {e}") from None
        if not isinstance(schema, (dict, bool)):
            raise ConstraintError(f"a JSON schema is an object, not {type(schema).__name__}")
        return cls("json_schema", json.dumps(schema))

    @classmethod
    def json_object(cls) -> "Constraint":
        return cls("json_object")

    @classmethod
    def regex(cls, pattern: str) -> "Constraint":
        """The whole output matches `pattern` (Rust regex syntax; \\d \\w \\s are ASCII)."""
        return cls("regex", pattern)

    @classmethod
    def lark(cls, grammar: str) -> "Constraint":
        return cls("lark", grammar)

    def grammar(self) -> str:
        """llguidance's grammar text for this constraint (not yet validated)."""
        if self.kind in ("json_schema", "json_object"):
            schema = json.loads(self.spec) if self.kind == "json_schema" else {"type": "object"}
            try:
                return llg.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
            except ValueError as e:
                raise ConstraintError(f"invalid JSON schema: {e}") from None
        if self.kind == "regex":  # ASCII \d \w \s, as in JSON Schema patterns and re.ASCII
            return llg.LLMatcher.grammar_from_lark(
                "start: /" + llg.regex_to_lark(self.spec, "dws") + "/")
        return llg.LLMatcher.grammar_from_lark(self.spec)


# -- tokenizer ---------------------------------------------------------------------------------
_TOKENIZERS: dict[tuple, llg.LLTokenizer] = {}
_LOCK = threading.Lock()


def grammar_tokenizer(tokenizer, vocab_size: int, stop_ids: Sequence[int]) -> llg.LLTokenizer:
    """llguidance's view of `tokenizer` over a model vocabulary of `vocab_size` ids whose ends of
    sequence are `stop_ids` (cached: building one reads the whole vocabulary)."""
    stops = tuple(sorted({int(s) for s in stop_ids}))
    if not stops:
        raise ConstraintError("constrained decoding needs at least one stop id (where the "
                              "output may end)")
    key = (tokenizer.hash, int(vocab_size), stops)
    with _LOCK:
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = llg.LLTokenizer(tokenizer.hf.to_str(), n_vocab=int(vocab_size),
                                               eos_token=list(stops))
        return _TOKENIZERS[key]


# -- compiling ---------------------------------------------------------------------------------
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar")
_COMPILED: dict[tuple, llg.LLMatcher] = {}
_CACHE_SIZE = 256


def _build(lltok: llg.LLTokenizer, grammar: str) -> llg.LLMatcher:
    matcher = llg.LLMatcher(lltok, grammar, log_level=0)
    if matcher.is_error():
        raise ConstraintError(matcher.get_error())
    return matcher


def compile_constraint(constraint: Constraint, lltok: llg.LLTokenizer,
                       timeout_s: float = COMPILE_TIMEOUT_S) -> llg.LLMatcher:
    """The compiled (fresh) matcher for `constraint`; cached by (constraint, tokenizer). Raises
    `ConstraintError` for an invalid constraint or one that takes over `timeout_s` to build (the
    build thread is left to finish on its own: llguidance cannot be interrupted)."""
    key = (constraint, id(lltok))
    with _LOCK:
        hit = _COMPILED.get(key)
    if hit is not None:
        return hit
    future = _POOL.submit(_build, lltok, constraint.grammar())
    try:
        matcher = future.result(timeout=timeout_s)
    except FutureTimeout:
        raise ConstraintError(f"the {constraint.kind} constraint did not compile within "
                              f"{timeout_s:g} s") from None
    with _LOCK:
        if len(_COMPILED) >= _CACHE_SIZE:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = matcher
    return matcher


class RowMatcher:
    """One row's position in its grammar."""

    def __init__(self, compiled: llg.LLMatcher):
        self.matcher = compiled.deep_copy()

    def forced(self) -> list[int]:
        """Tokens the grammar forces from here (consumed already): insert them unsampled."""
        ff = self.matcher.compute_ff_tokens()
        if ff and not self.matcher.consume_tokens(ff):
            raise RuntimeError(f"grammar rejected its own forced tokens: {self.matcher.get_error()}")
        return ff

    def advance(self, token: int, fast_forward: bool = True) -> list[int]:
        """Consumes a sampled token; returns the tokens forced after it (consumed too), or []
        without `fast_forward`."""
        if not self.matcher.consume_token(int(token)):
            raise RuntimeError(f"token {token} violates the grammar: {self.matcher.get_error()}")
        return self.forced() if fast_forward else []

    @property
    def done(self) -> bool:
        """Nothing can follow: the row must end now (with a stop token)."""
        return self.matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self.matcher.is_accepting()


_EXECUTOR: llg.LLExecutor | None = None
# llguidance's thread pool only pays off with spare cores: the mask work runs beside the model's
# forward, which already uses every core. Measured on a 2-core host, batch 8: sequential +0%,
# pool of 1 thread +5%, pool of 2 threads +11% decode step time.
PARALLEL_MIN_ROWS = 16
PARALLEL_MIN_CORES = 8


def fill_masks(rows: dict[int, RowMatcher], bitmask: np.ndarray) -> np.ndarray:
    """Writes each constrained row's mask into `bitmask` [B, W] int32 (other rows: all allowed);
    in llguidance's thread pool when there are many rows and cores to spare."""
    global _EXECUTOR
    bitmask[:] = -1
    cores = os.cpu_count() or 1
    if len(rows) < PARALLEL_MIN_ROWS or cores < PARALLEL_MIN_CORES:
        for i, m in rows.items():
            llg_np.fill_next_token_bitmask(m.matcher, bitmask, i)
        return bitmask
    if _EXECUTOR is None:
        _EXECUTOR = llg.LLExecutor(num_threads=cores // 2)
    llg_np.fill_next_token_bitmask_par(_EXECUTOR, [(m.matcher, i) for i, m in rows.items()],
                                       bitmask)
    return bitmask


def new_bitmask(batch: int, vocab_size: int) -> np.ndarray:
    return llg_np.allocate_token_bitmask(batch, vocab_size)


def unpack_bitmask(bitmask, vocab_size: int):
    """int32 [B, W] (bit j of word w = token 32 w + j) -> bool [B, vocab_size] (traceable)."""
    bits = (bitmask[:, :, None] >> jnp.arange(32, dtype=jnp.int32)) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].astype(bool)


def apply_bitmask(logits, bitmask):
    """-inf on the logits of disallowed tokens; `bitmask` None leaves them as they are."""
    if bitmask is None:
        return logits
    return jnp.where(unpack_bitmask(bitmask, logits.shape[-1]), logits, -jnp.inf)


def matchers_for(constraints: Sequence[Constraint | None], tokenizer, vocab_size: int,
                 stop_ids: Sequence[int]) -> list[RowMatcher | None]:
    """A fresh `RowMatcher` per constrained row (None elsewhere); compiles (and validates) each
    distinct constraint once."""
    if not any(c is not None for c in constraints):
        return [None] * len(constraints)
    if tokenizer is None:
        raise ConstraintError("constrained decoding needs `tokenizer=`")
    lltok = grammar_tokenizer(tokenizer, vocab_size, stop_ids)
    out: list[RowMatcher | None] = []
    for c in constraints:
        if c is not None and not isinstance(c, Constraint):
            raise ConstraintError(f"expected a Constraint or None, got {type(c).__name__}")
        out.append(None if c is None else RowMatcher(compile_constraint(c, lltok)))
    return out
