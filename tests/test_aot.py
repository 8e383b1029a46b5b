"""Compile-only planning: the sharded program compiles from abstract inputs and FSDP divides
the per-device state memory."""
from gpt_jax.aot import GIB, compile_plan
from gpt_jax.model import GPTConfig
from helpers import tiny_config


def _plan(data, fsdp, tensor):
    config = tiny_config(family="gpt2")
    config.model.update({"d_model": 128, "n_heads": 8, "d_ff": 512, "n_layers": 2})
    config.mesh.update({"data": data, "fsdp": fsdp, "tensor": tensor})
    return compile_plan(config)


def test_fsdp_divides_state_memory():
    single, fsdp = _plan(1, 1, 1), _plan(1, 8, 1)
    n = GPTConfig.from_config(tiny_config(family="gpt2").model).num_params()
    assert single["devices"] == 1 and fsdp["devices"] == 8
    state_bytes = single["per_device_memory"]["arguments_gib"] * GIB
    assert state_bytes > 3 * 4 * single["num_params"] * 0.99  # params + Adam mu + nu, float32
    assert n < single["num_params"]  # the plan used the overridden (bigger) model
    ratio = single["per_device_memory"]["arguments_gib"] / fsdp["per_device_memory"]["arguments_gib"]
    assert 6.0 < ratio <= 8.0, ratio  # everything but tiny vectors is split 8 ways
    assert fsdp["per_device_memory"]["total_gib"] > 0
