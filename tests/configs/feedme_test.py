"""A seconds-long FeedME config for the stage tests (the workdir needs tokenizer/, sft/,
reward/)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt_jax.train.feedme import feedme_config  # noqa: E402
from sft_test import get_config as sft_config  # noqa: E402


def get_config():
    config = sft_config()
    config.stage = "feedme"
    config.train.update(batch_size=8, seq_len=96, total_steps=2, eval_every=0,
                        checkpoint_every=2)
    config.feedme = feedme_config(n=2, train_prompts=8, heldout_prompts=4, max_prompt_len=64,
                                  max_new_tokens=16, gen_batch=16, eval_samples=2, eval_batch=8)
    return config
