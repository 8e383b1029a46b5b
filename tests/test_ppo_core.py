"""PPO math against hand-computed values."""
import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.seq_utils import last_valid_index
from gpt_jax.train import ppo_core as P

MASK = jnp.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_gae_matches_hand_computation_with_padding():
    rewards = jnp.array([[0.1, -0.2, 1.0], [0.2, 0.5, 9.9]])
    values = jnp.array([[0.5, 0.4, 0.3], [0.1, 0.2, 7.0]])
    adv, ret = P.gae(rewards, values, MASK, gamma=1.0, lam=0.95)
    # row 0: deltas 0.0, -0.3, 0.7; A2 = 0.7, A1 = -0.3 + .95 * .7, A0 = .95 * A1
    # row 1: the padded step is terminal: deltas 0.3, 0.3; A1 = 0.3, A0 = 0.3 + .95 * .3
    np.testing.assert_allclose(adv, [[0.34675, 0.365, 0.7], [0.585, 0.3, 0.0]], atol=1e-6)
    np.testing.assert_allclose(ret, [[0.84675, 0.765, 1.0], [0.685, 0.5, 0.0]], atol=1e-6)


def test_gae_with_gamma_below_one():
    adv, _ = P.gae(jnp.array([[0.0, 1.0]]), jnp.array([[0.0, 0.0]]), jnp.ones((1, 2)),
                   gamma=0.9, lam=0.5)
    np.testing.assert_allclose(adv, [[0.45, 1.0]], atol=1e-6)  # A0 = 0 + 0.9*0.5*1.0


def test_rewards_put_the_score_on_the_last_token_and_penalise_no_eos():
    logp = jnp.array([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = jnp.array([[-1.5, -2.0, -2.0], [-1.0, -2.0, 0.0]])
    rewards, kl = P.per_token_rewards(jnp.array([2.0, 1.0]), logp, ref, MASK, beta=0.1,
                                      finished=jnp.array([True, False]), no_eos_penalty=0.5)
    np.testing.assert_allclose(kl, [[0.5, 0.0, -1.0], [0.0, 1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(rewards, [[-0.05, 0.0, 2.1], [0.0, 0.4, 0.0]], atol=1e-6)
    np.testing.assert_array_equal(last_valid_index(MASK), [2, 1])


def test_first_minibatch_has_ratio_one_and_zero_kl():
    logp = jnp.array([[-1.0, -2.0, -0.5], [-0.3, -0.7, -5.0]])
    adv = jnp.array([[1.0, -2.0, 0.5], [0.25, 3.0, 100.0]])
    loss, stats = P.policy_loss(logp, logp, adv, MASK)
    np.testing.assert_allclose(loss, -(1.0 - 2.0 + 0.5 + 0.25 + 3.0) / 5, atol=1e-6)
    assert float(stats["approx_kl"]) == 0.0 and float(stats["ratio_mean"]) == 1.0
    assert float(stats["clip_frac"]) == 0.0


def test_clipping_stops_the_gradient_only_where_it_should():
    old = jnp.zeros((1, 2))
    new = jnp.log(jnp.array([[1.5, 1.5]]))  # ratio 1.5, beyond 1 + 0.2
    adv = jnp.array([[1.0, -1.0]])
    grad = jax.grad(lambda lp: P.policy_loss(lp, old, adv, jnp.ones((1, 2)))[0])(new)
    # positive advantage: clipped, no gradient; negative: pessimistic unclipped term, gradient
    np.testing.assert_allclose(grad, [[0.0, 0.5 * 1.5]], atol=1e-6)
    assert float(P.policy_loss(new, old, adv, jnp.ones((1, 2)))[1]["clip_frac"]) == 0.5


def test_clipped_value_loss():
    loss, stats = P.value_loss(jnp.array([[1.0]]), jnp.array([[0.5]]), jnp.array([[2.0]]),
                               jnp.ones((1, 1)), clip=0.2)
    np.testing.assert_allclose(loss, 0.5 * (0.7 - 2.0) ** 2, atol=1e-6)  # the clipped term wins
    assert float(stats["value_clip_frac"]) == 1.0


def test_whiten_and_explained_variance():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    w = P.whiten(x, MASK)
    valid = np.asarray(w)[np.asarray(MASK) > 0]
    np.testing.assert_allclose([valid.mean(), valid.std()], [0.0, 1.0], atol=1e-5)
    assert float(w[1, 2]) == 0.0
    assert float(P.explained_variance(x, x, MASK)) == 1.0
    assert float(P.explained_variance(jnp.zeros_like(x), x, MASK)) < 0.01


def test_entropy_of_uniform_and_peaked():
    logits = jnp.stack([jnp.zeros((2, 8)), jnp.full((2, 8), -1e9).at[:, 0].set(0.0)])
    np.testing.assert_allclose(P.entropy(logits[:1], jnp.ones((1, 2))), np.log(8), atol=1e-5)
    np.testing.assert_allclose(P.entropy(logits[1:], jnp.ones((1, 2))), 0.0, atol=1e-5)


def test_adaptive_kl_controller():
    beta = P.update_kl_coef(0.1, kl=12.0, n_steps=256, target=6.0, horizon=10_000)
    np.testing.assert_allclose(beta, 0.1 * (1 + 0.2 * 256 / 10_000), rtol=1e-6)  # error clipped
    beta = P.update_kl_coef(0.1, kl=5.7, n_steps=100, target=6.0, horizon=1_000)
    np.testing.assert_allclose(beta, 0.1 * (1 - 0.05 * 0.1), rtol=1e-6)
