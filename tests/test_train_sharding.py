"""The sharded train_step: same losses on every mesh as on one device, params sharded per RULES."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gpt_jax import sharding as shd
from gpt_jax.train.pretrain import build
from gpt_jax.train.state import create_train_state
from gpt_jax.train.synthetic import SyntheticTokens
from helpers import tiny_config

MESHES = [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2)]


def _losses(config, mesh, steps=3):
    built = build(config, mesh)
    state, _ = create_train_state(built.init_params, built.tx, mesh, jax.random.key(config.seed))
    data = SyntheticTokens(config.train.batch_size, config.train.seq_len,
                           config.model.vocab_size, seed=0)
    losses = []
    for _ in range(steps):
        batch = jax.device_put(next(data), built.batch_sharding)
        state, metrics = built.train_step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    return np.array(losses), state


@pytest.fixture(scope="module")
def reference():
    config = tiny_config()
    return _losses(config, shd.make_mesh((1, 1, 1), jax.devices()[:1]))[0]


@pytest.mark.parametrize("shape", MESHES)
def test_losses_match_single_device(shape, reference):
    losses, state = _losses(tiny_config(), shd.make_mesh(shape))
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
    assert losses[-1] < losses[0]  # it is actually learning
    q = state.params["blocks"]["attn"]["q"]  # [layers, embed, heads, head_dim]
    k = state.params["blocks"]["attn"]["k"]  # 4 kv heads: not divisible by tensor=8
    wte = state.params["wte"]  # [vocab, embed]
    data, fsdp, tensor = shape
    assert q.sharding.spec == P(None, "fsdp" if fsdp > 1 else None,
                                "tensor" if tensor > 1 else None, None)
    expected_k_heads = "tensor" if 1 < tensor <= 4 else None
    assert k.sharding.spec == P(None, "fsdp" if fsdp > 1 else None, expected_k_heads, None)
    assert wte.sharding.spec == P("tensor" if tensor > 1 else None, "fsdp" if fsdp > 1 else None)
    mu = state.opt_state[1][0].mu["blocks"]["attn"]["q"]
    assert mu.sharding == q.sharding
    n_shards = fsdp * tensor
    assert q.addressable_shards[0].data.size == q.size // n_shards


def test_logical_to_spec_fallbacks():
    mesh = shd.make_mesh((2, 2, 2))
    assert shd.logical_to_spec(("act_batch", "act_embed"), (8, 64), mesh) == P(("data", "fsdp"), None)
    assert shd.logical_to_spec(("act_batch", "act_embed"), (2, 64), mesh) == P("data", None)
    assert shd.logical_to_spec(("kv_heads", "embed"), (3, 64), mesh) == P(None, "fsdp")
    with pytest.raises(KeyError, match="no_such_axis"):
        shd.logical_to_spec(("no_such_axis",), (8,), mesh)


def test_mesh_rest_axis():
    assert dict(shd.make_mesh((2, -1, 1)).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match="needs 16 devices"):
        shd.make_mesh((2, 8, 1))


def test_grad_accumulation_matches_full_batch():
    mesh = shd.make_mesh((2, 2, 2))
    full, s1 = _losses(tiny_config(), mesh)
    accum, s2 = _losses(tiny_config(grad_accum_steps=2), mesh)
    np.testing.assert_allclose(accum, full, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 s1.params, s2.params)


def test_muon_losses_match_single_device_on_a_2x2x2_mesh():
    """Muon's Newton-Schulz runs on sharded matrices (and its partitioned state holds empty
    MaskedNodes, which keep no sharding): the losses equal one device's."""
    config = tiny_config()
    config.optim.name = "muon"
    one, _ = _losses(config, shd.make_mesh((1, 1, 1), jax.devices()[:1]), steps=4)
    eight, state = _losses(config, shd.make_mesh((2, 2, 2)), steps=4)
    np.testing.assert_allclose(eight, one, rtol=1e-5)
    assert eight[-1] < eight[0]
    q = state.params["blocks"]["attn"]["q"]
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)
