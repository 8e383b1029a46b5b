"""FeedME, tiny preset: the RM-best of 8 SFT samples for 256 arithmetic prompts, distilled into
the SFT model with the SFT loss, then evaluated like PPO (gold / RM reward and KL to SFT).

python -m gpt_jax.main --config=experiments/configs/feedme_tiny.py --workdir=runs/x
  (needs runs/x/{tokenizer,pretrain,sft,reward}; compares with runs/x/ppo when present)
"""
import ml_collections

from gpt_jax import configs
from gpt_jax.recipe import load_experiment
from gpt_jax.train.feedme import feedme_config


def get_config() -> ml_collections.ConfigDict:
    sft = load_experiment("sft_tiny")
    config = ml_collections.ConfigDict()
    config.stage = "feedme"
    config.parent = "sft"
    config.seed = 0
    config.model = sft.model
    config.mesh = configs.mesh_config()
    config.optim = configs.optim_config(learning_rate=1e-4, warmup_steps=5)
    config.train = configs.train_config(batch_size=8, seq_len=216, total_steps=20, log_every=10,
                                        eval_every=0, checkpoint_every=30)
    config.distributed = configs.distributed_config()
    configs.attach_data(config)
    config.tasks = sft.tasks
    config.feedme = feedme_config(n=4, train_prompts=128, heldout_prompts=64, eval_samples=2,
                                   max_prompt_len=88, max_new_tokens=128)
    return config
