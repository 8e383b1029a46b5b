"""GPT-3 175B (96 layers, d=12288, 96 heads, T=2048): an AOT plan, not something to train here.

XLA_FLAGS are set by --simulate_devices before jax starts:
  python -m gpt_jax.main --config=experiments/configs/gpt3_175b.py --compile_only \
      --simulate_devices=64
Mesh: fsdp=8 x tensor=8 (tensor parallel inside an 8-GPU node, FSDP across nodes); 8 microbatches
of one sequence per device keep activations at ~34 GiB; measured total ~65 GiB per device.
"""
import ml_collections

from gpt_jax import configs


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "pretrain"
    config.seed = 0
    config.model = configs.model_config(
        family="gpt2", vocab_size=50304, max_seq_len=2048, n_layers=96, d_model=12288,
        n_heads=96, dtype="bfloat16", param_dtype="float32", remat_policy="full")
    config.mesh = configs.mesh_config(data=1, fsdp=8, tensor=8)
    config.optim = configs.optim_config(learning_rate=6e-5, warmup_steps=375)
    config.train = configs.train_config(batch_size=64, seq_len=2048, grad_accum_steps=8,
                                        total_steps=100_000)
    config.distributed = configs.distributed_config()
    configs.attach_data(config)
    return config
