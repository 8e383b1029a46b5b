"""The same guarantees on a GPU: cached decoding == full recompute, a train step == the CPU's, and
bfloat16 compute close to float32. Skipped unless JAX sees a GPU, which needs
`JAX_PLATFORMS=cuda,cpu` (conftest defaults to the CPU): `benchmarks/gpu_check.sh` runs them.

Float32 matmuls run at "highest" precision here: by default a GPU may round them to TF32, and then
two computations of the same logits (cache vs recompute, GPU vs CPU) differ by more than the
tolerances below, which are the CPU tests' own.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import tiny_config
import test_sampling
from test_sampling import CONFIGS, full_logits, make_model

from gpt_jax import sharding as shd
from gpt_jax.model import GPT
from gpt_jax.train.pretrain import build
from gpt_jax.train.state import create_train_state
from gpt_jax.train.synthetic import SyntheticTokens


def _gpu():
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


GPU = _gpu()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(GPU is None, reason="no GPU visible (JAX_PLATFORMS=cuda,cpu)")]


@pytest.fixture(autouse=True)
def on_gpu_highest_precision():
    with jax.default_device(GPU), jax.default_matmul_precision("highest"):
        yield


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_decoding_equals_full_recompute_on_gpu(name):
    config, params = make_model(name)
    params = jax.device_put(params, GPU)
    assert jax.tree.leaves(params)[0].devices() == {GPU}
    test_sampling.test_greedy_cache_equals_full_recompute_mixed_lengths((config, params))


def _losses(device, steps=4):
    config = tiny_config(total_steps=steps)
    mesh = shd.make_mesh((1, 1, 1), [device])
    built = build(config, mesh)
    state = create_train_state(built.init_params, built.tx, mesh, jax.random.key(0))[0]
    data = SyntheticTokens(config.train.batch_size, config.train.seq_len, config.model.vocab_size)
    losses = []
    for _ in range(steps):
        state, metrics = built.train_step(state, jax.device_put(next(data), built.batch_sharding),
                                          jax.random.key(1))
        losses.append(float(metrics["loss"]))
    return losses


def test_train_steps_on_gpu_match_cpu():
    with jax.default_device(jax.devices("cpu")[0]):
        cpu = _losses(jax.devices("cpu")[0])
    gpu = _losses(GPU)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4)
    assert gpu[-1] < gpu[0]


def test_bfloat16_fused_attention_stays_close_to_float32_einsum():
    """bf16 compute with the default attention (on a GPU: the fused cuDNN kernel) against the
    float32 einsum path."""
    config, params = make_model("llama_gqa")
    config = dataclasses.replace(config, attention="xla")
    tokens = np.random.default_rng(0).integers(1, config.vocab_size, (4, config.max_seq_len))
    f32 = full_logits(config, params, tokens.tolist())
    bf16_config = dataclasses.replace(config, dtype="bfloat16", attention="auto")
    bf16 = np.asarray(jax.jit(lambda p, t: GPT(bf16_config).apply({"params": p}, t))(
        params, jnp.asarray(tokens, jnp.int32)), np.float32)
    rel_rms = np.sqrt(np.mean((bf16 - f32) ** 2) / np.mean(f32**2))
    agree = (bf16.argmax(-1) == f32.argmax(-1)).mean()
    print(f"bf16 vs f32 logits: relative rms {rel_rms:.4f}, argmax agreement {agree:.3f}")
    assert rel_rms < 0.05 and agree > 0.9, (rel_rms, agree)
