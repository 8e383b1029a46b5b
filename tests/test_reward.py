"""Reward model: InstructGPT's K-wise loss by hand, the head reads the end token whatever the
padding, and an easy synthetic preference is learned to > 90% held-out accuracy."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import sharding as shd
from gpt_jax.heads import RewardModel, pair_mask, ranking_loss, score
from gpt_jax.model import GPTConfig
from gpt_jax.train.pretrain import build
from gpt_jax.train.reward import pairwise_accuracy, rm_loss_fn
from gpt_jax.train.state import create_train_state

from helpers import tiny_config


def _nls(x):  # -log sigmoid(x)
    return math.log1p(math.exp(-x))


def test_ranking_loss_k3_matches_hand_computation():
    r = np.array([[2.0, 0.5, -1.0], [0.3, 1.2, 0.0]], np.float32)
    groups = np.array([[0, 1, 2], [0, 1, 2]], np.int32)
    loss, aux = ranking_loss(jnp.asarray(r), jnp.asarray(groups))
    p0 = (_nls(2.0 - 0.5) + _nls(2.0 + 1.0) + _nls(0.5 + 1.0)) / 3
    p1 = (_nls(0.3 - 1.2) + _nls(0.3 - 0.0) + _nls(1.2 - 0.0)) / 3
    assert float(loss) == pytest.approx((p0 + p1) / 2, rel=1e-6)
    assert float(aux["num_pairs"]) == 6 and float(aux["num_tokens"]) == 2
    assert float(aux["accuracy"]) == pytest.approx(5 / 6)  # prompt 1 orders (0, 1) wrongly


def test_ranking_loss_masks_absent_and_tied_responses():
    r = jnp.asarray([[1.0, 0.0, 5.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    # prompt 0: K=2 (third absent); prompt 1: responses 1 and 2 tied; prompt 2: no pairs at all.
    groups = jnp.asarray([[0, 1, -1], [0, 1, 1], [0, -1, -1]])
    loss, aux = ranking_loss(r, groups)
    p0 = _nls(1.0)
    p1 = (_nls(-1.0) + _nls(-2.0)) / 2
    assert float(loss) == pytest.approx((p0 + p1) / 2, rel=1e-6)
    assert float(aux["num_tokens"]) == 2 and float(aux["num_pairs"]) == 3
    assert pair_mask(groups)[1].tolist() == [[False, True, True], [False, False, False],
                                            [False, False, False]]


@pytest.fixture(scope="module")
def rm():
    cfg = GPTConfig(family="gpt2", vocab_size=64, max_seq_len=32, n_layers=2, d_model=32, n_heads=4)
    params = RewardModel(cfg).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    import flax.linen as nn
    return cfg, nn.unbox(params)


def test_head_reads_the_end_token_not_padding(rm):
    cfg, params = rm
    rng = np.random.default_rng(0)
    real = rng.integers(3, 64, size=(3, 10)).astype(np.int32)
    lengths = np.array([10, 6, 3], np.int32)
    fn = jax.jit(score, static_argnums=1)

    def right_padded(fill):
        t = fill.copy()
        for i, n in enumerate(lengths):
            t[i, :n] = real[i, :n]
        return t

    a = fn(params, cfg, right_padded(np.zeros((3, 16), np.int32)), lengths)
    b = fn(params, cfg, right_padded(rng.integers(3, 64, size=(3, 16)).astype(np.int32)), lengths)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # padding content is never read
    # Each row scores like the unpadded row alone (end token = last real token) ...
    for i, n in enumerate(lengths):
        alone = fn(params, cfg, real[i:i + 1, :n], None)
        np.testing.assert_allclose(a[i], alone[0], rtol=1e-5, atol=1e-6)
    # ... and like the same row left-padded.
    left = np.zeros((3, 16), np.int32)
    valid = np.zeros((3, 16), bool)
    for i, n in enumerate(lengths):
        left[i, 16 - n:], valid[i, 16 - n:] = real[i, :n], True
    c = jax.jit(lambda p, t, v: score(p, cfg, t, valid=v))(params, left, valid)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
    # Reading the last slot instead (a padding position) gives a different value.
    wrong = fn(params, cfg, right_padded(np.zeros((3, 16), np.int32)), np.full(3, 16))
    assert not np.allclose(a[1:], wrong[1:], atol=1e-4)


def _synthetic_batch(rng, p, t):
    """Preferred responses use tokens 10-39, dispreferred 40-69 (an easy, learnable rule)."""
    tokens = np.zeros((p, 2, t), np.int32)
    lengths = rng.integers(t // 2, t + 1, size=(p, 2))
    for i in range(p):
        for j, (lo, hi) in enumerate(((10, 40), (40, 70))):
            tokens[i, j, :lengths[i, j]] = rng.integers(lo, hi, size=lengths[i, j])
    return {"tokens": tokens, "eos_index": (lengths - 1).astype(np.int32),
            "groups": np.tile(np.array([0, 1], np.int32), (p, 1))}


@pytest.mark.slow  # ~15 s of CPU (200 steps)
def test_easy_synthetic_preference_is_learned():
    config = tiny_config(family="gpt2", total_steps=200, batch_size=8, seq_len=12)
    config.model.vocab_size = 128
    config.optim.learning_rate = 1e-3
    mesh = shd.mesh_from_config(config.mesh)
    built = build(config, mesh, rm_loss_fn, model_cls=RewardModel)
    state, _ = create_train_state(built.init_params, built.tx, mesh, jax.random.key(0))
    rng = np.random.default_rng(0)
    for _ in range(200):
        batch = jax.device_put(_synthetic_batch(rng, 8, 12), built.batch_sharding)
        state, metrics = built.train_step(state, batch, jax.random.key(1))
    held = _synthetic_batch(np.random.default_rng(99), 64, 12)
    toks = held["tokens"].reshape(128, 12)
    valid = np.arange(12)[None] <= held["eos_index"].reshape(128)[:, None]
    r = np.asarray(score(state.params, built.model_config, toks, valid=valid)).reshape(64, 2)
    acc = pairwise_accuracy(r, [[1.0, 0.0]] * 64, (held["eos_index"] + 1).tolist())
    assert acc["pairs"] == 64
    assert acc["accuracy"] > 0.9, acc


def test_pairwise_accuracy_counts_ties_as_half():
    out = pairwise_accuracy([[1.0, 1.0, 0.0]], [[3.0, 2.0, 2.0]], [[5, 1, 5]])
    # pairs (0,1), (0,2) (1,2 tied in truth: skipped); scores: tie, right; lengths: right, tie.
    assert out == {"accuracy": 0.75, "length_baseline": 0.75, "pairs": 2}
