"""PPO acceptance, tiny preset: ppo_tiny.py on seeds 0, 1, 2 against the same SFT and reward
models; passes when the worst PPO seed's held-out gold reward beats the best SFT seed's.

python -m gpt_jax.main --config=experiments/configs/ppo_seeds_tiny.py --workdir=runs/tiny
  (after `make run`; writes runs/tiny/ppo_seed{0,1,2}/ and runs/tiny/ppo_seeds/summary.json)
"""
import ml_collections

from gpt_jax.recipe import load_experiment


def get_config() -> ml_collections.ConfigDict:
    config = load_experiment("ppo_tiny")
    config.stage = "ppo_seeds"
    config.ppo_seeds = ml_collections.ConfigDict({"seeds": [0, 1, 2]})
    return config
