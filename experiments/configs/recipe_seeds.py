"""Post-training over whole-recipe seeds: the tiny recipe's training stages, plus GRPO (verifier and
RM), DPO, PPO-ptx and PPO against a weak reward model, run once per seed in
`<workdir>/recipe_seeds/seed<s>/`, every stage seeded anew (pretraining, SFT, both RMs, every RL
stage; the tokenizer and the evaluation problems are shared). Then the claims, each passed only
when it holds in every seed (gpt_jax/recipe_seeds.py, docs/rlhf.md "Over three seeds"):
GRPO beats SFT at a bounded KL, RL narrows pass@8 - pass@1, the weak-RM PPO over-optimizes.

python -m gpt_jax.main --config=experiments/configs/recipe_seeds.py --workdir=runs/tiny
  (not part of `make run`: about an hour at a 450 GFLOP/s float32 matmul peak, 7 minutes less
   in a finished `make run` workdir, whose stages seed 0 links instead of training them again;
   --config.seeds=0,1 for fewer seeds, --config.recipe.grpo.train.total_steps=40 and so on)
"""
import ml_collections

from gpt_jax.recipe import load_experiment, pipeline_config
from gpt_jax.recipe_seeds import SECTIONS, claims_config


def seed_recipe() -> ml_collections.ConfigDict:
    """One seed's recipe (its `seed` keys are set per seed by the stage)."""
    config = pipeline_config(stages=SECTIONS, report=False)
    for stage in ("tokenizer", "pretrain", "sft", "reward", "ppo", "bon", "feedme", "grpo", "dpo",
                  "compare"):
        config[stage] = load_experiment(f"{stage}_tiny")
    # the weak RM: the labeler's rankings of a quarter of the prompts (32 of 128)
    config.reward_weak = load_experiment("reward_tiny")
    config.reward_weak.reward.train_prompts = config.reward.reward.train_prompts // 4
    # PPO against it, three times longer at a fifth of the learning rate, evaluated every 5
    # steps: proxy and gold over KL (at PPO's 1e-4 the KL passes 10 nats by step 10)
    config.ppo_weak = load_experiment("ppo_tiny")
    config.ppo_weak.ppo.reward_stage = "reward_weak"
    config.ppo_weak.optim.learning_rate = 2e-5
    config.ppo_weak.train.update(total_steps=60, eval_every=5, checkpoint_every=20)
    # PPO-ptx: PPO plus the pretraining loss (InstructGPT's fix for the alignment tax)
    config.ppo_ptx = load_experiment("ppo_tiny")
    config.ppo_ptx.ppo.ptx_coef = 1.0
    # GRPO rewarded by the reward model instead of the verifier
    config.grpo_rm = load_experiment("grpo_tiny")
    config.grpo_rm.grpo.reward_source = "model"
    config.compare.compare.models = "sft,ppo,ppo_ptx,grpo,grpo_rm,dpo,feedme"
    return config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "recipe_seeds"
    config.seeds = "0,1,2"
    config.recipe = seed_recipe()
    config.claims = claims_config()
    config.bpb_max_bytes = 65_536  # held-out pretraining text per source (the alignment tax)
    return config
