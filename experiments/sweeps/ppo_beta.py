"""PPO's KL penalty coefficient (InstructGPT's beta): how far the policy may move from SFT.

python -m gpt_jax.sweep --config=experiments/configs/ppo_tiny.py \
    --sweep=experiments/sweeps/ppo_beta.py --workdir=runs/sweep_ppo_beta --parent=runs/tiny \
    --metrics=ppo.gold_reward,ppo.rm_reward,ppo.kl,sft.gold_reward
"""
from gpt_jax.sweep import grid


def get_sweep():
    return grid({"config.ppo.kl_coef": [0.01, 0.02, 0.05, 0.1]})
