"""PPO's compiled step on random tiny GPTs: the first update starts exactly at the reference
(KL 0, ratios 1), on a data-parallel mesh too, and a toy reward (+1 per occurrence of one token)
rises within a couple of dozen PPO steps."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gpt_jax import sharding as shd
from gpt_jax.heads import RewardModel
from gpt_jax.model import GPT, GPTConfig
from gpt_jax.train.ppo import ppo_config, step_prompt_indices
from gpt_jax.seq_utils import fit_prompt
from gpt_jax.train.ppo_trainer import PPOTrainer
from helpers import tiny_config

TOKEN = 7
P, N = 8, 8


_TRAINERS = {}


def _setup(mesh_shape=(1, 1, 1), vocab=32, steps=20, **ppo):
    """(trainer, fresh state, reference); trainers are reused so each compiles once."""
    key = (mesh_shape, vocab, steps, tuple(sorted(ppo.items())))
    if key not in _TRAINERS:
        _TRAINERS[key] = _new_trainer(mesh_shape, vocab, steps, **ppo)
    trainer, model_config = _TRAINERS[key]
    dummy = jnp.zeros((1, 8), jnp.int32)
    policy = nn.unbox(GPT(model_config).init(jax.random.key(0), dummy)["params"])
    value = nn.unbox(RewardModel(model_config, per_token=True).init(
        jax.random.key(1), dummy)["params"])
    return trainer, trainer.init_state(policy, value), trainer.place_reference(policy)


def _new_trainer(mesh_shape, vocab, steps, **ppo):
    cfg = tiny_config(family="gpt2")
    cfg.model.vocab_size = vocab
    model_config = GPTConfig.from_config(cfg.model)
    pc = ppo_config(**{**dict(max_prompt_len=P, max_new_tokens=N, epochs=2, minibatches=2,
                              no_eos_penalty=0.0), **ppo})
    optim = ml_collections.ConfigDict(dict(cfg.optim.to_dict(), learning_rate=3e-3,
                                           warmup_steps=0, weight_decay=0.0))
    mesh = shd.make_mesh(mesh_shape)
    return PPOTrainer(model_config, pc, optim, steps, mesh, pad_id=0, stop_ids=()), model_config


def _prompts(rng, b, vocab=32):
    return [list(rng.integers(1, vocab, size=rng.integers(2, P + 1))) for _ in range(b)]


def _toy_scores(rollout):
    return ((rollout["tokens"][:, P:] == TOKEN) & rollout["response_mask"]).sum(1).astype(
        np.float32)


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (8, 1, 1)])
def test_first_update_starts_at_the_reference(mesh_shape):
    trainer, state, ref = _setup(mesh_shape)
    rng = np.random.default_rng(0)
    rollout, gen = trainer.rollout(state.params["policy"], _prompts(rng, 16), seed=0)
    # the rollout layout: prompt left-padded to P, then the response
    assert rollout["tokens"].shape == (16, P + N)
    assert (rollout["tokens"][:, P:] == gen.tokens).all()
    scores = rng.normal(size=16).astype(np.float32)
    state, m = trainer.step(state, ref, rollout, scores, 0.1, jax.random.key(0))
    m = jax.device_get(m)
    assert m["kl"] == 0.0 and m["non_score_reward"] == 0.0  # policy == reference, bitwise
    assert abs(m["first_ratio_mean"] - 1.0) < 1e-6
    assert m["first_approx_kl"] < 1e-9 and m["first_clip_frac"] == 0.0
    assert int(state.step) == 4  # epochs x minibatches optimizer updates
    # the policy moved: the next rollout has a positive KL to the reference
    rollout, _ = trainer.rollout(state.params["policy"], _prompts(rng, 16), seed=1)
    kl_rows = trainer.sequence_kl(state.params["policy"], ref, rollout)
    _, m2 = trainer.step(state, ref, rollout, scores, 0.1, jax.random.key(1))  # donates state
    assert float(m2["kl"]) > 0.0
    assert kl_rows.shape == (16,) and abs(kl_rows.mean() - float(m2["kl"])) < 1e-4


def test_a_non_finite_step_is_skipped():
    """A NaN score makes the loss non-finite: the step is flagged and params and optimizer
    state stay as they were (what the shared loop's streak rule counts on)."""
    trainer, state, ref = _setup()
    before = jax.device_get(state.params)
    rollout, _ = trainer.rollout(state.params["policy"], _prompts(np.random.default_rng(2), 16),
                                 seed=0)
    scores = np.zeros(16, np.float32)
    scores[3] = np.nan
    state, m = trainer.step(state, ref, rollout, scores, 0.1, jax.random.key(0))
    assert float(m["nonfinite"]) == 1.0 and not np.isfinite(float(m["loss"]))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(jax.device_get(state.params))):
        np.testing.assert_array_equal(a, b)
    state, m = trainer.step(state, ref, rollout, np.zeros(16, np.float32), 0.1, jax.random.key(0))
    assert float(m["nonfinite"]) == 0.0 and np.isfinite(float(m["loss"]))


