"""The serving engine's device side (`SlotDevice`, the base of `engine.Engine`): the model's
params, the slots' KV cache and its size, and the calls into the jitted programs of
`gpt_jax.serve.slots` (prefill a row's chunks, one decode step over the slots), with each row's
sampling settings and LoRA adapter (`gpt_jax.lora_batch`). The engine adds the scheduling: the
queue, the rows' lifecycle, tools, the prefix cache.

Sizing: the slots cache holds rows [0, n) as a power of 4 and columns at a width
(`_col_buckets`) of the lengths in use (`_fit`): grown when short, cut after SHRINK_AFTER_STEPS
steps with a quarter or less in use (many rows' columns: at once, with room to spare), so a step
costs what is in use and few programs compile.
"""
from __future__ import annotations

import functools
import math

import jax
import numpy as np

from gpt_jax import sampling, structured
from gpt_jax.model import GPTConfig
from gpt_jax.serve import slots

N_TOP = 20  # most top_logprobs a request may ask (OpenAI's limit)
SHRINK_AFTER_STEPS = 32  # decode steps with a quarter or less of the slots cache in use
# With no row in them, slots of at least this many rows are cut to the width the next prompts
# need at once: a 64-row step costs 2.9 ms at 128 columns against 4.3 at 256, where one row's
# costs 0.27-0.32 ms at any width, and a cut small cache grows again (a copy) within the reply
EMPTY_CUT_ROWS = 16
# Slots of at least EMPTY_CUT_ROWS rows whose rows would fit in a narrower width with this many
# columns to spare are cut at once (on the device, ~2.3 ms at 64 rows; a 64-row step costs
# 0.8 ms less at 128 columns than at 192, and the margin keeps the cut for 32 steps at least):
# when a burst's rows start while the last long ones finish, the slots no longer stay wide
CUT_MARGIN = 32
# Prompts of up to BATCH_PREFILL_MAX tokens are prefilled together on admission, as one chunk of
# the first of these lengths that holds the wave's longest, in a batch of 4, 8, ..., 64 rows
# (`_wave_bucket`): programs compiled per (batch, length) pair, not per length (a new shape met
# while serving would stall every row for a compile). Longer ones are prefilled alone. Measured
# (docs/serving.md): 64 rows x 64 tokens take 32 ms, 64 x 80 46 ms, 64 x 96 70, 64 x 128 104; a
# 72-token prompt alone 1.6 ms (~3 ms under load), so a burst of 30-75-token chat prompts is
# cheapest in one wave of 80 (a 64-wide wave left its ~15 prompts over 64 tokens to go alone).
BATCH_PREFILL_WIDTHS = (64, 80)
BATCH_PREFILL_MAX = BATCH_PREFILL_WIDTHS[-1]


