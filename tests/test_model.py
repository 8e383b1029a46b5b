"""Model details beyond the HF references: cached decoding through the model's pieces, and the
parameter count."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import sampling
from gpt_jax.model import GPT, GPTConfig


def _model(family, scan):
    cfg = GPTConfig(family=family, vocab_size=97, max_seq_len=32, n_layers=2, d_model=32,
                    n_heads=4, n_kv_heads=2 if family == "llama" else 0, scan_layers=scan)
    params = nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    return cfg, params


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("scan", [True, False])
def test_cache_chunks_equal_full_forward(family, scan):
    """The decoder's cache path (sampling: the model's embed/Block/Norm/lm_logits, one layer at a
    time) fed in chunks equals one full `GPT.apply`, scanned or unscanned params."""
    cfg, params = _model(family, scan)
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 12), 1, cfg.vocab_size))
    full = GPT(cfg).apply({"params": params}, tokens)
    cache = sampling.init_cache(cfg, 2, 16)
    outs = []
    last, cache = sampling.prefill(params, cfg, tokens[:, :7], cache)  # prefill
    outs.append(last[:, None])
    logits, cache = sampling.decode_step(params, cfg, tokens[:, 7], cache,
                                         np.full((2,), 7, np.int32))  # one decode step
    outs.append(logits[:, None])
    last, cache = sampling.prefill(params, cfg, tokens[:, 8:12], cache)  # another chunk
    outs.append(last[:, None])
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full[:, [6, 7, 11]], atol=1e-5)
    assert int(cache["index"]) == 12 and bool(cache["valid"][:, :12].all())


def test_left_padded_row_matches_its_unpadded_self():
    cfg, params = _model("llama", True)
    row = jnp.array([[5, 6, 7, 8]])
    alone = GPT(cfg).apply({"params": params}, row)[0, -1]
    padded = jnp.array([[0, 0, 5, 6, 7, 8]])
    last, _ = sampling.prefill(params, cfg, padded, sampling.init_cache(cfg, 1, 8), padded != 0)
    np.testing.assert_allclose(last[0], alone, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_num_params_is_exact(family):
    cfg, params = _model(family, True)
    assert cfg.num_params() == sum(x.size for x in jax.tree.leaves(params))


def test_fused_attention_equals_einsum_attention():
    """GPTConfig.attention="fused" (jax.nn.dot_product_attention, what "auto" picks on a GPU)
    gives the einsum path's logits and gradients (grouped-query heads); packed segments keep the
    einsum path."""
    import dataclasses

    from test_sampling import make_model

    cfg, params = make_model("llama_gqa")
    fused = dataclasses.replace(cfg, attention="fused")
    tokens = np.asarray(jax.random.randint(jax.random.key(2), (2, 16), 1, cfg.vocab_size))

    def loss(p, c):
        return GPT(c).apply({"params": p}, tokens).std()

    np.testing.assert_allclose(GPT(fused).apply({"params": params}, tokens),
                               GPT(cfg).apply({"params": params}, tokens), atol=1e-4)
    g_fused, g_ref = jax.grad(loss)(params, fused), jax.grad(loss)(params, cfg)
    for a, b in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, atol=1e-4)
    segments = np.array([[1] * 8 + [2] * 8] * 2)
    np.testing.assert_allclose(GPT(fused).apply({"params": params}, tokens, segment_ids=segments),
                               GPT(cfg).apply({"params": params}, tokens, segment_ids=segments))
    with pytest.raises(ValueError, match="model.attention"):
        GPTConfig(attention="flash")
