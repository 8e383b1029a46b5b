"""Token cache + grain mixture: windows come from the cache, shares follow the weights, batches
are a pure function of (seed, step), resume is exact, batches shard over the mesh."""
import json

import jax
import ml_collections
import numpy as np
import pytest

from gpt_jax.data import pipeline, token_cache
from gpt_jax.data.config import data_config, tokenizer_config
from gpt_jax.data import tokenizer_stage
from gpt_jax.tokenizer import Tokenizer, train_bpe

WEIGHTS = {"tiny_shakespeare": 0.6, "web_demo_en": 0.3, "nltk_en": 0.1}


@pytest.fixture(scope="module")
def tok(data_dir):
    text = (data_dir / "pretrain/tinyshakespeare/input.txt").read_text()[:200_000]
    return train_bpe([text[i : i + 2000] for i in range(0, len(text), 2000)], vocab_size=512)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    cfg = ml_collections.ConfigDict({"seed": 0, "data": data_config()})
    cfg.data.cache_dir = str(tmp_path_factory.getbasetemp() / "shared_data_cache")
    cfg.data.pretrain_weights = dict(WEIGHTS)
    return cfg


def _it(config, tok, seed=0, split="train", B=8, T=64):
    return pipeline.make_pretrain_iterator(config, tok, split, B, T, seed)


def test_token_cache_layout_and_reuse(config, tok, data_dir):
    kw = dict(data_dir=data_dir, cache_dir=config.data.cache_dir)
    shards = token_cache.load_or_build("tiny_shakespeare", "train", tok, **kw)
    assert shards.shards[0].dtype == np.uint16
    stream = np.concatenate(shards.shards)
    assert (stream == tok.eos_id).sum() == shards.n_docs == 38  # eos after every document
    assert tok.decode(stream[: np.argmax(stream == tok.eos_id)]).startswith("First Citizen:")
    meta = shards.path / "meta.json"
    mtime = meta.stat().st_mtime_ns
    again = token_cache.load_or_build("tiny_shakespeare", "train", tok, **kw)
    assert meta.stat().st_mtime_ns == mtime and again.n_tokens == shards.n_tokens  # reused
    # A damaged shard is detected and rebuilt.
    with open(shards.path / "00000.bin", "r+b") as f:
        f.truncate(100)
    rebuilt = token_cache.load_or_build("tiny_shakespeare", "train", tok, **kw)
    assert rebuilt.n_tokens == shards.n_tokens and np.array_equal(np.concatenate(rebuilt.shards), stream)


def test_small_shard_size_splits_stream(config, tok, data_dir, tmp_path):
    small = token_cache.load_or_build("web_demo_en", "heldout", tok, data_dir=data_dir,
                                      cache_dir=tmp_path, shard_tokens=10_000)
    whole = token_cache.load_or_build("web_demo_en", "heldout", tok, data_dir=data_dir,
                                      cache_dir=config.data.cache_dir)
    assert len(small.shards) > 1 and all(len(s) <= 10_000 for s in small.shards)
    assert np.array_equal(np.concatenate(small.shards), np.concatenate(whole.shards))


def test_batches_are_windows_of_the_cache(config, tok):
    it = _it(config, tok)
    batch = next(it)
    assert batch["tokens"].shape == (8, 65) and batch["tokens"].dtype == np.int32
    assert batch["source_ids"].shape == (8,)
    streams = {n: np.concatenate(token_cache.load_or_build(
        n, "train", tok, data_dir=None, cache_dir=config.data.cache_dir).shards) for n in WEIGHTS}
    for row, sid in zip(batch["tokens"], batch["source_ids"]):
        stream = streams[it.source_names[sid]]
        starts = np.flatnonzero(stream[: len(stream) - 64] == row[0])
        assert any(s % 64 == 0 and np.array_equal(stream[s : s + 65], row) for s in starts)


def test_mixture_shares_follow_weights(config, tok):
    it = _it(config, tok, B=16)
    ids = np.concatenate([next(it)["source_ids"] for _ in range(300)])
    shares = np.bincount(ids, minlength=3) / len(ids)
    for name, share in zip(it.source_names, shares):
        assert abs(share - WEIGHTS[name]) < 0.02, (name, share)
    assert sum(it.tokens_by_source.values()) == 300 * 16 * 64
    assert set(it.source_token_counts) == set(WEIGHTS) and min(it.source_token_counts.values()) > 0


def test_deterministic_in_seed_and_step(config, tok):
    a, b, c = _it(config, tok), _it(config, tok), _it(config, tok, seed=1)
    for _ in range(5):
        x, y, z = next(a), next(b), next(c)
        assert np.array_equal(x["tokens"], y["tokens"])
    assert not np.array_equal(x["tokens"], z["tokens"])


def test_resume_gives_exactly_the_same_batches(config, tok):
    it = _it(config, tok)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # JSON-serializable
    expected = [next(it) for _ in range(4)]
    resumed = _it(config, tok)
    resumed.set_state(state)
    for e in expected:
        got = next(resumed)
        assert np.array_equal(got["tokens"], e["tokens"])
        assert np.array_equal(got["source_ids"], e["source_ids"])
    assert resumed.get_state() == it.get_state()
    with pytest.raises(ValueError, match="seed"):
        _it(config, tok, seed=5).set_state(state)


def test_bytes_per_token_is_the_weighted_average(config, tok):
    it = _it(config, tok, split="heldout")
    per = {n: token_cache.load_or_build(n, "heldout", tok, data_dir=None,
                                        cache_dir=config.data.cache_dir).bytes_per_token
           for n in WEIGHTS}
    assert it.bytes_per_token == pytest.approx(sum(WEIGHTS[n] * per[n] for n in WEIGHTS))
    assert 1.0 < it.bytes_per_token < 4.0


def test_shard_batch_over_the_mesh(config, tok):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None))
    batch = pipeline.shard_batch(next(_it(config, tok)), sharding)
    assert batch["tokens"].shape == (8, 65)
    assert len(batch["tokens"].sharding.device_set) == 8
    assert batch["tokens"].addressable_shards[0].data.shape == (1, 65)
    assert batch["source_ids"].sharding.spec == jax.sharding.PartitionSpec("data")


def test_tokenizer_stage_writes_and_reuses(tmp_path, config):
    cfg = ml_collections.ConfigDict({"stage": "tokenizer", "seed": 0, "data": data_config(),
                                     "tokenizer": tokenizer_config(vocab_size=600)})
    cfg.data.cache_dir = config.data.cache_dir
    cfg.tokenizer.source_weights = {"tiny_shakespeare": 0.7, "web_demo_en": 0.3}
    cfg.tokenizer.eval_sources_en = "tiny_shakespeare"
    cfg.tokenizer.eval_sources_zh = "web_demo_en"  # keeps the test off the 25 s poetry build
    cfg.tokenizer.train_chars = 200_000
    cfg.tokenizer.eval_chars = 50_000
    summary = tokenizer_stage.run(cfg, str(tmp_path))
    tok = Tokenizer.load(tmp_path / "tokenizer" / "tokenizer.json")
    assert summary["vocab_size"] == tok.vocab_size == 600 and summary["tokenizer_hash"] == tok.hash
    assert summary["train_chars"] == 200_000 and summary["fast_path_exact"]
    assert 1.5 < summary["bytes_per_token_en"] < 4.0 and summary["train_seconds"] >= 0
    assert (tmp_path / "tokenizer" / "report.md").is_file()
    assert tokenizer_stage.run(cfg, str(tmp_path)) == summary  # reused, not retrained