class SlotDevice:
    def __init__(self, params, config: GPTConfig, tokenizer, n_slots: int,
                 adapters: dict | None = None):
        self.config, self.params = sampling.unstack_layers(config, params)
        self.adapters = None
        if adapters:
            from gpt_jax.lora_batch import AdapterTable, weight_shapes

            self.adapters = AdapterTable.build(self.config, adapters,
                                               weight_shapes(self.params["block_0"]))
        self.tok, self.n_slots = tokenizer, int(n_slots)
        self.max_len = config.max_seq_len + 64  # room for a chunk's bucket padding at the end
        self.vocab_limit = min(config.vocab_size, tokenizer.vocab_size)
        # every array a program takes lives on (is committed to) the params' device: jit keys
        # its compiled programs on that too, and a cache fresh from `init_slots` (uncommitted)
        # against one out of a decode step would compile every program twice while serving
        leaf = jax.tree.leaves(self.params)[0]
        self.device = (next(iter(leaf.devices())) if isinstance(leaf, jax.Array)
                       else jax.devices()[0])
        self.params = jax.device_put(self.params, self.device)
        self._no_prev: dict[int, jax.Array] = {}  # a decode step's prev_tokens when none
        self._empty: dict[tuple[int, int], object] = {}  # (rows, columns) -> its program
        self.cache = self.empty_slots(1, 64)  # grown and cut as rows come and go
        self._no_prefix = np.zeros((config.n_layers, self.config.kv_heads, 16,
                                    self.config.head_dim), np.float32)
        self.resizes = 0
        self.warm_resizes: set = set()  # (old, new) shapes `resize_on_device` takes (warm-up)
        self._small_steps = 0
        self.rows: list = [None] * self.n_slots  # the row in each slot (set by the engine)

    def empty_slots(self, n_rows: int, n_cols: int) -> dict:
        """`slots.init_slots` on this engine's device, made there (one small program per shape,
        compiled by the warm-up: zeros made on the host and copied took 3-17 ms at 64 x 128 in a
        busy server, against 1.7-2)."""
        if (n_rows, n_cols) not in self._empty:
            self._empty[n_rows, n_cols] = jax.jit(
                functools.partial(slots.init_slots, self.config, n_rows, n_cols),
                out_shardings=jax.sharding.SingleDeviceSharding(self.device))
        return self._empty[n_rows, n_cols]()

    def adapter_index(self, name: str | None) -> int:
        if name is None:
            return 0
        if self.adapters is None:
            raise ValueError(f"adapter {name!r}: this engine has no adapters")
        try:
            return self.adapters.index(name)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None

    def _lora(self, ids) -> tuple | None:
        """The `lora` argument of a device step for rows with these adapter indices: None when
        no row uses one (the programs without the low-rank path: loading adapters costs the
        base model's requests nothing)."""
        ids = np.asarray(ids, np.int32)
        if self.adapters is None or not ids.any():
            return None
        return self.adapters.device, ids

    def compile_constraint(self, constraint: structured.Constraint, stop_ids):
        """The compiled grammar a `Request.grammar` takes; raises `structured.ConstraintError`
        (invalid, or over 5 s to compile). Blocking: call it off the event loop."""
        lltok = structured.grammar_tokenizer(self.tok, self.config.vocab_size, stop_ids)
        return structured.compile_constraint(constraint, lltok)

    def warmup(self, max_chunk: int = 256) -> None:
        """Compiles the serving programs before the first request (`serve.warmup`)."""
        from gpt_jax.serve.warmup import warmup

        warmup(self, max_chunk)

    # -- device calls ----------------------------------------------------------------------------
    def _col_buckets(self) -> list[int]:
        """The slots' widths: multiples of 64 up to 256, then powers of two, up to max_len (a
        64-row step costs 2.9 ms at 128 columns, 3.7 at 192, 4.3 at 256: a 75-token prompt's
        64-token reply ends at 192, not 256)."""
        cols, out = 64, []
        while True:
            out.append(cols)
            if cols >= self.max_len:
                return out
            cols = min(self.max_len, cols + 64 if cols < 256 else 2 * cols)

    def _col_bucket(self, n: int) -> int:
        """The narrowest slots width holding n columns (max_len at most)."""
        return next((c for c in self._col_buckets() if c >= n), self.max_len)

    def _width(self, start: int, n: int) -> int:
        """Columns a row needs to take n more tokens at `start`, with room for a chunk's padding."""
        return self._col_bucket(start + n + 8)

    def _row_bucket(self, n: int) -> int:
        """Rows as a power of 4 (at most the slots): few decode programs to compile."""
        return min(self.n_slots, 4 ** max(0, math.ceil(math.log(max(n, 1), 4) - 1e-9)))

    def _wave_bucket(self, n: int) -> int:
        """Rows of a batched admission prefill (`_prefill_new`) of n >= 2 new rows: a power of 2
        from 4, or 1.5 x one from 24 (at most the slots): a wave costs its padded rows (8 us a
        token from 8 rows up), and a burst of 64 arrives in 3-5 waves of 2-57 rows."""
        b = 4
        while b < n:  # 4, 8, 16, 24, 32, 48, 64, 96, ...
            power_of_two = b & (b - 1) == 0
            b = 2 * b if b < 16 else 3 * b // 2 if power_of_two else 4 * b // 3
        return min(self.n_slots, b)

    def _fit(self, n_rows: int, n_cols: int, shrink: bool = False) -> None:
        """Resizes the slots to hold rows [0, n_rows) (a power of 4) and columns [0, n_cols)
        (`_col_buckets`): grown when short; with `shrink`, cut when a quarter or less is in use
        (after SHRINK_AFTER_STEPS steps), or at once to a narrower width when slots of
        EMPTY_CUT_ROWS+ rows would hold their rows there with CUT_MARGIN columns to spare."""
        rows, cols = slots.cache_shape(self.cache)
        want = (self._row_bucket(n_rows), self._col_bucket(n_cols))
        if (want[1] > cols or want[1] < cols and rows >= EMPTY_CUT_ROWS) and \
                not any(r is not None for r in self.rows):
            # no row holds anything: a fresh cache as wide as wanted, nothing to copy (a burst
            # that follows one of long replies starts at its own width, not the last one's); as
            # many rows as before (the rest of the burst is likely on its way), cut by the shrink
            self._small_steps = 0
            self.cache = self.empty_slots(max(want[0], rows), want[1])
            return
        roomy = self._col_bucket(n_cols + CUT_MARGIN)
        if want[0] > rows or want[1] > cols:
            want = (max(want[0], rows), max(want[1], cols))
        elif shrink and rows >= EMPTY_CUT_ROWS and roomy < cols:
            want = (rows, roomy)  # the rows stay (the cut below handles them)
        elif shrink and (4 * want[0] <= rows or 4 * want[1] <= cols):
            self._small_steps += 1  # cut only after a while: each new shape may compile
            if self._small_steps < SHRINK_AFTER_STEPS and any(r is not None for r in self.rows):
                return
        else:
            self._small_steps = 0
            return
        self._small_steps = 0
        if (slots.cache_shape(self.cache), want) in self.warm_resizes:
            self.cache = slots.resize_on_device(self.cache, *want)
        else:  # a rarer step (rows added, several widths at once): no program to compile
            self.cache = jax.device_put(slots.resize(self.cache, *want), self.device)
        self.resizes += 1

    def resize_steps(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """The (old, new) slots shapes that resize on the device (the warm-up compiles them): at
        every row count, a width to the next one up, and for EMPTY_CUT_ROWS+ rows, a width to
        each narrower one (`_fit`'s cuts)."""
        widths, out = self._col_buckets(), []
        rows = 1
        while True:
            for i, cols in enumerate(widths):
                if i + 1 < len(widths):
                    out.append(((rows, cols), (rows, widths[i + 1])))
                if rows >= EMPTY_CUT_ROWS:
                    out += [((rows, cols), (rows, c)) for c in widths if c < cols]
            if rows >= self.n_slots:
                return out
            rows = self._row_bucket(rows + 1)

    def _extend(self, slot: int, prefix, start: int, ids: list[int], row: tuple,
                st: slots.SlotStatic, bitmask=None, adapter: int = 0):
        """Prefills ids into `slot` at `start`: from the slot's own columns, or from `prefix`
        ((keys, values, n) of a prefix-cache hit, or None: an empty row) when it is new."""
        self._fit(slot + 1, self._width(start, len(ids)))
        width = slots.cache_shape(self.cache)[1]  # the row as wide as the slots: few programs
        if start == 0 or prefix is not None:
            keys, values, n = prefix or (self._no_prefix, self._no_prefix, 0)
            pad = [(0, 0), (0, 0), (0, width - keys.shape[2]), (0, 0)]  # one program per width
            cache_row = jax.device_put(slots.row_from_prefix(
                self.config, np.pad(keys, pad), np.pad(values, pad), np.int32(n), width),
                self.device)
        else:
            cache_row = slots.take_row(self.cache, np.int32(slot))
        sampling_row = slots.RowSampling.of([row])
        pos, rest = start, list(ids)
        while rest:  # power-of-two chunks (few programs): 580 tokens go as 512 + 64 + 4 (in 8)
            t = min(max(8, 1 << (len(rest).bit_length() - 1)), 1 << ((width - pos).bit_length() - 1))
            n = min(len(rest), t)
            chunk = np.zeros((1, t), np.int32)
            chunk[0, :n] = rest[:n]
            cache_row, out = slots.extend(self.params, st, cache_row, np.int32(pos), chunk,
                                          np.int32(n), sampling_row, bitmask,
                                          self._lora([adapter]))
            pos, rest = pos + n, rest[n:]
        self.cache = slots.put_row(self.cache, cache_row, np.int32(slot))
        return jax.device_get(out)  # sampled after the last chunk

    def _prefill_new(self, rows: list, prompts: list[list[int]], st: slots.SlotStatic):
        """The prompts of new rows (`admission.Row`s in their slots, nothing cached yet), each a
        single chunk of <= BATCH_PREFILL_MAX tokens, in one `slots.prefill_rows` call (rows padded
        to `_wave_bucket`, tokens to a BATCH_PREFILL_WIDTHS; padding rows go to no slot) -> Sampled
        [len(rows)]."""
        longest = max(len(p) for p in prompts)  # few programs: see BATCH_PREFILL_WIDTHS
        b, t = self._wave_bucket(len(rows)), next(w for w in BATCH_PREFILL_WIDTHS if w >= longest)
        self._fit(max(r.slot for r in rows) + 1, max(self._width(0, len(p)) for p in prompts))
        tokens, n_real = np.zeros((b, t), np.int32), np.ones(b, np.int32)
        slot_ids = np.full(b, slots.cache_shape(self.cache)[0], np.int32)  # past the end: dropped
        adapters = np.zeros(b, np.int32)
        params = [(0.0, 1.0, 0, 0, 0, 0)] * b
        for i, (r, p) in enumerate(zip(rows, prompts)):
            tokens[i, :len(p)], n_real[i], slot_ids[i] = p, len(p), r.slot
            adapters[i], params[i] = r.adapter, self._row_params(r)
        new, out = slots.prefill_rows(self.params, st, tokens, n_real,
                                      slots.RowSampling.of(params), self._lora(adapters))
        self.cache = slots.put_rows(self.cache, new, slot_ids)
        return jax.device_get(out)

    def _decode(self, active: np.ndarray, st: slots.SlotStatic, warm_adapter: int = 0,
                chained: np.ndarray | None = None, prev_tokens=None) -> slots.Sampled:
        """Dispatches one decode step of the active slots and returns its samples ON THE DEVICE
        (`jax.device_get` reads them back; meanwhile the host may work). `chained` [n_slots]:
        slots whose row has a step in flight that the host has not read back yet; their token
        is that step's sample (`prev_tokens`, its device output, as many rows as the slots now),
        one column and one sampling step past the host's count. `warm_adapter`: the adapter of
        active slots with no row, for the warm-up."""
        n = slots.cache_shape(self.cache)[0]
        tokens = np.zeros(n, np.int32)
        lengths = np.zeros(n, np.int32)
        rows = [(0.0, 1.0, 0, 0, 0, 0)] * n
        adapters = np.where(active[:n], warm_adapter, 0).astype(np.int32)
        use_prev = np.zeros(n, bool) if chained is None else chained[:n]
        constrained = {}
        for r in self.rows:
            if r is not None and r.slot < n and active[r.slot]:
                ahead = int(use_prev[r.slot])
                tokens[r.slot], lengths[r.slot] = r.next_token, r.length + ahead
                adapters[r.slot] = r.adapter
                rows[r.slot] = self._row_params(r, ahead)
                if r.matcher is not None and not r.forced:  # it samples this step
                    constrained[r.slot] = r.matcher
        bitmask = None
        if constrained:
            bitmask = structured.fill_masks(constrained,
                                            structured.new_bitmask(n, self.config.vocab_size))
        if prev_tokens is None:
            if n not in self._no_prev:
                self._no_prev[n] = jax.device_put(np.zeros(n, np.int32), self.device)
            prev_tokens = self._no_prev[n]
        self.cache, out = slots.decode(self.params, st, self.cache, tokens, prev_tokens, use_prev,
                                       lengths, active[:n], slots.RowSampling.of(rows), bitmask,
                                       self._lora(adapters))
        return out

    @staticmethod
    def _row_params(r, ahead: int = 0) -> tuple:
        """A row's (`admission.Row`) sampling settings, as `slots.RowSampling.of` takes them
        (`ahead`: tokens it has sampled that the host has not counted yet)."""
        q = r.request
        return (q.temperature, q.top_p, q.top_k, q.seed, r.choice, r.generated + ahead)

    def _static(self, requests) -> slots.SlotStatic:
        return slots.static_for(self.config, self.vocab_limit, requests, N_TOP)
