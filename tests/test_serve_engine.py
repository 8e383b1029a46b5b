"""Serving engine (continuous batching over decode slots): every row equals itself decoded alone and
`sampling.generate`'s reference, seeds reproduce, the prefix cache reuses KV without changing the
tokens, tools run inside decoding, admission control and timeouts."""
import functools
import threading

import numpy as np
import pytest

from gpt_jax import sampling as S
from gpt_jax.chat import _mask_from
from gpt_jax.checkpoint import load_stage
from gpt_jax.engine_tools import visible_text
from gpt_jax.model import GPTConfig
from gpt_jax.serve.engine import Engine, QueueFull
from gpt_jax.serve.prefix_cache import PrefixCache
from gpt_jax.serve.requests import Delta, Done, Finish, Request
from gpt_jax.tokenizer import Tokenizer
from helpers import random_model_workdir

CONFIG = GPTConfig(family="llama", vocab_size=320, max_seq_len=160, n_layers=2, d_model=32,
                   n_heads=4, n_kv_heads=2, init_std=0.3)
TEXTS = ["Hello world", "The quick brown fox jumps over the lazy dog. A stitch in time",
         "12 34", "how are you today? Numbers 12 34 56 78 and 23 + 45 = 68. Hello there",
         "A", "你好，世界。"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    wd = random_model_workdir(tmp_path_factory.mktemp("serve_engine"), CONFIG)
    tok = Tokenizer.load(wd / "tokenizer" / "tokenizer.json")
    config, params = load_stage(wd, "sft")
    return tok, config, params


def run(engine: Engine, requests: list[dict], start: bool = False) -> list[dict]:
    """Submits all requests at once (then starts the engine with `start`: its first admission
    sees them all); per request: text, token ids (from logprobs), finish."""
    results = [{"text": "", "ids": [], "finish": [], "events": []} for _ in requests]
    done = threading.Semaphore(0)

    def on_event(i, e):
        res = results[i]
        res["events"].append(e)
        if isinstance(e, Delta):
            res["text"] += e.text
            res["ids"] += [lp.token for lp in e.logprobs]
        elif isinstance(e, Finish):
            res["finish"].append(e.reason)
        elif isinstance(e, Done):
            res["done"] = e
            done.release()

    for i, kw in enumerate(requests):
        engine.submit(Request(on_event=lambda e, i=i: on_event(i, e), logprobs=0, **kw))
    if start:
        engine.start()
    for _ in requests:
        assert done.acquire(timeout=120)
    return results


def make(model, **kw) -> Engine:
    tok, config, params = model
    return Engine(params, config, tok, **{"n_slots": 8, "prefix_cache_mb": 0, **kw}).start()


def prompts(tok):
    return [[tok.bos_id, *tok.encode(t)] for t in TEXTS]


def test_batched_rows_equal_each_alone_and_the_reference(model):
    tok, config, params = model
    engine = make(model)
    try:
        reqs = [{"prompt": p, "max_tokens": 12 + 5 * i} for i, p in enumerate(prompts(tok))]
        long = (prompts(tok)[1] * 4)[:146]  # prefilled in chunks of 128, 16 and 2 (in 8)
        reqs.append({"prompt": long, "max_tokens": CONFIG.max_seq_len - len(long)})
        together = run(engine, reqs)
        alone = [run(engine, [r])[0] for r in reqs]
    finally:
        engine.stop()
    cfg, prm = S.unstack_layers(config, params)
    for r, t, a in zip(reqs, together, alone):
        gen = S.generate(prm, cfg, [r["prompt"]], S.SamplingConfig(
            temperature=0, max_new_tokens=r["max_tokens"]), pad_id=tok.pad_id,
            logit_processor=functools.partial(_mask_from, first_unused=tok.vocab_size))
        assert t["ids"] == a["ids"] == gen.row(0)
        assert t["text"] == a["text"] == visible_text(tok, gen.row(0))
        assert t["finish"] == ["length"] and len(t["ids"]) == r["max_tokens"]


def test_a_burst_is_prefilled_in_one_call_and_each_row_equals_itself_alone(model):
    tok, config, params = model
    burst = Engine(params, config, tok, n_slots=8, prefix_cache_mb=0)
    calls = []
    prefill_new = burst._prefill_new
    burst._prefill_new = lambda rows, *a: calls.append(len(rows)) or prefill_new(rows, *a)
    sampled = {"temperature": 1.0, "top_k": 40, "seed": 3}
    reqs = [{"prompt": p, "max_tokens": 10, **(sampled if i % 2 else {})}
            for i, p in enumerate(prompts(tok))]
    reqs.append({"prompt": prompts(tok)[1], "max_tokens": 6, "n": 2, **sampled})
    alone_engine = make(model)
    try:
        together = run(burst, reqs, start=True)
        alone = [run(alone_engine, [r])[0] for r in reqs]
    finally:
        burst.stop()
        alone_engine.stop()
    assert calls == [len(TEXTS) + 2]  # every row of the burst in one prefill (8 rows, 8 slots)
    for t, a in zip(together, alone):
        assert t["ids"] == a["ids"] and t["text"] == a["text"] and t["finish"] == a["finish"]


def test_prefill_rows_equals_each_row_extended_alone(model):
    """`slots.prefill_rows` + `put_rows` against `slots.extend` of each prompt into an empty row:
    the same sampled token and log-prob, the same KV in the prompt's columns, validity exactly."""
    from gpt_jax.serve import slots

    tok, config, params = model
    engine = Engine(params, config, tok, n_slots=8, prefix_cache_mb=0)
    st = engine._static([Request([0], 1, lambda e: None)])
    ps = prompts(tok)[:5]
    t, width = 64, 128
    tokens = np.zeros((8, t), np.int32)
    n_real = np.ones(8, np.int32)
    for i, p in enumerate(ps):
        tokens[i, :len(p)], n_real[i] = p, len(p)
    greedy = slots.RowSampling.of([(0.0, 1.0, 0, 0, 0, 0)] * 8)
    rows, out = slots.prefill_rows(engine.params, st, tokens, n_real, greedy)
    cache = slots.init_slots(engine.config, 8, width)
    slot_ids = np.array([6, 0, 3, 1, 2, 8, 8, 8], np.int32)  # 8: padding, dropped
    cache = slots.put_rows(cache, rows, slot_ids)
    for i, p in enumerate(ps):
        row = slots.init_slots(engine.config, 1, width)
        chunk = np.zeros((1, t), np.int32)
        chunk[0, :len(p)] = p
        one, ref = slots.extend(engine.params, st, row, np.int32(0), chunk, np.int32(len(p)),
                                slots.RowSampling.of([(0.0, 1.0, 0, 0, 0, 0)]))
        assert int(out.token[i]) == int(ref.token[0])
        np.testing.assert_allclose(out.logprob[i], ref.logprob[0], atol=1e-5)
        slot = slot_ids[i]
        np.testing.assert_array_equal(np.asarray(cache["valid"][slot]),
                                      np.arange(width) < len(p))
        for mine, theirs in zip(cache["layers"], one["layers"]):
            for k in ("k", "v"):
                np.testing.assert_allclose(np.asarray(mine[k][slot, :, :len(p)]),
                                           np.asarray(theirs[k][0, :, :len(p)]), atol=1e-5)
    assert not np.asarray(cache["valid"])[[4, 5, 7]].any()  # untouched slots


def test_seeded_sampling_is_the_same_alone_and_among_others(model):
    tok, _, _ = model
    engine = make(model)
    try:
        kw = {"temperature": 1.0, "top_k": 40, "top_p": 0.9, "max_tokens": 20}
        reqs = [{"prompt": p, "seed": 7 + i % 2, "n": 2, **kw} for i, p in enumerate(prompts(tok))]
        together = run(engine, reqs)
        alone = [run(engine, [r])[0] for r in reqs]
        other_seed = run(engine, [{**reqs[0], "seed": 1234}])[0]
    finally:
        engine.stop()
    for t, a in zip(together, alone):
        assert t["ids"] == a["ids"] and len(t["ids"]) == 40  # two choices of 20
    assert other_seed["ids"] != together[0]["ids"]


def test_prefix_cache_hit_gives_the_tokens_of_a_full_prefill(model):
    tok, _, _ = model
    history = prompts(tok)[3] + prompts(tok)[1]
    turn2 = history + tok.encode(" and the next question")
    cold = make(model)
    warm = make(model, prefix_cache_mb=16)
    try:
        want = run(cold, [{"prompt": turn2, "max_tokens": 16}])[0]
        first = run(warm, [{"prompt": history, "max_tokens": 16}])[0]
        second = run(warm, [{"prompt": turn2, "max_tokens": 16}])[0]
    finally:
        cold.stop()
        warm.stop()
    assert first["done"].cached_tokens == 0
    assert second["done"].cached_tokens == len(history) // 16 * 16 >= 64
    assert second["ids"] == want["ids"]
    assert warm.prefix.stats()["hits"] == 1


def test_tool_call_runs_inside_decoding(model, monkeypatch):
    """The sampled tokens are scripted (a random model never calls a tool; after the call, plain
    text): the call's result is prefilled into the row, shown as text and as a tool-call event,
    and the row samples on."""
    tok, _, _ = model
    call = [tok.token_id("tool_call_start"), *tok.encode("23 + 45"), tok.token_id("tool_call_end")]
    engine = make(model)
    script = iter(call)
    accept = Engine._accept

    filler = tok.encode("a")[0]  # after the call: plain text, so the weights cannot call again

    def scripted(self, r, out, i):
        out = out._replace(token=np.array(out.token))
        out.token[i] = next(script, filler)
        accept(self, r, out, i)

    monkeypatch.setattr(Engine, "_accept", scripted)
    calls = []
    try:
        res = run(engine, [{"prompt": prompts(tok)[0], "max_tokens": 30,
                            "tool": lambda e: calls.append(e) or str(eval(e))}])[0]
    finally:
        engine.stop()
    assert calls == ["23 + 45"]
    tool_events = [e.tool_call for e in res["events"] if isinstance(e, Delta) and e.tool_call]
    assert tool_events == [{"name": "calculator", "input": "23 + 45", "output": "68"}]
    assert res["text"].startswith("23 + 45 = 68")
    assert res["done"].completion_tokens == 30, res["finish"]  # the result counts toward max_tokens


def test_queue_full_and_timeout(model):
    tok, config, params = model
    engine = Engine(params, config, tok, n_slots=1, max_queue=1)  # not started: nothing is admitted
    long = {"prompt": prompts(tok)[0], "max_tokens": 100, "on_event": lambda e: None}
    engine.submit(Request(**long))  # takes the free slot
    engine.submit(Request(**long))  # waits
    with pytest.raises(QueueFull):
        engine.submit(Request(**long))
    with pytest.raises(ValueError, match="exceed the context"):
        engine.submit(Request(**{**long, "max_tokens": 1000}))
    engine.waiting.clear()
    engine.start()
    try:
        res = run(engine, [{"prompt": prompts(tok)[0], "max_tokens": 100, "timeout_s": 0.0}])[0]
    finally:
        engine.stop()
    assert res["finish"] == ["timeout"] and engine.busy_slots() == 0


def test_prefix_cache_lru_evicts_the_tail_of_a_prefix_first():
    kv = np.zeros((1, 1, 8, 4), np.float32)  # [L, K, S, D]: a block = 2 x 4 x 4 bytes per k/v
    cache = PrefixCache(budget_bytes=3 * 64, block=2)  # 3 blocks (k + v: 64 bytes each)
    cache.store([1, 2, 3, 4, 5, 6], kv, kv)
    assert cache.missing_from([1, 2, 3, 4, 5, 6]) == 6
    cache.store([7, 8, 9, 10], kv, kv)  # over budget: the oldest prefix loses its tail first
    assert cache.missing_from([1, 2, 3, 4, 5, 6]) == 2 and cache.missing_from([7, 8, 9, 10]) == 4
    n, k, v = cache.lookup([1, 2, 3, 4, 5, 6], limit=5)
    assert n == 2 and k.shape == (1, 1, 2, 4)
    assert cache.lookup([9, 9], limit=2)[0] == 0


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (3, 1.0), (0, 0.7), (4, 0.8)])
def test_row_sampling_matches_the_filtered_distribution(top_k, top_p):
    """4000 rows with distinct seeds: the tokens drawn (one uniform per row, inverse CDF) follow
    `sampling.filter_logits`' distribution (the sort-based reference), and nothing outside it."""
    import jax
    import jax.numpy as jnp

    from gpt_jax.serve import slots

    logits = jnp.asarray(np.log([0.3, 0.25, 0.15, 0.1, 0.08, 0.06, 0.04, 0.02]), jnp.float32)
    b, v, temperature = 4000, 8, 0.9
    st = slots.SlotStatic(CONFIG, "filtered" if top_k or top_p < 1 else "sample",
                          8 if top_k else 0, 4, v)
    rows = slots.RowSampling.of([(temperature, top_p, top_k, seed, 0, 0) for seed in range(b)])
    out = slots.sample_rows(st, jnp.broadcast_to(logits, (b, v)), rows)
    want = jax.nn.softmax(S.filter_logits(logits[None] / temperature, top_k,
                                          top_p if top_p < 1 else None))[0]
    freq = np.bincount(np.asarray(out.token), minlength=v) / b
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(np.asarray(want) > 0))
    np.testing.assert_allclose(freq, want, atol=0.025)
    full = jax.nn.log_softmax(logits / temperature)  # log-probs before truncation
    np.testing.assert_allclose(out.logprob, full[np.asarray(out.token)], rtol=1e-5)


