"""Two learning rates of a 2-step synthetic pretrain (tests/configs/pretrain_test.py): the sweep
machinery's test fixture."""
from gpt_jax.sweep import grid


def get_sweep():
    return grid({"config.optim.learning_rate": [0.001, 0.003]}, train__total_steps=[2])
