"""DPO / IPO (gpt_jax/train/dpo_core.py): the loss and implicit-reward stats against hand-computed
values; the compiled step starts at loss log 2 when the policy is the reference, skips masked
tokens, and learns a toy preference on a random tiny GPT."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt_jax.model import GPT, GPTConfig
from gpt_jax.train.dpo_core import DPOHyper, dpo_loss, make_dpo_step, sequence_logprobs
from gpt_jax.train.state import TrainState
from helpers import tiny_config

P, N, TOKEN = 8, 8, 7


def test_loss_by_hand():
    pol_c, pol_r = jnp.array([-5.0, -3.0]), jnp.array([-7.0, -2.0])
    ref_c, ref_r = jnp.array([-6.0, -3.0]), jnp.array([-6.0, -3.0])
    # h = (pol_c - ref_c) - (pol_r - ref_r) = [2, -1]
    loss, stats = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1)
    want = (math.log1p(math.exp(-0.2)) + math.log1p(math.exp(0.1))) / 2
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(stats["reward_accuracy"]) == 0.5  # row 1: chosen 0.0 < rejected 0.1
    assert float(stats["reward_margin"]) == pytest.approx((0.2 - 0.1) / 2, rel=1e-6)
    assert float(stats["reward_chosen"]) == pytest.approx(0.05, rel=1e-6)
    smooth, _ = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1, label_smoothing=0.1)
    want_s = (0.9 * math.log1p(math.exp(-0.2)) + 0.1 * math.log1p(math.exp(0.2))
              + 0.9 * math.log1p(math.exp(0.1)) + 0.1 * math.log1p(math.exp(-0.1))) / 2
    assert float(smooth) == pytest.approx(want_s, rel=1e-6)
    ipo, _ = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1, loss_type="ipo")
    assert float(ipo) == pytest.approx(((2 - 5) ** 2 + (-1 - 5) ** 2) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1, loss_type="hinge")


def _side(rng, responses):
    b = len(responses)
    tokens = np.zeros((b, P + N), np.int32)
    valid = np.zeros((b, P + N), bool)
    for i, r in enumerate(responses):
        prompt = rng.integers(1, 32, size=rng.integers(2, P + 1))
        tokens[i, P - len(prompt):P], valid[i, P - len(prompt):P] = prompt, True
        tokens[i, P:P + len(r)], valid[i, P:P + len(r)] = r, True
    mask = valid[:, P:].copy()
    return {"tokens": tokens, "valid": valid, "response_mask": mask}


def _pairs(rng, b):
    chosen = [[TOKEN] * int(rng.integers(3, N + 1)) for _ in range(b)]
    rejected = [list(rng.integers(8, 32, size=len(c))) for c in chosen]
    return _side(rng, chosen), _side(rng, rejected)


def _tiny_model(seed: int):
    """(config, params) of a random 2-layer GPT over 32 ids."""
    cfg = tiny_config(family="gpt2")
    cfg.model.vocab_size = 32
    model_config = GPTConfig.from_config(cfg.model)
    init = GPT(model_config).init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))
    return model_config, nn.unbox(init["params"])


def test_step_starts_at_log2_and_learns_a_toy_preference():
    model_config, params = _tiny_model(0)
    hp = DPOHyper(prompt_len=P, beta=0.5)
    tx = optax.adam(3e-3)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    step = jax.jit(make_dpo_step(model_config, tx, hp))
    ref_lp = jax.jit(lambda p, side: sequence_logprobs(GPT(model_config), p, side, hp))
    rng = np.random.default_rng(0)
    held_c, held_r = _pairs(np.random.default_rng(99), 16)

    def held_accuracy(p):
        margin = ((ref_lp(p, held_c) - ref_lp(params, held_c))
                  - (ref_lp(p, held_r) - ref_lp(params, held_r)))
        return float((margin > 0).mean())

    first = None
    for s in range(30):
        c, r = _pairs(rng, 8)
        batch = {"chosen": c, "rejected": r, "ref_chosen": ref_lp(params, c),
                 "ref_rejected": ref_lp(params, r)}
        state, m = step(state, batch, jax.random.key(s))
        first = first or m
        assert float(m["nonfinite"]) == 0.0
    assert float(first["loss"]) == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    # every margin is 0 up to float rounding (the step scores chosen and rejected as one batch)
    assert abs(float(first["reward_margin"])) < 1e-5
    assert float(m["loss"]) < 0.3 and float(m["reward_accuracy"]) == 1.0
    assert held_accuracy(state.params) == 1.0  # held-out pairs are ranked right too


def test_masked_tokens_do_not_count():
    model_config, params = _tiny_model(1)
    hp = DPOHyper(prompt_len=P)
    c, _ = _pairs(np.random.default_rng(3), 4)
    full = sequence_logprobs(GPT(model_config), params, c, hp)
    cut = dict(c, response_mask=c["response_mask"] & (np.arange(N) < 2)[None])
    part = sequence_logprobs(GPT(model_config), params, cut, hp)
    lp_first_two = sequence_logprobs(GPT(model_config), params, dict(
        c, response_mask=np.broadcast_to(np.arange(N) < 2, (4, N))), hp)
    np.testing.assert_allclose(part, lp_first_two, rtol=1e-6)
    assert np.all(np.asarray(full) < np.asarray(part))  # more (negative) terms in the full sum
