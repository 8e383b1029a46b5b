"""Inference engine: KV-cache decoding == full recompute, sampling filters, seeds, stops, scoring."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import sampling, scoring, streaming
from gpt_jax.model import GPT, GPTConfig
from gpt_jax.sampling import SamplingConfig
from gpt_jax.tokenizer import train_bpe

VOCAB = 300
TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
        "Hello world, hello there; how are you today? Numbers 12 34 56 78 and more words.\n")
CONFIGS = {
    "gpt2": GPTConfig(family="gpt2", vocab_size=VOCAB, max_seq_len=64, n_layers=2, d_model=32,
                      n_heads=4, init_std=0.3),
    "llama_gqa": GPTConfig(family="llama", vocab_size=VOCAB, max_seq_len=64, n_layers=2,
                           d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, init_std=0.3),
}
PROMPTS = [[5, 17, 42], list(range(20, 31)), [7, 8, 9, 10, 250, 3, 99]]


def make_model(name, seed=0):
    """Random params drawn with numpy (compiling GPT.init costs ~10 s on these CPUs)."""
    config = CONFIGS[name]
    shapes = jax.eval_shape(GPT(config).init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(0.0, config.init_std, leaf.shape).astype(np.float32)
        return noise + 1.0 if "scale" in jax.tree_util.keystr(path) else noise

    return config, jax.tree_util.tree_map_with_path(draw, nn.unbox(shapes["params"]))


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    return make_model(request.param)


@pytest.fixture(scope="module")
def gpt2():
    return make_model("gpt2", seed=1)


@pytest.fixture(scope="module")
def tok():
    t = train_bpe([TEXT * 3], vocab_size=VOCAB, min_frequency=1)
    assert t.vocab_size == VOCAB
    return t


def full_logits(config, params, rows):
    """Plain forward (no cache) of each row, right-padded to max_seq_len: [B, max_seq_len, V]."""
    tokens = np.zeros((len(rows), config.max_seq_len), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    fwd = jax.jit(lambda p, t: GPT(config).apply({"params": p}, t))
    return np.asarray(fwd(params, tokens))


def test_prefill_and_decode_step_match_full_forward(model):
    config, params = model
    rows = [[3, 4, 5, 6, 7], [9, 10]]
    cache = sampling.init_cache(config, 2, 16)
    assert cache["layers"][0]["k"].shape == (2, config.kv_heads, 16, config.head_dim)
    one = sampling.init_cache(config, 1, 16)["layers"][0]["k"]  # batch 1: slots minor
    assert one.shape == (config.kv_heads, config.head_dim, 16)
    tokens = np.array([[3, 4, 5, 6, 7], [0, 0, 0, 9, 10]], np.int32)
    valid = tokens != 0
    last, cache = sampling.prefill(params, config, tokens, cache, valid)
    ref = full_logits(config, params, [r + [11, 12] for r in rows])
    np.testing.assert_allclose(last, ref[[0, 1], [4, 1]], atol=1e-4)
    for step, nxt in enumerate([11, 12]):
        pos = np.array([5 + step, 2 + step], np.int32)
        logits, cache = sampling.decode_step(params, config, jnp.full((2,), nxt, jnp.int32), cache,
                                             pos)
        np.testing.assert_allclose(logits, ref[[0, 1], [5 + step, 2 + step]], atol=1e-4)


def test_greedy_cache_equals_full_recompute_mixed_lengths(model):
    config, params = model
    n = 16
    gen = sampling.generate(params, config, PROMPTS, SamplingConfig(temperature=0, max_new_tokens=n))
    assert gen.tokens.shape == (3, n) and gen.lengths.tolist() == [n] * 3
    assert not gen.finished.any()
    fwd = jax.jit(lambda p, t: GPT(config).apply({"params": p}, t))
    for i, prompt in enumerate(PROMPTS):
        seq = list(prompt)
        for _ in range(n):  # argmax of a full recompute of the whole prefix at every step
            padded = np.zeros((1, config.max_seq_len), np.int32)
            padded[0, : len(seq)] = seq
            seq.append(int(np.argmax(fwd(params, padded)[0, len(seq) - 1])))
        assert gen.row(i) == seq[len(prompt):], f"row {i}"
        alone = sampling.generate(params, config, [prompt], SamplingConfig(temperature=0,
                                                                           max_new_tokens=n))
        assert alone.row(0) == seq[len(prompt):], f"row {i} alone (batch-1 cache layout)"
    # Greedy log-probs are the model's log-probs of the chosen tokens.
    lp, mask = scoring.logprobs(params, config, PROMPTS, [gen.row(i) for i in range(3)])
    assert mask.all()
    np.testing.assert_allclose(gen.logprobs, lp, atol=1e-4)


def _check_each_token(config, params, gen, check):
    rows = [p + gen.row(i) for i, p in enumerate(PROMPTS)]
    logits = full_logits(config, params, rows)
    for i, p in enumerate(PROMPTS):
        for j, token in enumerate(gen.row(i)):
            check(logits[i, len(p) + j - 1], token)


def test_top_k_never_leaves_the_top_k(gpt2):
    config, params = gpt2
    s = SamplingConfig(temperature=2.0, top_k=3, max_new_tokens=16, seed=3)
    gen = sampling.generate(params, config, PROMPTS, s)
    not_argmax = []

    def check(logits, token):
        top = np.argsort(-logits)[:3]
        assert token in top, (token, top)
        not_argmax.append(token != top[0])

    _check_each_token(config, params, gen, check)
    assert any(not_argmax), "sampling never left the argmax: test is vacuous"


def test_top_p_never_leaves_the_nucleus(gpt2):
    config, params = gpt2
    s = SamplingConfig(temperature=1.5, top_p=0.6, max_new_tokens=16, seed=4)
    gen = sampling.generate(params, config, PROMPTS, s)
    sizes = []

    def check(logits, token):
        probs = np.exp(jax.nn.log_softmax(logits / 1.5))
        ahead = probs[probs > probs[token]].sum()  # mass of strictly more probable tokens
        assert ahead < 0.6 + 1e-5, (token, ahead)
        sizes.append((np.cumsum(np.sort(probs)[::-1]) < 0.6).sum() + 1)

    _check_each_token(config, params, gen, check)
    assert max(sizes) > 1, "nucleus always a single token: test is vacuous"


def test_same_seed_same_tokens_and_logprobs_match_scoring(gpt2):
    config, params = gpt2
    s = SamplingConfig(temperature=0.7, max_new_tokens=16, seed=11)
    a = sampling.generate(params, config, PROMPTS, s)
    b = sampling.generate(params, config, PROMPTS, s)
    c = sampling.generate(params, config, PROMPTS, dataclasses.replace(s, seed=12))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    # Reported log-probs are at the sampling temperature, as scoring computes them.
    lp, _ = scoring.logprobs(params, config, PROMPTS, [a.row(i) for i in range(3)], temperature=0.7)
    np.testing.assert_allclose(a.logprobs, lp, atol=1e-4)


def test_stop_ids_truncate_and_mark_finished(gpt2):
    config, params = gpt2
    free = sampling.generate(params, config, PROMPTS, SamplingConfig(temperature=0, max_new_tokens=16))
    stop = free.row(0)[3]
    gen = sampling.generate(params, config, PROMPTS,
                            SamplingConfig(temperature=0, max_new_tokens=16, stop_ids=(stop,)))
    for i in range(3):
        row = free.row(i)
        end = row.index(stop) + 1 if stop in row else 16
        assert gen.lengths[i] == end and gen.finished[i] == (stop in row)
        assert gen.row(i) == row[:end]
        assert (gen.tokens[i, end:] == 0).all() and (gen.logprobs[i, end:] == 0).all()
    assert gen.lengths[0] == free.row(0).index(stop) + 1 <= 4


def test_logit_processor_sees_step_and_extra_state(gpt2):
    config, params = gpt2

    def force(logits, state):  # forces token (offset + step) at every step
        target = (state.extra + state.step) % logits.shape[-1]
        return jnp.where(jnp.arange(logits.shape[-1]) == target, 0.0, -1e9) + 0 * logits

    gen = sampling.generate(params, config, PROMPTS, SamplingConfig(max_new_tokens=6, seed=0),
                            logit_processor=force, processor_state=jnp.int32(40))
    assert gen.tokens.tolist() == [list(range(40, 46))] * 3
    np.testing.assert_allclose(gen.logprobs, 0.0, atol=1e-6)


def test_logprobs_equal_plain_forward(model):
    config, params = model
    prompts, completions = PROMPTS, [[1, 2, 3, 4], [5], [60, 70, 80]]
    lp, mask = scoring.logprobs(params, config, prompts, completions)
    assert lp.shape == (3, 4) and mask.sum(1).tolist() == [4, 1, 3]
    fwd = jax.jit(lambda p, t: jax.nn.log_softmax(GPT(config).apply({"params": p}, t), -1))
    for i, (p, c) in enumerate(zip(prompts, completions)):  # each row alone, unpadded
        logp = np.asarray(fwd(params, np.asarray(p + c)[None])[0])
        want = [logp[len(p) - 1 + j, t] for j, t in enumerate(c)]
        np.testing.assert_allclose(lp[i, : len(c)], want, atol=1e-5, rtol=0)
        assert (lp[i, len(c):] == 0).all()


def test_context_limit_is_an_error(gpt2):
    config, params = gpt2
    with pytest.raises(ValueError, match="exceeds the model context"):
        sampling.generate(params, config, [[1] * 60], SamplingConfig(max_new_tokens=8))


def test_stream_matches_generate_and_stop_strings(gpt2, tok):
    config, params = gpt2
    prompt = tok.encode("Hello world, how")
    s = SamplingConfig(temperature=0, max_new_tokens=16)
    ref = sampling.generate(params, config, [prompt], s)
    dconfig, dparams = sampling.unstack_layers(config, params)
    pieces = []
    gen, text = streaming.stream(dparams, dconfig, prompt, s, tokenizer=tok, on_text=pieces.append)
    assert gen.row(0) == ref.row(0) and "".join(pieces) == text == tok.decode(ref.row(0))
    # A stop string taken from the middle of the reply: both paths cut there.
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert len(stop) == 3
    s2 = dataclasses.replace(s, stop_strings=(stop,))
    cut = sampling.generate(params, config, [prompt], s2, tokenizer=tok)
    cut_text = tok.decode(cut.row(0))
    assert cut.finished[0] and stop in cut_text
    assert stop not in tok.decode(cut.row(0)[:-1])
    pieces = []
    gen2, text2 = streaming.stream(dparams, dconfig, prompt, s2, tokenizer=tok, on_text=pieces.append)
    assert gen2.row(0) == cut.row(0) and gen2.finished[0]
    assert "".join(pieces) == text2 == text[: text.find(stop)]


def test_prompt_lengths_pad_to_powers_of_two_then_multiples_of_32():
    from gpt_jax.seq_utils import length_bucket

    assert [length_bucket(n) for n in (1, 8, 9, 33, 64, 65, 96, 97, 200)] == \
        [8, 8, 16, 64, 64, 96, 96, 128, 224]


def test_equal_chunks_cover_every_row_in_one_batch_size():
    from gpt_jax.seq_utils import equal_chunks

    parts = equal_chunks(200, 32)
    assert [(p.start, p.stop) for p in parts[:2]] == [(0, 29), (29, 58)] and len(parts) == 7
    assert [i for p in parts for i in range(200)[p]] == list(range(200))
    assert {p.stop - p.start for p in parts[:-1]} == {29} and parts[-1].stop - parts[-1].start == 26
    assert equal_chunks(0, 32) == [] and equal_chunks(5, 32) == [slice(0, 5)]
