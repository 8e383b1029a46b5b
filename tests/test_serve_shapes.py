"""The serving engine's program shapes: after `warmup`, serving compiles nothing (every array a
program takes lives on the engine's device, so a fresh cache and one out of a decode step hit the
same compiled program); empty slots are cut to the next burst's width at once; an admission wave
pads its rows to the next of 4, 8, 16, 24, 32, 48, 64 and its prompts to 64 or 80 tokens."""
import random
import threading

import jax
import numpy as np

from gpt_jax.serve import device as device_module
from gpt_jax.serve import slots
from gpt_jax.serve.engine import Engine
from gpt_jax.serve.requests import Done, Request
from test_serve_engine import model  # noqa: F401 - the fixture: a random model's workdir


def serve(engine: Engine, requests: list[tuple[int, int]], gap_s: float = 0.0) -> None:
    """Submits (prompt length, max_tokens) requests, greedy, and waits for all of them."""
    done = threading.Semaphore(0)
    for i, (n, max_tokens) in enumerate(requests):
        prompt = [3 + (7 * i + j) % 300 for j in range(n)]
        engine.submit(Request(prompt, max_tokens,
                              lambda e: done.release() if isinstance(e, Done) else None))
        if gap_s:
            threading.Event().wait(gap_s)
    for _ in requests:
        assert done.acquire(timeout=120)


def test_serving_after_warmup_compiles_nothing(model):
    tok, config, params = model
    engine = Engine(params, config, tok, n_slots=16)  # with the prefix cache
    engine.warmup()
    compiles = []

    def listen(event, seconds, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listen)
    engine.start()
    rng = random.Random(0)
    try:
        # bursts of 1-16 rows: prompts under and over the batched-prefill length, replies that
        # grow the slots, lone arrivals into a busy engine, the slots emptied and refilled
        for size in (16, 1, 5, 16, 3, 12, 1):
            burst = [(rng.randint(2, 100), rng.randint(1, 50)) for _ in range(size)]
            serve(engine, burst, gap_s=0.003 if size < 6 else 0.0)
    finally:
        engine.stop()
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == []
    assert engine.resizes > 0  # the slots did change shape while serving


def test_empty_slots_are_cut_to_the_next_bursts_width(model):
    tok, config, params = model
    engine = Engine(params, config, tok, n_slots=16, prefix_cache_mb=0)
    shapes = []
    decode = engine._decode
    engine._decode = lambda *a, **k: shapes.append(slots.cache_shape(engine.cache)) or \
        decode(*a, **k)
    engine.start()
    try:
        serve(engine, [(20, 120)] * 16)  # 16 rows grow to 140 columns (the 192 bucket)
        assert shapes[-1] == (16, 192)
        shapes.clear()
        serve(engine, [(20, 4)] * 16)  # then short ones: 16 rows, nothing left in them
        assert shapes[0] == (16, 64)
    finally:
        engine.stop()
    small = Engine(params, config, tok, n_slots=4, prefix_cache_mb=0)
    small._decode = lambda *a, **k: shapes.append(slots.cache_shape(small.cache)) or \
        small.__class__._decode(small, *a, **k)
    small.start()
    try:
        serve(small, [(20, 120)])
        shapes.clear()
        serve(small, [(20, 4)])  # one row: not cut (a step costs about the same at any width)
        assert shapes[0] == (1, 192)
    finally:
        small.stop()