def test_greedy_rows_without_logprobs_skip_them():
    """No row asks log-probs: the program returns the same greedy tokens with logprob 0 and no
    alternatives (the softmax and top-k skipped); one row asking turns them on for the step."""
    import jax
    import jax.numpy as jnp

    from gpt_jax.serve import slots

    def q(**kw):
        return Request([1], 1, lambda e: None, **kw)

    v = 64
    lean = slots.static_for(CONFIG, v, [q(), q()], 20)
    full = slots.static_for(CONFIG, v, [q(), q(logprobs=0)], 20)
    assert (lean.mode, lean.n_top, full.mode, full.n_top) == ("greedy", 0, "greedy", 20)
    assert slots.static_for(CONFIG, 8, [q(logprobs=2)], 20).n_top == 8  # at most the vocab
    logits = jax.random.normal(jax.random.key(0), (5, v)) * 3
    rows = slots.RowSampling.of([(0.0, 1.0, 0, 0, 0, 0)] * 5)
    a, b = slots.sample_rows(lean, logits, rows), slots.sample_rows(full, logits, rows)
    np.testing.assert_array_equal(a.token, np.argmax(logits, -1))
    np.testing.assert_array_equal(a.token, b.token)
    assert np.all(np.asarray(a.logprob) == 0) and a.top_ids.shape == (5, 0)
    want = jax.nn.log_softmax(logits)[jnp.arange(5), b.token]
    np.testing.assert_allclose(b.logprob, want, rtol=1e-6)
    assert b.top_ids.shape == (5, 20)


