"""recipe_seeds in minutes, for tests and for checking an install: recipe_seeds.py's sections at
recipe_smoke.py's sizes (a 2-layer d=64 model, a few steps and prompts per stage), two seeds.
The numbers are meaningless; that every seed runs, resumes and is summarized is the point.

python -m gpt_jax.main --config=experiments/configs/recipe_seeds_smoke.py --workdir=runs/seeds_smoke
"""
import ml_collections

from gpt_jax.recipe import load_experiment


def _like_smoke(config, smoke, **train):
    """`config` with the smoke recipe's model, data and task sizes and a few steps."""
    for key in ("model", "data", "tasks"):
        config[key] = smoke[key].copy_and_resolve_references()
    config.train.update(log_every=2, eval_batches=1, progress_bar=False, **train)
    return config


def get_config() -> ml_collections.ConfigDict:
    config = load_experiment("recipe_seeds")
    config.seeds = "0,1"
    config.bpb_max_bytes = 4096
    smoke, recipe = load_experiment("recipe_smoke"), config.recipe
    for stage in ("tokenizer", "pretrain", "sft", "reward", "ppo", "bon", "feedme", "compare"):
        recipe[stage] = smoke[stage]
    recipe.compare.compare.models = "sft,ppo,ppo_ptx,grpo,grpo_rm,dpo,feedme"
    recipe.reward_weak = smoke.reward.copy_and_resolve_references()
    recipe.reward_weak.reward.train_prompts = smoke.reward.reward.train_prompts // 4
    recipe.ppo_weak = smoke.ppo.copy_and_resolve_references()
    recipe.ppo_weak.ppo.reward_stage = "reward_weak"
    recipe.ppo_weak.train.update(total_steps=6, eval_every=2)
    recipe.ppo_ptx = smoke.ppo.copy_and_resolve_references()
    recipe.ppo_ptx.ppo.update(ptx_coef=1.0, ptx_batch=2, ptx_seq_len=64)
    for name in ("grpo", "grpo_rm"):
        recipe[name] = _like_smoke(recipe[name], smoke.ppo, batch_size=2, seq_len=80,
                                   total_steps=2, eval_every=2, checkpoint_every=2)
        recipe[name].grpo.update(group_size=4, max_prompt_len=64, max_new_tokens=16,
                                 train_prompts=32, heldout_prompts=4)
    recipe.dpo = _like_smoke(recipe.dpo, smoke.ppo, batch_size=4, seq_len=80, total_steps=2,
                             eval_every=2, checkpoint_every=2)
    recipe.dpo.dpo.update(max_prompt_len=64, max_new_tokens=16, score_batch=8,
                          heldout_prompts=4, eval_batch=8)
    return config
