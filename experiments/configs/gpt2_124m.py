"""GPT-2 124M on one GPU (bf16 compute, f32 params): the "small" scale.

python -m gpt_jax.main --config=experiments/configs/gpt2_124m.py --workdir=runs/small
Global batch 64 x 1024 tokens (grad accumulation 4 x 16); vocab padded to 50304 (a multiple
of 128) so the tied embedding/logits matmul tiles cleanly.
"""
import ml_collections

from gpt_jax import configs


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "pretrain"
    config.seed = 0
    config.model = configs.model_config(
        family="gpt2", vocab_size=50304, max_seq_len=1024, n_layers=12, d_model=768,
        n_heads=12, dtype="bfloat16", param_dtype="float32",
        # recompute all but matmul outputs in the backward pass: 170,104 tokens/s against
        # 160,839 storing them, on one H200 (docs/benchmarks.md, "GPU check")
        remat_policy="dots")
    config.mesh = configs.mesh_config()
    config.optim = configs.optim_config(learning_rate=6e-4, warmup_steps=700)
    config.train = configs.train_config(batch_size=64, seq_len=1024, grad_accum_steps=4,
                                        total_steps=20_000, log_every=50, eval_every=1000,
                                        checkpoint_every=1000)
    config.distributed = configs.distributed_config()
    configs.attach_data(config)
    return config
