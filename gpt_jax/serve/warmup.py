"""Compiling the serving engine's programs before the first request (`Engine.warmup`).

For every slots width: the greedy prefill of each chunk bucket up to `max_chunk` (longer chunks
compile when first met); the greedy decode at every (rows, columns) slots shape; the batched
prefill of an admission wave at each batch size and its move into the slots at every shape; the
sampling modes for one short row. After it, greedy serving meets no compile (a stall of ~1 s each
on the tiny recipe's model). Constrained (masked) programs compile when a constrained request first
meets a shape. With LoRA adapters, every program is compiled with and without the per-row low-rank
path (a step uses it only when one of its rows has an adapter).
"""
from __future__ import annotations

import numpy as np

from gpt_jax.serve import slots
from gpt_jax.serve.device import BATCH_PREFILL_MAX
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
        t = 8
        while t <= min(cols, max_chunk):
            row = slots.init_slots(engine.config, 1, cols)
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
    waves = {engine._wave_bucket(n) for n in range(2, engine.n_slots + 1)}
    batches = []  # the batch sizes of admission waves met so far (`SlotDevice._prefill_new`)
    rows = 1
    while True:  # greedy decode at every (rows, columns) bucket
        if rows in waves:
            batches.append(rows)
            tokens = np.zeros((rows, BATCH_PREFILL_MAX), np.int32)
            new, _ = slots.prefill_rows(engine.params, greedy, tokens, np.ones(rows, np.int32),
                                        slots.RowSampling.of([params] * rows),
                                        engine._lora([adapter] * rows))
        for cols in engine._col_buckets():
            engine.cache = slots.init_slots(engine.config, rows, cols)
            engine._decode(one, greedy, adapter)
            for b in batches if adapter == 0 else ():  # put_rows has no adapter path
                engine.cache = slots.put_rows(engine.cache, new if b == rows else
                                              slots.init_slots(engine.config, b, BATCH_PREFILL_MAX),
                                              np.full(b, rows, np.int32))
        if rows >= engine.n_slots:
            break
        rows = engine._row_bucket(rows + 1)
    engine.cache = slots.init_slots(engine.config, 1, 64)