def test_toy_reward_rises_within_a_few_dozen_steps():
    trainer, state, ref = _setup()  # the trainer of the test above: no new compile
    rng = np.random.default_rng(1)
    means = []
    for step in range(20):
        rollout, _ = trainer.rollout(state.params["policy"], _prompts(rng, 16), seed=step)
        scores = _toy_scores(rollout)
        means.append(scores.mean())
        state, _ = trainer.step(state, ref, rollout, scores, 0.02, jax.random.key(step))
    # uniform-ish start: ~N/32 occurrences per response; after 20 steps most tokens are TOKEN
    assert means[0] < 1.0, means
    assert np.mean(means[-3:]) > 4.0, means


def test_prompts_are_cut_to_the_prompt_length_keeping_the_first_token():
    assert fit_prompt([1, 2, 3], 5) == [1, 2, 3]
    assert fit_prompt([1, 2, 3, 4, 5, 6, 7], 4) == [1, 5, 6, 7]


def test_step_prompts_are_a_function_of_seed_and_step():
    a = step_prompt_indices(0, 5, 100, 8)
    assert (a == step_prompt_indices(0, 5, 100, 8)).all()
    assert len(set(a)) == 8
    assert not (a == step_prompt_indices(0, 6, 100, 8)).all()
    assert not (a == step_prompt_indices(1, 5, 100, 8)).all()


def test_context_overflow_is_rejected():
    with pytest.raises(ValueError, match="exceeds the model context"):
        _setup(max_new_tokens=40)


def test_tool_tokens_are_read_but_never_trained_on(monkeypatch):
    """A rollout whose reply holds tool-written tokens: they stay in `valid` (the policy attends
    to them) and are 0 in `response_mask` (no loss, KL or value on them)."""
    from gpt_jax.sampling import Generation
    from gpt_jax.train import ppo_trainer

    trainer, state, ref = _setup()
    tokens = np.array([[5, 6, 9, 9, 9, 7, 0, 0], [5, 7, 0, 0, 0, 0, 0, 0]], np.int32)
    tool_mask = np.zeros((2, N), bool)
    tool_mask[0, 2:5] = True  # three tokens the tool wrote
    fake = Generation(tokens, np.zeros((2, N), np.float32), np.array([True, True]),
                      np.array([6, 2]), tool_mask=tool_mask)
    seen = {}

    def fake_generate(*args, **kwargs):
        seen.update(kwargs)
        return fake

    monkeypatch.setattr(ppo_trainer, "generate", fake_generate)
    rollout, _ = trainer.rollout(state.params["policy"], [[1, 2], [3]], seed=0,
                                 tool=len, tokenizer="tok")
    assert seen["tool"] is len and seen["tokenizer"] == "tok"
    assert rollout["valid"][:, P:].tolist() == [[True] * 6 + [False] * 2, [True] * 2 + [False] * 6]
    assert rollout["response_mask"].tolist() == [
        [True, True, False, False, False, True, False, False], [True, True] + [False] * 6]
    kl = trainer.sequence_kl(state.params["policy"], ref, rollout)
    assert np.allclose(kl, 0.0, atol=1e-6)
