"""Moderation, tiny preset: a harmful-request classifier on the pretrain_tiny trunk (HH-RLHF red-team
requests against English SFT instructions; gpt_jax/train/moderation.py).

python -m gpt_jax.main --config=experiments/configs/moderation_tiny.py --workdir=runs/x
  (needs runs/x/tokenizer and runs/x/pretrain from the earlier stages)
"""
import ml_collections

from gpt_jax import configs
from gpt_jax.recipe import load_experiment
from gpt_jax.train.moderation import moderation_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "moderation"
    config.parent = "pretrain"
    config.seed = 0
    config.model = load_experiment("pretrain_tiny").model  # must equal the parent's
    config.mesh = configs.mesh_config()
    config.optim = configs.optim_config(learning_rate=1e-3, warmup_steps=10, weight_decay=0.0)
    config.train = configs.train_config(batch_size=32, seq_len=64, total_steps=120, log_every=10,
                                        eval_every=60, eval_batches=4, checkpoint_every=60)
    config.distributed = configs.distributed_config()
    configs.attach_data(config)
    config.moderation = moderation_config()
    return config
