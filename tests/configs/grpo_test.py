"""A seconds-long GRPO config for the stage tests (the workdir needs tokenizer/, sft/, reward/)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt_jax.train.grpo import grpo_config  # noqa: E402
from sft_test import get_config as sft_config  # noqa: E402


def get_config():
    config = sft_config()
    config.stage = "grpo"
    config.parent = "sft"
    config.optim.update(learning_rate=1e-3, warmup_steps=0, weight_decay=0.0)
    # batch_size = prompts per step, each sampled group_size times
    config.train.update(batch_size=2, seq_len=80, total_steps=4, eval_every=2,
                        checkpoint_every=2, log_every=2)
    config.grpo = grpo_config(group_size=4, max_prompt_len=64, max_new_tokens=16,
                              train_prompts=64, heldout_prompts=4, eval_samples=2)
    return config
