"""The tiny recipe on the shipped data (what `make run` runs): tokenizer -> pretrain -> sft -> reward.

python -m gpt_jax.main --config=experiments/configs/recipe_tiny.py --workdir=runs/tiny
Each stage's section is that stage's own tiny config, overridable as
--config.pretrain.train.total_steps=100.
"""
import ml_collections

from gpt_jax.recipe import load_experiment


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "recipe"
    config.stages = "tokenizer,pretrain,sft,reward"
    config.tokenizer = load_experiment("tokenizer_tiny")
    config.pretrain = load_experiment("pretrain_tiny")
    config.sft = load_experiment("sft_tiny")
    config.reward = load_experiment("reward_tiny")
    return config
