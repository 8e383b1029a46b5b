"""Optimizer details: weight-decay mask, warmup + cosine schedule."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.model import GPT, GPTConfig
from gpt_jax.train.optim import decay_mask, learning_rate_schedule
from helpers import tiny_config


def test_decay_mask_excludes_norms_biases_embeddings():
    cfg = GPTConfig(family="gpt2", vocab_size=64, max_seq_len=8, n_layers=1, d_model=16, n_heads=2)
    params = nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(decay_mask(params))}
    decayed = sorted(k for k, v in flat.items() if v)
    assert decayed == ["blocks/attn/k", "blocks/attn/o", "blocks/attn/q", "blocks/attn/v",
                       "blocks/mlp/fc", "blocks/mlp/proj"]


def test_schedule_warmup_then_cosine_to_min():
    cfg = tiny_config().optim
    cfg.learning_rate, cfg.warmup_steps, cfg.min_lr_ratio = 1.0, 10, 0.1
    s = learning_rate_schedule(cfg, 110)
    np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)],
                               [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)



def _params(scan: bool, family: str = "llama"):
    cfg = GPTConfig(family=family, vocab_size=64, max_seq_len=8, n_layers=2, d_model=16,
                    n_heads=2, scan_layers=scan)
    return nn.unbox(GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])


def test_muon_takes_block_matrices_only():
    from optax.contrib import MuonDimensionNumbers

    from gpt_jax.train.optim import muon_dimensions

    for scan in (False, True):
        dims = muon_dimensions(_params(scan))
        flat = {"/".join(str(getattr(k, "key", k)) for k in path): v for path, v in
                jax.tree_util.tree_leaves_with_path(dims, is_leaf=lambda x: x is None or
                                                    isinstance(x, MuonDimensionNumbers))}
        muon = sorted(k.split("/", 1)[1] for k, v in flat.items() if v is not None)
        assert muon == sorted(f"{m}/{n}" for m, n in [("attn", "k"), ("attn", "o"), ("attn", "q"),
                                                       ("attn", "v"), ("mlp", "gate"),
                                                       ("mlp", "proj"), ("mlp", "up")]
                              * (1 if scan else 2))
        assert flat["wte"] is None and flat["lm_head"] is None
        assert flat["ln_f/scale"] is None
        prefix = "blocks" if scan else "block_0"
        assert flat[f"{prefix}/attn/o"] == MuonDimensionNumbers((-3, -2), (-1,))


def test_muon_step_orthogonalises_a_block_matrix_and_adam_steps_the_rest():
    """One Muon step (no decay, no clipping) moves a [in, out] MLP matrix by lr * 0.2 * sqrt(max
    dim) * (an orthogonal matrix with the gradient's singular vectors); scanned and unscanned
    stacks give the same update; the embedding gets (Nesterov) Adam's first step,
    lr * sign(g) * (1 + b1 / (1 + b1))."""
    from gpt_jax.train.optim import make_optimizer

    cfg = tiny_config().optim
    cfg.name, cfg.learning_rate, cfg.warmup_steps, cfg.weight_decay, cfg.grad_clip = (
        "muon", 0.01, 0, 0.0, 0.0)
    flat = _params(False)
    flat_grads = jax.tree.map(lambda x: jnp.asarray(
        np.random.default_rng(x.size).standard_normal(x.shape), x.dtype), flat)
    stacked = {k: v for k, v in flat_grads.items() if not k.startswith("block_")}
    stacked["blocks"] = jax.tree.map(lambda a, b: jnp.stack([a, b]), flat_grads["block_0"],
                                     flat_grads["block_1"])
    updates = {}
    for scan in (False, True):
        params, grads = (_params(True), stacked) if scan else (flat, flat_grads)
        tx, _ = make_optimizer(cfg, 10)
        upd, _ = tx.update(grads, tx.init(params), params)
        up = upd["blocks"]["mlp"]["up"][1] if scan else upd["block_1"]["mlp"]["up"]
        updates[scan] = np.asarray(up)
        wte_g, wte_u = np.asarray(grads["wte"]), np.asarray(upd["wte"])
        np.testing.assert_allclose(wte_u, -0.01 * np.sign(wte_g) * (1 + 0.9 / 1.9), rtol=1e-3,
                                   atol=1e-6)
    u = updates[False] / (-0.01 * 0.2 * np.sqrt(max(updates[False].shape)))
    s = np.linalg.svd(u, compute_uv=False)
    assert 0.5 < s.min() and s.max() < 1.3, s  # Newton-Schulz: singular values near 1, not exact
    np.testing.assert_allclose(updates[True], updates[False], rtol=1e-5, atol=1e-7)


def test_unknown_optimizer_name_is_an_error():
    import pytest

    from gpt_jax.train.optim import make_optimizer

    cfg = tiny_config().optim
    cfg.name = "lion"
    with pytest.raises(ValueError, match="optim.name='lion'"):
        make_optimizer(cfg, 10)


def test_muon_takes_lora_factors_as_matrices_of_their_weight():
    """A LoRA adapter's A [*in, r] reduces over its weight's input axes, B [r, *out] over the
    rank; the trained token rows (outside the blocks) step by AdamW."""
    from optax.contrib import MuonDimensionNumbers as D

    from gpt_jax import lora
    from gpt_jax.train.optim import muon_dimensions

    for scan in (False, True):
        params = _params(scan)
        adapter = lora.init_adapter(params, lora.LoRAConfig(rank=4, token_ids=(1, 2)),
                                    jax.random.key(0))
        dims = muon_dimensions({"base": params, "adapter": adapter})["adapter"]
        block = dims["blocks"] if scan else dims["block_1"]
        assert block["attn"]["q"]["A"] == D((-2,), (-1,))  # A [d, r]
        assert block["attn"]["q"]["B"] == D((-3,), (-2, -1))  # B [r, heads, head_dim]
        assert block["attn"]["o"]["A"] == D((-3, -2), (-1,))  # A [heads, head_dim, r]
        assert block["attn"]["o"]["B"] == D((-2,), (-1,))
        assert block["mlp"]["up"]["B"] == D((-2,), (-1,))
        assert dims["tokens"]["wte"] is None and dims["tokens"]["lm_head"] is None
