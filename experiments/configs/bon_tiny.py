"""Best-of-N, tiny preset: 16 samples per held-out arithmetic prompt from the SFT model, the
RM-best of N for N in 1..16, gold reward and KL per N.

python -m gpt_jax.main --config=experiments/configs/bon_tiny.py --workdir=runs/x
  (needs runs/x/{tokenizer,sft,reward})
"""
import ml_collections

from gpt_jax import configs
from gpt_jax.recipe import load_experiment
from gpt_jax.train.bon import bon_config


def get_config() -> ml_collections.ConfigDict:
    reward = load_experiment("reward_tiny")
    config = ml_collections.ConfigDict()
    config.stage = "bon"
    config.parent = "sft"  # the policy sampled from
    config.seed = 0
    config.model = reward.model
    config.mesh = configs.mesh_config()
    config.optim = configs.optim_config()  # unused (the sampler shares PPO's engine)
    config.tasks = reward.tasks
    config.data = reward.data
    config.bon = bon_config(n_values=[1, 2, 4, 8, 16], n_max=16, heldout_prompts=64,
                            max_prompt_len=88, max_new_tokens=128)
    return config