def test_row_text_is_visible_text_token_by_token(model):
    """RowText (incremental) shows exactly `engine_tools.visible_text` of the ids so far, minus
    what may still turn into a stop string or a UTF-8 character, for random id streams with
    special, tool and stop ids mixed in."""
    from gpt_jax.serve.requests import RowText

    tok = model[0]
    rng = np.random.default_rng(0)
    specials = sorted(tok.special_ids.values())
    stop_ids = [tok.eos_id]
    for _ in range(30):
        ids = [int(rng.choice(specials)) if rng.random() < 0.15 else int(rng.integers(0, 300))
               for _ in range(int(rng.integers(1, 60)))]
        row, shown = RowText(tok, stop_ids, ()), ""
        for i, t in enumerate(ids):
            shown += row.add([t])
            whole = visible_text(tok, ids[: i + 1], skip=set(stop_ids))
            assert whole.startswith(shown) and set(whole[len(shown):]) <= {"\ufffd"}
        assert shown + row.flush() == visible_text(tok, ids, skip=set(stop_ids))


def test_merge_deltas_keeps_each_choices_order():
    from gpt_jax.serve.formats import merge_deltas

    tool = {"name": "calculator", "input": "1+1", "output": "2"}
    events = [(0, Delta(0, "a")), (0, Delta(1, "x")), (0, Delta(0, "b")), (0, Delta(0, "=", (), tool)),
              (0, Delta(0, "c")), (1, Delta(0, "p")), (0, Delta(0, "d")), (0, Finish(0, "stop")),
              (0, Delta(1, "y")), (0, Finish(1, "length")), (0, Done(3, 5, 0))]
    assert merge_deltas(events) == [
        (0, Delta(0, "ab")), (0, Delta(1, "xy")), (0, Delta(0, "=", (), tool)), (0, Delta(0, "cd")),
        (1, Delta(0, "p")), (0, Finish(0, "stop")), (0, Finish(1, "length")), (0, Done(3, 5, 0))]


