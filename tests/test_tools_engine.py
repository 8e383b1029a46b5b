"""Tools inside the decode engine: batched rows with/without calls == each row alone, exact inserted
tokens and tool_mask, error results, both schedules, per-row keys, stream == generate."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import engine_tools, sampling, streaming
from gpt_jax.model import GPT, GPTConfig
from gpt_jax.sampling import SamplingConfig
from gpt_jax.seq_utils import bucket
from gpt_jax.tokenizer import train_bpe
from gpt_jax.tools.calculator import calculate

TEXT = ("The quick brown fox jumps over the lazy dog. Numbers 12 34 56 78 and 23 + 45 = 68.\n"
        "What is 12*3? It is 36. 7*6 = 42, 2+3 = 5. Hello world, how are you today?\n")
CONFIG = GPTConfig(family="gpt2", vocab_size=300, max_seq_len=96, n_layers=2, d_model=32,
                   n_heads=4, init_std=0.3)
N = 24
FREE = -1


@pytest.fixture(scope="module")
def tok():
    return train_bpe([TEXT * 3], vocab_size=300, min_frequency=1)


@pytest.fixture(scope="module")
def model():
    shapes = jax.eval_shape(GPT(CONFIG).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        noise = rng.normal(0.0, CONFIG.init_std, leaf.shape).astype(np.float32)
        return noise + 1.0 if "scale" in jax.tree_util.keystr(path) else noise

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(shapes["params"]))


def forcing(logits, state):
    """Forces table[row, k] at the row's k-th output token (FREE: the model picks, never a tool
    marker, so rows only call the tool where a test says so)."""
    table, banned = state.extra
    b, v = logits.shape
    step = jnp.broadcast_to(state.step, (b,))
    want = jnp.take_along_axis(table, jnp.clip(step, 0, table.shape[1] - 1)[:, None], 1)[:, 0]
    free = jnp.where(banned[None], -1e9, logits)
    forced = jnp.where(jnp.arange(v)[None] == want[:, None], 0.0, -1e9)
    return jnp.where((want >= 0)[:, None], forced, free)


def _ids(tok):
    t = engine_tools.ToolIds.of(tok)
    call = lambda e: [t.call_start, *tok.encode(e), t.call_end]  # noqa: E731
    result = lambda r: [t.result_start, *tok.encode(r), t.result_end]  # noqa: E731
    return t, call, result


def _cases(tok):
    """(prompt, forced prefix per output index) for 8 rows; FREE entries let the model pick."""
    t, call, result = _ids(tok)
    base = tok.encode("What is 12*3?")
    two = call("2+3") + [FREE] * len(result("5")) + [FREE, FREE] + call("7*6")
    near_end = [FREE] * (N - 2 - len(call("12*3"))) + call("12*3")  # result cut by the budget
    return [
        (base, call("12*3")),                             # 0: a call, then free text
        (tok.encode("Hello world"), []),                  # 1: never calls
        (base + [t.call_start] + tok.encode("12*3"), [t.call_end]),  # 2: prompt ends in a call
        (base, call("12/0")),                             # 3: division by zero
        (base, [FREE] + call("1+")),                      # 4: syntax error
        (tok.encode("Numbers 12 34"), near_end),          # 5: result cut at max_new_tokens
        (base, two),                                      # 6: two calls
        (tok.encode("lazy dog"), [FREE, t.call_end]),     # 7: a call end with no call open
    ]


def _table(forced, b):
    table = np.full((b, N), FREE, np.int32)
    for i, f in enumerate(forced):
        table[i, : len(f)] = f
    return table


def _gen(params, tok, prompts, forced, s, **kw):
    banned = np.zeros(CONFIG.vocab_size, bool)
    banned[list(engine_tools.ToolIds.of(tok))] = True
    state = (jnp.asarray(_table(forced, bucket(len(prompts)))), jnp.asarray(banned))
    kw.setdefault("tool", calculate)
    return sampling.generate(params, CONFIG, prompts, s, logit_processor=forcing,
                             processor_state=state, tokenizer=tok, **kw)


GREEDY = SamplingConfig(temperature=0, max_new_tokens=N)


def test_batch_with_tool_calls_equals_each_row_alone(model, tok, monkeypatch):
    t, call, result = _ids(tok)
    cases = _cases(tok)
    prompts, forced = [c[0] for c in cases], [c[1] for c in cases]
    grows = []
    grow = engine_tools.grow_cache
    monkeypatch.setattr(engine_tools, "grow_cache", lambda c, e: grows.append(e) or grow(c, e))
    gen = _gen(model, tok, prompts, forced, GREEDY)
    assert gen.tool_mask.shape == gen.tokens.shape == (8, N)
    for i in range(8):
        alone = _gen(model, tok, [prompts[i]], [forced[i]], GREEDY)
        assert gen.row(i) == alone.row(0), f"row {i}"
        np.testing.assert_array_equal(gen.tool_mask[i], alone.tool_mask[0])
        np.testing.assert_allclose(gen.logprobs[i], alone.logprobs[0], atol=1e-4)
        assert gen.lengths[i] == alone.lengths[0] and gen.finished[i] == alone.finished[0]
    # Exactly the calculator's tokens were inserted, and tool_mask marks exactly them.
    expect = {0: (call("12*3"), "36"), 2: ([t.call_end], "36"), 3: (call("12/0"), None),
              4: ([gen.row(4)[0]] + call("1+"), "error: syntax error")}
    for i, (prefix, res) in expect.items():
        res = res or calculate("12/0")
        assert res.startswith("error") == (i in (3, 4))
        want = (prefix + result(res))[:N]  # a long error message is cut at max_new_tokens
        assert gen.row(i)[: len(want)] == want, i
        mask = ([False] * len(prefix) + [True] * len(result(res)) + [False] * N)[:N]
        assert gen.tool_mask[i].tolist() == mask, i
        assert (gen.logprobs[i][gen.tool_mask[i]] == 0).all()
    assert not gen.tool_mask[1].any() and gen.lengths[1] == N
    assert gen.row(5)[-2:] == result("36")[:2] and gen.tool_mask[5, -2:].all()  # cut at N
    assert gen.tool_mask[5].sum() == 2 and gen.lengths[5] == N
    row6 = gen.row(6)
    first = call("2+3") + result("5")
    assert row6[: len(first)] == first
    assert row6[len(first) + 2: len(first) + 2 + len(call("7*6")) + len(result("42"))] == call(
        "7*6") + result("42")
    assert gen.row(7)[2] == t.result_start and gen.tool_mask[7, 2:].all()  # cut at N
    assert tok.decode(gen.row(7)[3:]).startswith("error: no tool call")
    assert grows, "the cache never filled: the growth path went untested"
    # The other schedules give the same tokens.
    for schedule in ("all", 3):
        other = _gen(model, tok, prompts, forced, GREEDY, tool_schedule=schedule)
        np.testing.assert_array_equal(other.tokens, gen.tokens)
        np.testing.assert_array_equal(other.tool_mask, gen.tool_mask)


def test_rows_without_calls_match_generate_without_tool(model, tok):
    prompts = [tok.encode("Hello world"), tok.encode("The quick brown fox")]
    with_tool = _gen(model, tok, prompts, [[], []], GREEDY)
    banned = np.zeros(CONFIG.vocab_size, bool)
    banned[list(engine_tools.ToolIds.of(tok))] = True
    plain = sampling.generate(model, CONFIG, prompts, GREEDY, logit_processor=forcing,
                              processor_state=(jnp.asarray(_table([[], []], 2)),
                                               jnp.asarray(banned)))
    np.testing.assert_array_equal(with_tool.tokens, plain.tokens)
    assert plain.tool_mask is None and not with_tool.tool_mask.any()


def test_sampled_rows_with_tools_do_not_depend_on_the_batch(model, tok):
    cases = _cases(tok)
    prompts, forced = [c[0] for c in cases], [c[1] for c in cases]
    s = SamplingConfig(temperature=1.0, max_new_tokens=N, seed=5)
    gen = _gen(model, tok, prompts, forced, s)
    for i in (0, 1, 6):
        alone = _gen(model, tok, [prompts[i]], [forced[i]], s, row_ids=[i])
        assert gen.row(i) == alone.row(0), f"row {i}"
    assert len({tuple(gen.row(i)[-6:]) for i in range(8)}) > 1


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_stream_with_tool_equals_generate(model, tok, temperature):
    prompt, forced = _cases(tok)[6]
    s = SamplingConfig(temperature=temperature, max_new_tokens=N, seed=2)
    ref = _gen(model, tok, [prompt], [forced], s)
    banned = np.zeros(CONFIG.vocab_size, bool)
    banned[list(engine_tools.ToolIds.of(tok))] = True
    state = (jnp.asarray(_table([forced], 1)), jnp.asarray(banned))
    calls, pieces = [], []
    dconfig, dparams = sampling.unstack_layers(CONFIG, model)
    gen, text = streaming.stream(dparams, dconfig, prompt, s, tokenizer=tok, on_text=pieces.append,
                                logit_processor=forcing, processor_state=state, tool=calculate,
                                on_tool=lambda e, r: calls.append((e, r)))
    assert gen.row(0) == ref.row(0)
    np.testing.assert_array_equal(gen.tool_mask, ref.tool_mask)
    np.testing.assert_allclose(gen.logprobs, ref.logprobs, atol=1e-4)
    assert calls == [("2+3", "5"), ("7*6", "42")]
    assert "".join(pieces) == text and text.startswith("2+3 = 5") and "7*6 = 42" in text


def test_row_ids_make_plain_sampling_independent_of_the_batch(model, tok):
    s = SamplingConfig(temperature=1.0, max_new_tokens=12, seed=3)
    prompts = [tok.encode(w) for w in ("Hello", "The quick", "lazy dog", "Numbers 12", "What is",
                                       "fox jumps", "how are you", "world")]
    target, r = prompts[2], 17
    alone = sampling.generate(model, CONFIG, [target], s, row_ids=[r])
    for pos in (0, 5, 7):
        batch = [p for j, p in enumerate(prompts) if j != 2]
        batch.insert(pos, target)
        ids = [100 + j for j in range(8)]
        ids[pos] = r
        gen = sampling.generate(model, CONFIG, batch, s, row_ids=ids)
        assert gen.row(pos) == alone.row(0), pos
    # Default keys (row_ids=None) are today's batch-wide ones: different draws.
    assert sampling.generate(model, CONFIG, [target], s).row(0) != alone.row(0)


def test_bad_tool_usage_is_a_clear_error(model, tok):
    with pytest.raises(ValueError, match="tokenizer"):
        sampling.generate(model, CONFIG, [[5, 6]], GREEDY, tool=calculate)
    with pytest.raises(ValueError, match="schedule"):
        sampling.generate(model, CONFIG, [[5, 6]], GREEDY, tool=calculate, tokenizer=tok,
                          tool_schedule="sometimes")
    with pytest.raises(ValueError, match="schedule"):
        sampling.generate(model, CONFIG, [[5, 6]], GREEDY, tool=calculate, tokenizer=tok,
                          tool_schedule=-1)
    with pytest.raises(ValueError, match="row_ids"):
        sampling.generate(model, CONFIG, [[5, 6]], GREEDY, row_ids=[1, 2])


def test_a_raising_tool_becomes_an_error_result(tok):
    def boom(expr):
        raise RuntimeError("nope")

    assert engine_tools.run_tool(boom, "1+1") == "error: RuntimeError: nope"
    assert engine_tools.run_tool(lambda e: 3, "1+1").startswith("error: tool returned int")


def test_python_and_calculator_calls_share_a_batch(model, tok):
    """`toolbox`: a "python:" call runs in the sandbox, a plain one in the calculator, in one
    batch (the calls of paused rows run concurrently), each row equal to itself alone."""
    from gpt_jax.tools import toolbox
    from gpt_jax.tools.sandbox import run_python

    t, call, result = _ids(tok)
    box = toolbox(["calculator", "python"])
    base = tok.encode("What is 12*3?")
    code = "print(6*7)"
    cases = [(base, call(f"python:{code}")), (base, call("12*3")),
             (tok.encode("Hello world"), []), (base, call("python: 1/0"))]
    prompts, forced = [c[0] for c in cases], [c[1] for c in cases]
    gen = _gen(model, tok, prompts, forced, GREEDY, tool=box)
    for i in range(len(cases)):
        alone = _gen(model, tok, [prompts[i]], [forced[i]], GREEDY, tool=box)
        assert gen.row(i) == alone.row(0), f"row {i}"
    assert run_python(code).as_tool_result() == "42"
    for i, res in ((0, "42"), (1, "36"), (3, "error: ZeroDivisionError: division by zero")):
        want = (forced[i] + result(res))[:N]
        assert gen.row(i)[: len(want)] == want, i
    with pytest.raises(ValueError, match="expected a non-empty list"):
        toolbox(["shell"])
