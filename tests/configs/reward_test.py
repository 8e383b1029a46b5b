"""A seconds-long reward-model config for the stage tests (runs after sft_test.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt_jax.train.reward import reward_config  # noqa: E402
from sft_test import get_config as sft_config  # noqa: E402


def get_config():
    config = sft_config()
    config.stage = "reward"
    config.parent = "sft"
    config.train.update(batch_size=8, seq_len=48, total_steps=3, eval_every=3, eval_batches=1,
                        checkpoint_every=3)
    config.reward = reward_config(k=3, train_prompts=8, heldout_prompts=8, max_new_tokens=12,
                                  gen_batch=32, human_eval_max_prompts=4, bias_demos=6,
                                  score_batch=16)
    return config
