"""Compare, tiny preset: base (few-shot) / SFT / PPO / FeedME on 32 held-out arithmetic prompts,
greedy answers scored by the gold labeler and the reward model; 4 samples on each of the first 16
prompts for diversity (distinct-n, sample entropy).

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
    # 2 demonstrations: 3 would overflow the 256-token context with the 48 new tokens.
    config.compare = compare_config(n_prompts=32, samples_per_prompt=4, sample_prompts=16,
                                    max_new_tokens=48, few_shot=2, seed=0)
    return config
