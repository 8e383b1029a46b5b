"""Reward model, tiny preset: the SFT model + a scalar head, trained on labeler rankings of K=4
sampled completions per arithmetic prompt and on the shipped human rankings.

python -m gpt_jax.main --config=experiments/configs/reward_tiny.py --workdir=runs/x
  (needs runs/x/{tokenizer,pretrain,sft} from the earlier stages)
"""
import ml_collections

from gpt_jax import configs
from gpt_jax.recipe import load_experiment
from gpt_jax.train.reward import reward_config


def get_config() -> ml_collections.ConfigDict:
    sft = load_experiment("sft_tiny")
    config = ml_collections.ConfigDict()
    config.stage = "reward"
    config.parent = "sft"
    config.seed = 0
    config.model = sft.model  # must equal the parent's
    config.mesh = configs.mesh_config()
    config.optim = configs.optim_config(learning_rate=2e-4, warmup_steps=10, weight_decay=0.0)
    # batch_size = prompts per step (each with K responses of seq_len tokens).
    config.train = configs.train_config(batch_size=8, seq_len=216, total_steps=40, log_every=10,
                                        eval_every=20, eval_batches=4, checkpoint_every=20)
    config.distributed = configs.distributed_config()
    configs.attach_data(config)
    config.tasks = sft.tasks  # the same task and split as SFT
    config.reward = reward_config(k=4, train_prompts=128, heldout_prompts=64, max_new_tokens=128)
    return config
