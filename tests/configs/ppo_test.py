"""A seconds-long PPO config for the stage tests (the workdir needs tokenizer/, sft/, reward/)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt_jax.train.ppo import ppo_config  # noqa: E402
from sft_test import get_config as sft_config  # noqa: E402


def get_config():
    config = sft_config()
    config.stage = "ppo"
    config.parent = "sft"
    config.optim.update(learning_rate=1e-3, warmup_steps=0, weight_decay=0.0)
    config.train.update(batch_size=8, seq_len=80, total_steps=4, eval_every=2,
                        checkpoint_every=2, log_every=2)
    config.ppo = ppo_config(max_prompt_len=64, max_new_tokens=16, epochs=2, minibatches=2,
                            train_prompts=64, heldout_prompts=4, eval_samples=2)
    return config
