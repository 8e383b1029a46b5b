"""GRPO (gpt_jax/train/grpo_core.py, grpo_step.py): group advantages, k3 KL and the loss against
hand-computed values; the compiled step starts at ratio 1, skips tool-written tokens, counts
dropped groups, and raises a toy reward on a random tiny GPT."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt_jax.model import GPT, GPTConfig
from gpt_jax.train import grpo_core as G
from gpt_jax.train.grpo_step import GRPOHyper, make_grpo_step
from gpt_jax.train.state import TrainState
from test_ppo import N, P, TOKEN, _prompts, _setup


def test_group_advantages_by_hand():
    r = jnp.array([1.0, 0, 0, 1, 1, 1, 1, 1, 2, 0, 0, 0])
    adv, kept = G.group_advantages(r, 4)
    np.testing.assert_allclose(adv, [.5, -.5, -.5, .5, 0, 0, 0, 0, 1.5, -.5, -.5, -.5])
    assert kept.tolist() == [True] * 4 + [False] * 4 + [True] * 4
    adv, _ = G.group_advantages(r, 4, scale_by_std=True)
    s3 = np.sqrt(0.75)  # population std of (2, 0, 0, 0)
    np.testing.assert_allclose(adv, [1, -1, -1, 1, 0, 0, 0, 0, 1.5 / s3, -.5 / s3, -.5 / s3,
                                     -.5 / s3], rtol=1e-5)


def test_k3_kl_by_hand():
    logp, ref = jnp.array([-1.0, -2.0, -0.5]), jnp.array([-2.0, -2.0, -0.25])
    want = [np.exp(-1) + 1 - 1, 0.0, np.exp(0.25) - 0.25 - 1]
    np.testing.assert_allclose(G.k3_kl(logp, ref), want, rtol=1e-6)
    assert float(G.k3_kl(logp, ref).min()) >= 0.0


def test_loss_by_hand():
    logp = jnp.array([[-1.0, -2.0], [-0.5, -3.0]])
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    adv = jnp.array([1.0, -2.0])
    k3 = np.exp(-1) + 1 - 1  # ref = logp - 1 everywhere
    # ratio 1: per token -A + 0.1 * k3; row 0 has two tokens, row 1 one (its second is masked)
    row0, row1 = -1 + 0.1 * k3, 2 + 0.1 * k3
    loss, stats = G.grpo_loss(logp, logp, logp - 1, adv, mask, kl_coef=0.1)
    np.testing.assert_allclose(loss, (row0 + row1) / 2, rtol=1e-6)
    assert float(stats["ratio_mean"]) == 1.0 and float(stats["clip_frac"]) == 0.0
    np.testing.assert_allclose(stats["kl"], k3, rtol=1e-6)
    loss, _ = G.grpo_loss(logp, logp, logp - 1, adv, mask, kl_coef=0.1, aggregate="token_mean")
    np.testing.assert_allclose(loss, (2 * row0 + row1) / 3, rtol=1e-6)
    # clipping: ratio 1.5 with A = 1 counts as 1.2; ratio 0.5 with A = -2 as 0.8 * 2
    old = logp - jnp.log(jnp.array([[1.5, 1.5], [0.5, 0.5]]))
    loss, stats = G.grpo_loss(logp, old, logp, adv, mask)
    np.testing.assert_allclose(loss, (-1.2 + 2 * 0.8) / 2, rtol=1e-6)
    np.testing.assert_allclose(stats["clip_frac"], 1.0)
    with pytest.raises(ValueError, match="aggregate"):
        G.grpo_loss(logp, logp, logp, adv, mask, aggregate="mean")


def _policy_state(model_config, tx):
    policy = nn.unbox(GPT(model_config).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))[
        "params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=policy, opt_state=tx.init(policy)), policy


def _toy_rewards(rollout, mask):
    return ((rollout["tokens"][:, P:] == TOKEN) & mask).sum(1).astype(np.float32)


def test_first_update_at_ratio_one_and_tool_tokens_skipped():
    trainer, _, _ = _setup()
    cfg = trainer.model_config
    tx = optax.adam(3e-3)
    state, ref = _policy_state(cfg, tx)
    hp = GRPOHyper(prompt_len=P, group_size=4, epochs=2, minibatches=2, kl_coef=0.1)
    step = jax.jit(make_grpo_step(cfg, tx, hp))
    prompts = [p for p in _prompts(np.random.default_rng(0), 4) for _ in range(4)]
    rollout, _ = trainer.rollout(state.params, prompts, seed=0)
    rewards = _toy_rewards(rollout, rollout["response_mask"])
    rewards[4:8] = 1.0  # one group with equal rewards: dropped
    new, m = step(state, ref, rollout, jnp.asarray(rewards), jax.random.key(0))
    np.testing.assert_allclose(m["first_ratio_mean"], 1.0, atol=1e-5)
    assert float(m["first_clip_frac"]) == 0.0 and float(m["nonfinite"]) == 0.0
    assert int(m["dropped_groups"]) >= 1 and int(new.step) == 4
    # tool-written tokens are not the policy's: masking all but the first token of every reply
    # leaves the same loss as a rollout whose replies have only that first token in the mask
    tool = np.zeros_like(rollout["response_mask"])
    tool[:, 1:] = True
    one = dict(rollout, response_mask=rollout["response_mask"] & ~tool)
    _, a = step(state, ref, dict(rollout, tool_mask=tool), jnp.asarray(rewards), jax.random.key(1))
    _, b = step(state, ref, one, jnp.asarray(rewards), jax.random.key(1))
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
    np.testing.assert_allclose(a["response_length"], 1.0)
    with pytest.raises(ValueError, match="group_size"):
        step(state, ref, jax.tree.map(lambda x: x[:6], rollout), jnp.asarray(rewards[:6]),
             jax.random.key(0))


def test_toy_reward_rises():
    trainer, _, _ = _setup()
    cfg: GPTConfig = trainer.model_config
    tx = optax.adam(1e-2)
    state, ref = _policy_state(cfg, tx)
    hp = GRPOHyper(prompt_len=P, group_size=8, epochs=1, minibatches=1)
    step = jax.jit(make_grpo_step(cfg, tx, hp))
    rng = np.random.default_rng(0)
    means = []
    for s in range(12):
        prompts = [p for p in _prompts(rng, 4) for _ in range(8)]
        rollout, _ = trainer.rollout(state.params, prompts, seed=s)
        rewards = _toy_rewards(rollout, rollout["response_mask"])
        means.append(float(rewards.mean()))
        state, m = step(state, ref, rollout, jnp.asarray(rewards), jax.random.key(s))
        assert float(m["nonfinite"]) == 0.0
    assert np.mean(means[-3:]) > np.mean(means[:3]) + 1.0, means  # of N = 8 tokens per reply
