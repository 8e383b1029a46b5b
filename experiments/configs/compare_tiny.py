"""Compare, tiny preset: base (few-shot) / SFT / PPO / FeedME on 200 held-out arithmetic problems
per level, each asked in every mode (direct, cot, calc, calc_off), greedy; pass@1/2/4/8 over 8
temperature-1 samples of 100 problems; cot answers also scored by the gold labeler and the RM.

python -m gpt_jax.main --config=experiments/configs/compare_tiny.py --workdir=runs/x
  (uses whichever of runs/x/{pretrain,sft,ppo,feedme} exist; runs/x/reward if present)
"""
import ml_collections

from gpt_jax import configs
from gpt_jax.compare import compare_config
from gpt_jax.recipe import load_experiment


def get_config() -> ml_collections.ConfigDict:
    sft = load_experiment("sft_tiny")
    config = ml_collections.ConfigDict()
    config.stage = "compare"
    config.seed = sft.seed  # the task's problem draw: the same held-out problems SFT evaluates
    config.model = sft.model  # informational: each model is loaded with its own saved config
    configs.attach_data(config)
    config.tasks = sft.tasks
    config.compare = compare_config(n_per_level=200, pass_k="1,2,4,8", pass_k_problems=100,
                                    pass_k_samples=8, max_new_tokens=128, few_shot=2, seed=0)
    return config