def test_a_failing_step_ends_its_rows_with_error_and_the_engine_goes_on(model, monkeypatch):
    from gpt_jax.serve import slots

    tok = model[0]
    engine = make(model)
    decode = slots.decode
    calls = {"n": 0}

    def broken_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected")
        return decode(*args, **kwargs)

    monkeypatch.setattr(slots, "decode", broken_once)
    try:
        failed = run(engine, [{"prompt": prompts(tok)[0], "max_tokens": 8}])[0]
        after = run(engine, [{"prompt": prompts(tok)[0], "max_tokens": 8}])[0]
    finally:
        engine.stop()
    assert failed["finish"] == ["error"] and after["finish"] == ["length"]
    assert len(after["ids"]) == 8 and engine.busy_slots() == 0


def test_constrained_rows_validate_and_equal_each_alone(model):
    from gpt_jax.eval import structured_suite as suite
    from gpt_jax.structured import Constraint, ConstraintError

    tok, _, _ = model
    stops = frozenset({tok.token_id("assistant_end")})
    engine = make(model)
    try:
        names = ["person", "tuple_prefix", "re_iso_date", "one_of_objects", "top_level_enum"]
        cases = dict(suite.cases())
        grammars = [engine.compile_constraint(cases[n], stops) for n in names] + [None]
        reqs = [{"prompt": p, "max_tokens": 100 if g is not None else 24, "temperature": 1.0,
                 "seed": 3 + i, "stop_ids": stops, "grammar": g}
                for i, (p, g) in enumerate(zip(prompts(tok), grammars))]
        together = run(engine, reqs)
        alone = [run(engine, [r])[0] for r in reqs]
        with pytest.raises(ConstraintError, match="unclosed group"):
            engine.compile_constraint(Constraint.regex("a("), stops)
    finally:
        engine.stop()
    for i, (t, a) in enumerate(zip(together, alone)):
        assert t["ids"] == a["ids"] and t["text"] == a["text"]
        if i < len(names):
            assert t["finish"] == ["stop"] and suite.is_valid(names[i], t["text"]), t["text"]


