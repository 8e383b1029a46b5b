"""Constrained decoding (gpt_jax.structured + engine_constrained): every case of our suite
validates at temperature 1, mixed batches equal rows alone, forced tokens, end only where the
grammar accepts, bitmask unpacking against llguidance's numpy reference, clear errors."""
import re
import time

import jax
import jax.numpy as jnp
import llguidance.numpy as llg_np
import numpy as np
import pytest

from gpt_jax import sampling as S
from gpt_jax import structured
from gpt_jax.eval import structured_suite as suite
from gpt_jax.model import GPTConfig
from gpt_jax.structured import Constraint, ConstraintError
from helpers import random_params, small_tokenizer

CONFIG = GPTConfig(family="llama", vocab_size=320, max_seq_len=512, n_layers=2, d_model=32,
                   n_heads=4, n_kv_heads=2, init_std=0.3)
PERSON = suite.SCHEMAS["person"]


@pytest.fixture(scope="module")
def model():
    tok = small_tokenizer()
    return tok, random_params(CONFIG, seed=0)


def _sampling(tok, **kw):
    kw = {"temperature": 1.0, "max_new_tokens": 96, "seed": 3, **kw}
    return S.SamplingConfig(stop_ids=(tok.token_id("assistant_end"),), **kw)


def _text(tok, ids):
    return tok.decode([t for t in ids if not tok.is_special(t) and t < tok.vocab_size])


def test_every_suite_case_validates_at_temperature_one(model):
    tok, params = model
    assert len(suite.cases()) >= 50
    result = suite.run_suite(params, CONFIG, tok, tok.encode("Answer in JSON."), seeds=(0, 1, 2),
                             samples=4)
    bad = {n: r for n, r in result["cases"].items() if r["valid"] != r["total"]}
    assert not bad, bad
    assert result["valid_rate"] == 1.0 and result["finished_rate"] == 1.0
    free = suite.run_suite(params, CONFIG, tok, tok.encode("Answer in JSON."), seeds=(0,),
                           samples=4, constrained=False)
    assert free["valid_rate"] < 0.05  # the random model alone almost never writes a valid case


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mixed_batch_rows_equal_rows_alone(model, temperature):
    tok, params = model
    constraints = [Constraint.json_schema(PERSON), None, Constraint.regex(r"\d{3}-\d{4}"),
                   Constraint.json_schema(suite.SCHEMAS["array_ints"]), None,
                   Constraint.lark('start: "yes" | "no" | "maybe " NUM\nNUM: /[0-9]{2}/')]
    prompts = [tok.encode(t) for t in ["Hello world", "The quick brown fox", "12 34",
                                       "how are you", "A", "你好"]]
    sp = _sampling(tok, temperature=temperature, max_new_tokens=48)
    batch = S.generate(params, CONFIG, prompts, sp, tokenizer=tok, constraints=constraints)
    for i, (p, c) in enumerate(zip(prompts, constraints)):
        alone = S.generate(params, CONFIG, [p], sp, tokenizer=tok, constraints=[c], row_ids=[i])
        assert alone.row(0) == batch.row(i), i
        np.testing.assert_allclose(alone.logprobs[0], batch.logprobs[i], atol=1e-5)
    free = S.generate(params, CONFIG, [prompts[1]], sp, tokenizer=tok, row_ids=[1])
    assert free.row(0) == batch.row(1)  # an unconstrained row decodes as without constraints


def test_forced_tokens_are_inserted_unsampled(model):
    tok, params = model
    gen = S.generate(params, CONFIG, [tok.encode("hi")], _sampling(tok), tokenizer=tok,
                     constraints=[Constraint.json_schema(PERSON)])
    ids = gen.row(0)
    forced = gen.forced[0, : len(ids)]
    assert _text(tok, ids[: int(np.argmin(forced))]) == '{"name":"'  # the fixed prefix
    assert (gen.logprobs[0, : len(ids)][forced] == 0).all()
    assert (gen.logprobs[0, : len(ids)][~forced] < 0).all()
    assert ids[-1] == tok.token_id("assistant_end") and forced[-1]  # grammar complete -> end
    assert suite.is_valid("person", _text(tok, ids))


