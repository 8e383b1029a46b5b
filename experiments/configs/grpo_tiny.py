"""GRPO, tiny preset: the SFT policy trained on arithmetic prompts with the verifier (the gold
labeler) as the reward, 8 samples per prompt, a k3 KL leash to the SFT model. Not in `make run`
(its time budget); run it on a finished tiny workdir and compare it with SFT:

python -m gpt_jax.main --config=experiments/configs/grpo_tiny.py --workdir=runs/tiny
python -m gpt_jax.main --config=experiments/configs/compare_tiny.py --workdir=runs/tiny \
    --config.compare.models=sft,grpo   (in a workdir whose compare stage has not run yet)
  (needs runs/x/{tokenizer,pretrain,sft,reward})
"""
import ml_collections

from gpt_jax import configs
from gpt_jax.recipe import load_experiment
from gpt_jax.train.grpo import grpo_config


def get_config() -> ml_collections.ConfigDict:
    reward = load_experiment("reward_tiny")
    config = ml_collections.ConfigDict()
    config.stage = "grpo"
    config.parent = "sft"
    config.seed = 0
    config.model = reward.model  # the SFT model's
    config.mesh = configs.mesh_config()
    # lr 5e-5 and 2 x 2 updates per step: lr 1e-4 x 1 update (20 steps of 4 prompts) drifted to
    # KL 6.0 and lost greedy L1 cot 0.545 -> 0.320; 3e-5 x 1 (40 x 8) stayed at SFT (KL 1.0);
    # this one: L1 cot 0.545 -> 0.635 at KL 1.7 (docs/rlhf.md#grpo)
    config.optim = configs.optim_config(learning_rate=5e-5, warmup_steps=4, weight_decay=0.0)
    # batch_size = prompts per step, each sampled grpo.group_size times (8 x 8 = 64 rows)
    config.train = configs.train_config(batch_size=8, seq_len=216, total_steps=40, log_every=5,
                                        eval_every=10, checkpoint_every=20)
    config.distributed = configs.distributed_config()
    configs.attach_data(config)
    config.tasks = reward.tasks
    config.grpo = grpo_config(group_size=8, max_prompt_len=88, max_new_tokens=128, kl_coef=0.04,
                              epochs=2, minibatches=2, heldout_prompts=64, eval_samples=2)
    return config
