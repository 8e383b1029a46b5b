"""Model details beyond the HF references: the explicit KV-cache path and the parameter count."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax.model import GPT, GPTConfig, init_cache


def _model(family, scan):
    cfg = GPTConfig(family=family, vocab_size=97, max_seq_len=32, n_layers=2, d_model=32,
                    n_heads=4, n_kv_heads=2 if family == "llama" else 0, scan_layers=scan)
    params = nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    return cfg, params


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("scan", [True, False])
def test_cache_chunks_equal_full_forward(family, scan):
    cfg, params = _model(family, scan)
    model = GPT(cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 1, cfg.vocab_size)
    full = model.apply({"params": params}, tokens)
    cache = init_cache(cfg, 2, 16)
    assert cache["k"].shape == (cfg.n_layers, 2, cfg.kv_heads, 16, cfg.head_dim)
    outs = []
    for start, stop in [(0, 7), (7, 8), (8, 12)]:  # prefill, one decode step, another chunk
        logits, cache = model.apply({"params": params}, tokens[:, start:stop], cache=cache)
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)
    assert int(cache["index"]) == 12 and bool(cache["valid"][:, :12].all())


def test_left_padded_row_matches_its_unpadded_self():
    cfg, params = _model("llama", True)
    model = GPT(cfg)
    row = jnp.array([[5, 6, 7, 8]])
    alone = model.apply({"params": params}, row)[0, -1]
    padded = jnp.array([[0, 0, 5, 6, 7, 8]])
    valid = padded != 0
    positions = jnp.maximum(jnp.cumsum(valid, -1) - 1, 0)
    logits, _ = model.apply({"params": params}, padded, positions=positions,
                            attention_valid=valid, cache=init_cache(cfg, 1, 8))
    np.testing.assert_allclose(logits[0, -1], alone, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_num_params_is_exact(family):
    cfg, params = _model(family, True)
    assert cfg.num_params() == sum(x.size for x in jax.tree.leaves(params))
