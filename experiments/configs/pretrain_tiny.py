"""Pretraining, tiny preset: a 4-layer d=256 GPT-2-style model, a few minutes on 2 CPU cores.

python -m gpt_jax.main --config=experiments/configs/pretrain_tiny.py --workdir=runs/x
  (needs runs/x/tokenizer/tokenizer.json from tokenizer_tiny.py, or
   --config.train.data_source=synthetic for random tokens)
"""
import ml_collections

from gpt_jax import configs


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "pretrain"
    config.seed = 0
    config.model = configs.model_config(
        family="gpt2", vocab_size=8192, max_seq_len=256, n_layers=4, d_model=256, n_heads=4,
        scan_layers=False)  # unrolled: ~11% faster on CPU; scan pays off for deep models
    config.mesh = configs.mesh_config()
    config.optim = configs.optim_config(learning_rate=1e-3, warmup_steps=50)
    config.train = configs.train_config(batch_size=16, seq_len=256, total_steps=300,
                                        log_every=10, eval_every=100, eval_batches=8,
                                        checkpoint_every=100)
    config.distributed = configs.distributed_config()
    configs.attach_data(config)
    return config