def test_stop_token_only_where_the_grammar_accepts(model):
    tok, params = model
    end = tok.token_id("assistant_end")

    def push_end(logits, state):  # the model "wants" to stop at every step
        return logits.at[:, end].add(1e4)

    for pattern in (r"\d{3}", r"[a-z]{2,4}", r"(ab)+c?"):
        gen = S.generate(params, CONFIG, [tok.encode("hi")] * 2, _sampling(tok), tokenizer=tok,
                         constraints=[Constraint.regex(pattern)] * 2, logit_processor=push_end)
        for i in range(2):
            ids = gen.row(i)
            assert ids[-1] == end and gen.finished[i]
            # it ends at the first token boundary where the text is a whole match, not before
            matches = [re.fullmatch(pattern, _text(tok, ids[:j])) is not None
                       for j in range(len(ids))]
            assert matches[-1] and not any(matches[:-1]), (pattern, _text(tok, ids))


def test_budget_cut_output_is_not_finished(model):
    tok, params = model
    gen = S.generate(params, CONFIG, [tok.encode("hi")], _sampling(tok, max_new_tokens=5),
                     tokenizer=tok, constraints=[Constraint.json_schema(PERSON)])
    assert not gen.finished[0] and gen.lengths[0] == 5


def test_bitmask_unpacks_like_llguidance_reference():
    rng = np.random.default_rng(0)
    bitmask = rng.integers(-2**31, 2**31, size=(3, 10), dtype=np.int64).astype(np.int32)
    logits = rng.normal(size=(3, 300)).astype(np.float32)
    expected = logits.copy()
    llg_np.apply_token_bitmask_inplace(expected, bitmask)
    got = np.asarray(jax.jit(structured.apply_bitmask)(jnp.asarray(logits), bitmask))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("constraint, reason", [
    (Constraint.json_schema({"type": "objekt"}), "objekt"),
    (Constraint.json_schema({"type": "array", "uniqueItems": True}), "uniqueItems"),
    (Constraint.regex("abc("), "unclosed group"),
    (Constraint.lark("start: foo\nfoo: bar"), "unknown name"),
])
def test_invalid_constraints_raise_with_the_reason(model, constraint, reason):
    tok, params = model
    with pytest.raises(ConstraintError, match=reason):
        S.generate(params, CONFIG, [tok.encode("hi")], _sampling(tok), tokenizer=tok,
                   constraints=[constraint])


def test_constructor_errors():
    with pytest.raises(ConstraintError, match="not JSON"):
        Constraint.json_schema("{not json")
    with pytest.raises(ConstraintError, match="kind"):
        Constraint("xml", "<a/>")


def test_slow_compile_times_out(model, monkeypatch):
    tok, _ = model
    lltok = structured.grammar_tokenizer(tok, CONFIG.vocab_size, [tok.token_id("assistant_end")])
    real = structured._build

    def slow(*a):
        time.sleep(1.0)
        return real(*a)

    monkeypatch.setattr(structured, "_build", slow)
    with pytest.raises(ConstraintError, match="did not compile within 0.2 s"):
        structured.compile_constraint(Constraint.regex(r"slow\d"), lltok, timeout_s=0.2)


def test_constraints_need_stop_ids_and_a_tokenizer(model):
    tok, params = model
    c = [Constraint.regex(r"\d")]
    with pytest.raises(ConstraintError, match="stop_ids"):
        S.generate(params, CONFIG, [tok.encode("hi")], S.SamplingConfig(), tokenizer=tok,
                   constraints=c)
    with pytest.raises(ConstraintError, match="tokenizer"):
        S.generate(params, CONFIG, [tok.encode("hi")], _sampling(tok), constraints=c)
