"""Compiling the serving engine's programs before the first request (`Engine.warmup`).

For every slots width: a new row, and the greedy prefill of each chunk bucket up to `max_chunk`
(longer chunks compile when first met); the greedy decode at every (rows, columns) slots shape;
the batched prefill of an admission wave at each batch size and width, and its move into the
slots at every shape, as a lone prompt's row's, and the read of a slot's KV for the prefix cache;
the sampling modes for one short row; the slots' width steps on the device
(`SlotDevice.resize_steps`). After it, greedy serving without log-probs meets no compile (a stall
of ~1 s each on the tiny recipe's model; tests/test_serve_shapes.py). Constrained (masked)
programs, and those of a request asking for log-probs, compile when such a request first meets a
shape. With LoRA adapters, every program is compiled with and without the per-row low-rank path
(a step uses it only when one of its rows has an adapter).
"""
from __future__ import annotations

import numpy as np

from gpt_jax.serve import slots
from gpt_jax.serve.device import BATCH_PREFILL_WIDTHS
from gpt_jax.serve.requests import Request


def warmup(engine, max_chunk: int = 256) -> None:
    """Compiles `engine`'s programs (see the module docstring); leaves its slots empty. An engine
    with LoRA adapters gets each program twice: without and with the low-rank path."""
    for adapter in (0, 1) if engine.adapters is not None else (0,):
        _warm(engine, max_chunk, adapter)


def _warm(engine, max_chunk: int, adapter: int) -> None:
    greedy = engine._static([Request([0], 1, lambda e: None)])
    params = (0.0, 1.0, 0, 0, 0, 0)
    for cols in engine._col_buckets():
        empty = np.zeros((*engine._no_prefix.shape[:2], cols, engine._no_prefix.shape[3]),
                         np.float32)
        slots.row_from_prefix(engine.config, empty, empty, np.int32(0), cols)
        t = 8
        while t <= min(cols, max_chunk):
            row = engine.empty_slots(1, cols)
            slots.extend(engine.params, greedy, row, np.int32(0), np.zeros((1, t), np.int32),
                         np.int32(t), slots.RowSampling.of([params]), None,
                         engine._lora([adapter]))
            t *= 2
    one = np.arange(engine.n_slots) == 0  # slot 0 at length 0
    for q in (Request([0], 1, lambda e: None, temperature=1.0),
              Request([0], 1, lambda e: None, temperature=1.0, top_p=0.9)):
        engine._fit(1, 64, shrink=True)
        engine._extend(0, None, 0, [0] * 8, (1.0, 0.9, 0, 0, 0, 0), engine._static([q]),
                       adapter=adapter)
        engine._decode(one, engine._static([q]), adapter)
    waves = sorted({engine._wave_bucket(n) for n in range(2, engine.n_slots + 1)})
    for b in waves:  # admission waves (`SlotDevice._prefill_new`)
        for width in BATCH_PREFILL_WIDTHS:
            slots.prefill_rows(engine.params, greedy, np.zeros((b, width), np.int32),
                               np.ones(b, np.int32), slots.RowSampling.of([params] * b),
                               engine._lora([adapter] * b))
    rows = 1
    while True:  # greedy decode at every (rows, columns) bucket
        for cols in engine._col_buckets():
            engine.cache = engine.empty_slots(rows, cols)
            engine._decode(one, greedy, adapter)
            if adapter:
                continue  # moving rows in has no adapter path: compiled once
            # a lone prompt's row into the slots, and each admission wave's rows
            engine.cache = slots.put_row(engine.cache, slots.take_row(engine.cache, np.int32(0)),
                                         np.int32(0))
            if engine.prefix is not None:  # a finished prompt's or reply's KV into the cache
                slots.read_prefix(engine.cache, np.int32(0), cols)
            for b in (b for b in waves if b <= rows):
                for width in (w for w in BATCH_PREFILL_WIDTHS if w <= cols):
                    new = engine.empty_slots(b, width)
                    engine.cache = slots.put_rows(engine.cache, new, np.full(b, rows, np.int32))
        if rows >= engine.n_slots:
            break
        rows = engine._row_bucket(rows + 1)
    if not adapter:  # the common resizes, on the device
        for old, new in engine.resize_steps():
            slots.resize_on_device(engine.empty_slots(*old), *new)
            engine.warm_resizes.add((old, new))
    engine.cache = engine.empty_slots(1, 64)
