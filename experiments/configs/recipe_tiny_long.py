"""The tiny recipe with twice the pretraining: 2,000 steps of 16 x 128 tokens (4.1M tokens, 3.3M
of them drills) instead of `make run`'s 1,000. Everything else is recipe_tiny.py (Muon, drills
4/5 of the pretraining tokens, SFT 960 steps). About twice the pretraining time of `make run`.
(Its measured figures in docs/arithmetic.md were taken with SFT 300 steps, before make run's SFT
went from 240 to 480 and then 960.)

Why it exists: on drills alone the column method climbs from 0.13 to 0.72 between 1.3M and 2M
drill tokens with Muon and keeps improving after (docs/arithmetic.md, "How fast drills are
learned"); this preset shows what the same model does with more of them than `make run` buys.

python -m gpt_jax.main --config=experiments/configs/recipe_tiny_long.py --workdir=runs/tiny_long
"""
import ml_collections

from gpt_jax.recipe import load_experiment

PRETRAIN_STEPS = 2000


def get_config() -> ml_collections.ConfigDict:
    config = load_experiment("recipe_tiny")
    config.pretrain.train.total_steps = PRETRAIN_STEPS
    return config
