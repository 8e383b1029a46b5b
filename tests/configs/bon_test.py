"""A seconds-long best-of-N config for the stage tests (the workdir needs tokenizer/, sft/,
reward/)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt_jax.train.bon import bon_config  # noqa: E402
from ppo_test import get_config as ppo_config  # noqa: E402


def get_config():
    config = ppo_config()
    config.stage = "bon"
    config.bon = bon_config(n_values=[1, 2, 4], n_max=4, heldout_prompts=4, max_prompt_len=64,
                            max_new_tokens=16, gen_batch=16)
    return config