def test_moderated_reply_ends_with_content_filter_at_a_check(model):
    tok, _, _ = model
    engine = make(model)
    try:
        calls = []

        def second_check_flags(text):
            calls.append(text)
            return len(calls) >= 2

        flagged, clean = run(engine, [
            {"prompt": prompts(tok)[1], "max_tokens": 40, "moderate": second_check_flags,
             "moderate_every": 4},
            {"prompt": prompts(tok)[1], "max_tokens": 40, "moderate": lambda text: False,
             "moderate_every": 4}])
    finally:
        engine.stop()
    assert flagged["finish"] == ["content_filter"] and len(flagged["ids"]) == 8
    assert clean["finish"] == ["length"] and len(clean["ids"]) == 40
    assert clean["ids"][:8] == flagged["ids"]  # the same greedy reply, cut at the second check
    assert calls[1] == tok.decode([t for t in flagged["ids"]  # the reply so far, as text
                                   if t < tok.vocab_size and not tok.is_special(t)])


def test_overlapped_steps_give_the_tokens_of_steps_read_back_one_by_one(model, monkeypatch):
    """The engine dispatches each decode step before reading the last one back (its rows' input:
    that step's samples, still on the device). Greedy rows and seeded sampled ones (n = 2,
    top-k / top-p: their keys count the step in flight) of different lengths, some ending on the
    stop token, give the tokens of an engine that reads every step back first."""
    from gpt_jax.serve import slots

    tok = model[0]
    chained = []
    decode = slots.decode

    def spy(params, st, cache, tokens, prev_tokens, use_prev, *rest, **kw):
        chained.append(bool(np.asarray(use_prev).any()))
        return decode(params, st, cache, tokens, prev_tokens, use_prev, *rest, **kw)

    monkeypatch.setattr(slots, "decode", spy)
    sampled = {"temperature": 1.0, "top_k": 40, "top_p": 0.9, "n": 2}
    stops = frozenset({tok.token_id("assistant_end"), tok.encode("e")[0]})
    reqs = [{"prompt": p, "max_tokens": 6 + 5 * i, "stop_ids": stops,
             **({**sampled, "seed": 3 + i} if i % 2 else {})}
            for i, p in enumerate(prompts(tok))]
    results, dispatched = {}, {}
    for overlap in (True, False):
        chained.clear()
        engine = make(model, overlap=overlap)
        try:
            results[overlap] = run(engine, reqs)
        finally:
            engine.stop()
        dispatched[overlap] = sum(chained)
    for a, b in zip(results[True], results[False]):
        assert a["ids"] == b["ids"] and a["finish"] == b["finish"] and a["text"] == b["text"]
    assert dispatched[False] == 0 and dispatched[True] >= 20


def test_first_argmax_is_argmax_with_ties_and_masked_entries():
    import jax.numpy as jnp

    from gpt_jax.serve.slots import first_argmax

    x = np.random.default_rng(0).normal(size=(6, 50)).astype(np.float32)
    x[1, [3, 17]] = 9.0  # a tie: the first index wins
    x[2, :] = -np.inf  # everything masked
    x[3, 10:] = -np.inf
    x[4, :] = 1.0
    assert np.array_equal(np.asarray(first_argmax(jnp.asarray(x))), np.argmax(x, -1))
