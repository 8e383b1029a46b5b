"""DPO, tiny preset: the SFT model trained on the labeler's rankings of SFT samples (the reward
stage's comparisons.jsonl: the pairs the reward model learns from), beta 0.1. Not in `make run`
(its time budget); run it on a finished tiny workdir:

python -m gpt_jax.main --config=experiments/configs/dpo_tiny.py --workdir=runs/tiny
  (needs runs/x/{tokenizer,sft,reward}; --config.dpo.loss_type=ipo for IPO)
"""
import ml_collections

from gpt_jax import configs
from gpt_jax.recipe import load_experiment
from gpt_jax.train.dpo import dpo_config


def get_config() -> ml_collections.ConfigDict:
    reward = load_experiment("reward_tiny")
    config = ml_collections.ConfigDict()
    config.stage = "dpo"
    config.parent = "sft"
    config.seed = 0
    config.model = reward.model  # the SFT model's
    config.mesh = configs.mesh_config()
    config.optim = configs.optim_config(learning_rate=1e-5, warmup_steps=5, weight_decay=0.0)
    # batch_size = preference pairs per step
    config.train = configs.train_config(batch_size=16, seq_len=216, total_steps=60, log_every=10,
                                        eval_every=20, checkpoint_every=20)
    config.distributed = configs.distributed_config()
    configs.attach_data(config)
    config.tasks = reward.tasks
    config.dpo = dpo_config(beta=0.1, max_prompt_len=88, max_new_tokens=128)
    return config