def test_many_rows_are_cut_to_a_narrower_width_at_once_with_room_to_spare(model):
    """Rows still running (a burst starting while the last long replies end): slots of 16+ rows
    are cut (on the device) as soon as their rows fit a narrower width with CUT_MARGIN to spare;
    small slots, or too little room, wait for the quarter rule."""
    tok, config, params = model
    engine = Engine(params, config, tok, n_slots=16, prefix_cache_mb=0)
    assert engine.max_len == 224 and device_module.CUT_MARGIN == 32
    # widths: multiples of 64 up to 256, then powers of two, up to max_len
    assert engine._col_buckets() == [64, 128, 192, 224]
    engine.max_len = 1088
    assert engine._col_buckets() == [64, 128, 192, 256, 512, 1024, 1088]
    assert [engine._col_bucket(n) for n in (1, 65, 139, 193, 257, 1025, 5000)] == \
        [64, 128, 192, 256, 512, 1088, 1088]
    engine.max_len = 224
    engine.warm_resizes.update(engine.resize_steps())  # as the warm-up leaves them
    steps = engine.warm_resizes
    assert ((16, 192), (16, 128)) in steps and ((4, 128), (4, 192)) in steps
    assert ((4, 192), (4, 128)) not in steps  # few rows: cut by the quarter rule, on the host
    engine.rows[3] = object()  # a row present: no fresh cache, a copy
    for rows, need, want in ((16, 40, (16, 128)), (16, 32, (16, 64)), (16, 193, (16, 224)),
                             (4, 32, (4, 224))):
        engine.cache = engine.empty_slots(rows, 224)
        resizes = engine.resizes
        engine._fit(4, need, shrink=True)
        assert slots.cache_shape(engine.cache) == want, (rows, need)
        if want[1] < 224:  # a step the warm-up compiled: on the device, committed to it
            assert ((rows, 224), want) in engine.warm_resizes and engine.resizes == resizes + 1
            assert engine.cache["valid"].committed
    engine.rows[3] = None
    # the device's resize moves what the host's does
    rng = np.random.default_rng(0)
    cache = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype),
                         jax.eval_shape(lambda: slots.init_slots(engine.config, 4, 192)))
    for shape in ((4, 128), (16, 224), (1, 64)):
        jax.tree.map(np.testing.assert_array_equal, slots.resize_on_device(cache, *shape),
                     slots.resize(cache, *shape))


def test_a_wave_of_25_to_32_rows_pads_to_32(model, monkeypatch):
    tok, config, params = model
    engine = Engine(params, config, tok, n_slots=64, prefix_cache_mb=0)
    assert [engine._wave_bucket(n) for n in (2, 4, 5, 9, 16, 17, 24, 25, 32, 33, 48, 49, 64)] == \
        [4, 4, 8, 16, 16, 24, 24, 32, 32, 48, 48, 64, 64]
    batches = []
    prefill_rows = slots.prefill_rows
    monkeypatch.setattr(device_module.slots, "prefill_rows",
                        lambda p, st, tokens, *a: batches.append(tokens.shape) or
                        prefill_rows(p, st, tokens, *a))
    engine.submit(Request([5] * 3, 1, lambda e: None))  # three waiting before the engine starts
    for _ in range(24):
        engine.submit(Request(list(np.arange(3, 20)), 2, lambda e: None))
    done = threading.Semaphore(0)
    engine.submit(Request([7] * 9, 2, lambda e: done.release() if isinstance(e, Done) else None))
    engine.start()
    try:
        assert done.acquire(timeout=120)
    finally:
        engine.stop()
    assert batches == [(32, 64)]  # 26 rows in one call of 32, 64 tokens wide (the longest: 17)


def test_a_wave_is_as_wide_as_the_first_width_holding_its_longest_prompt(model, monkeypatch):
    tok, config, params = model
    engine = Engine(params, config, tok, n_slots=16, prefix_cache_mb=0)
    assert device_module.BATCH_PREFILL_WIDTHS == (64, 80)
    batches, alone = [], []
    prefill_rows, extend = slots.prefill_rows, slots.extend
    monkeypatch.setattr(device_module.slots, "prefill_rows",
                        lambda p, st, tokens, *a: batches.append(tokens.shape) or
                        prefill_rows(p, st, tokens, *a))
    monkeypatch.setattr(device_module.slots, "extend",
                        lambda p, st, row, start, tokens, n, *a: alone.append(int(n)) or
                        extend(p, st, row, start, tokens, n, *a))
    done = threading.Semaphore(0)
    for n in (30, 75, 50, 81, 64):  # 75 needs the 80-wide wave; 81 is prefilled alone
        engine.submit(Request([3 + i % 200 for i in range(n)], 2,
                              lambda e: done.release() if isinstance(e, Done) else None))
    engine.start()
    try:
        for _ in range(5):
            assert done.acquire(timeout=120)
    finally:
        engine.stop()
    assert batches == [(4, 80)] and alone == [64, 16, 1]  # 81 tokens: chunks of 64 + 16 + 1
