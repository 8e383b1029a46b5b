"""The fast encode path (tiktoken) gives the HF tokenizer's ids on samples of every shipped
dataset (all record types), with a tokenizer the size of the tiny preset."""
import numpy as np
import pytest

from gpt_jax.data import records, registry
from gpt_jax.tokenizer import Tokenizer, train_bpe

PER_SOURCE = 150
MAX_CHARS = 8_000  # per string: whole books would make this test minutes long
SLOW = {"chinese_poetry"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    # Shared with tests/test_data_builders.py within one session (same base temp dir).
    return tmp_path_factory.getbasetemp() / "shared_data_cache"


def _strings(rec: dict) -> list[str]:
    out = []
    for k, v in rec.items():
        if k in ("id", "source"):
            continue
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, list):
            out += [m["content"] if isinstance(m, dict) else m for m in v]
    return out


def _sample(name, data_dir, cache) -> list[str]:
    b = registry.prepare(name, data_dir=data_dir, cache_dir=cache)
    split = next(iter(b.info.splits))
    src = b.as_data_source()[split]
    idx = np.random.default_rng(0).permutation(len(src))[:PER_SOURCE]
    raws = src.__getitems__([int(i) for i in idx])
    return [s[:MAX_CHARS] for raw in raws for s in _strings(records.decode(b.RECORD_TYPE, raw))]


@pytest.fixture(scope="module")
def tok(data_dir, cache, tmp_path_factory):
    texts = _sample("tiny_shakespeare", data_dir, cache) + _sample("sharegpt_zh", data_dir, cache)
    texts += _sample("code_alpaca", data_dir, cache) + _sample("gsm8k", data_dir, cache)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_bpe(texts, vocab_size=8192).save(path)
    return Tokenizer.load(path)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in registry.BUILDERS]
)
def test_fast_path_matches_hf_on_source(name, tok, data_dir, cache):
    texts = _sample(name, data_dir, cache)
    assert texts
    fast = tok.encode_batch(texts)
    slow = [e.ids for e in tok.hf.encode_batch(texts, add_special_tokens=False)]
    mismatched = [i for i, (a, b) in enumerate(zip(fast, slow)) if a != b]
    assert not mismatched, f"{name}: {len(mismatched)} texts differ, e.g. {texts[mismatched[0]][:80]!r}"
    assert all(tok.decode(ids) == t for ids, t in zip(fast, texts))
