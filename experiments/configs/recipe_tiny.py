"""The tiny recipe on the shipped data (what `make run` runs): tokenizer -> pretrain -> sft ->
reward -> ppo -> bon -> feedme -> compare -> moderation (the server's safety classifier) ->
memory (retrieval over synthetic facts, and the SFT model's answers with and without it), then
REPORT.md.

python -m gpt_jax.main --config=experiments/configs/recipe_tiny.py --workdir=runs/tiny
Each stage's section is that stage's own tiny config, overridable as
--config.pretrain.train.total_steps=100.
"""
import ml_collections

from gpt_jax.recipe import RECIPE_STAGES, load_experiment, pipeline_config


def get_config() -> ml_collections.ConfigDict:
    config = pipeline_config()
    for stage in RECIPE_STAGES:
        config[stage] = load_experiment(f"{stage}_tiny")
    return config
