"""The tiny recipe with the pretraining the column method needs: 2,000 steps of 16 x 128 tokens
(4.1M tokens, 2.7M of them drills) instead of `make run`'s 500, and SFT 300 steps instead of 240.
Everything else is recipe_tiny.py. About 4x the pretraining time of `make run` (14 minutes of a
2-core host with a 150 GFLOP/s matmul peak for pretraining alone).

Why it exists: on drills alone the model only starts to copy digits and work 2-digit sums after
about 2-2.5M drill tokens (docs/arithmetic.md, "How fast drills are learned"), which the 20-minute
budget of `make run` cannot buy. This preset shows what the same model does once it has them.

python -m gpt_jax.main --config=experiments/configs/recipe_tiny_long.py --workdir=runs/tiny_long
"""
import ml_collections

from gpt_jax.recipe import load_experiment

PRETRAIN_STEPS = 2000
SFT_STEPS = 300


def get_config() -> ml_collections.ConfigDict:
    config = load_experiment("recipe_tiny")
    config.pretrain.train.total_steps = PRETRAIN_STEPS
    config.sft.train.total_steps = SFT_STEPS
    return config
