"""Small configs shared by the core tests (random tokens; no tokenizer or data needed)."""
import ml_collections

from gpt_jax import configs


def tiny_config(family="llama", total_steps=3, **train) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "pretrain"
    config.seed = 0
    config.model = configs.model_config(
        family=family, vocab_size=256, max_seq_len=32, n_layers=2, d_model=64, n_heads=8,
        n_kv_heads=4 if family == "llama" else 0, d_ff=128)
    config.mesh = configs.mesh_config(1, 1, 1)
    config.optim = configs.optim_config(learning_rate=3e-3, warmup_steps=2)
    config.train = configs.train_config(
        batch_size=8, seq_len=16, total_steps=total_steps, log_every=1, eval_every=0,
        eval_batches=2, checkpoint_every=0, data_source="synthetic", progress_bar=False,
        tensorboard=False, peak_flops=1e11)
    config.train.update(train)
    config.distributed = configs.distributed_config()
    return config
