"""PPO, tiny preset: the SFT policy trained against the tiny reward model on arithmetic prompts,
with a per-token KL penalty to the SFT model.

python -m gpt_jax.main --config=experiments/configs/ppo_tiny.py --workdir=runs/x
  (needs runs/x/{tokenizer,pretrain,sft,reward} from the earlier stages)
"""
import ml_collections

from gpt_jax import configs
from gpt_jax.recipe import load_experiment
from gpt_jax.train.ppo import ppo_config


def get_config() -> ml_collections.ConfigDict:
    reward = load_experiment("reward_tiny")
    config = ml_collections.ConfigDict()
    config.stage = "ppo"
    config.parent = "sft"
    config.seed = 0
    config.model = reward.model  # the SFT model's (policy, reference and value trunk)
    config.mesh = configs.mesh_config()
    config.optim = configs.optim_config(learning_rate=1e-4, warmup_steps=4, weight_decay=0.0)
    # batch_size = prompts per PPO step (one sampled response each); seq_len = prompt + response.
    config.train = configs.train_config(batch_size=16, seq_len=216, total_steps=20, log_every=5,
                                        eval_every=10, checkpoint_every=10)
    config.distributed = configs.distributed_config()
    configs.attach_data(config)  # PPO-ptx reads the pretraining mixture when ppo.ptx_coef > 0
    config.tasks = reward.tasks
    config.ppo = ppo_config(max_prompt_len=88, max_new_tokens=128, kl_coef=0.05, epochs=2,
                            minibatches=2, heldout_prompts=64, eval_samples=2)
    return config
