"""A seconds-long SFT config for the stage tests: tiny GPT-2 on identity conversations + arithmetic
demonstrations (the workdir needs tokenizer/ and a pretrain/ stage of the same model)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpt_jax import configs  # noqa: E402
from gpt_jax.data.tasks_data import tasks_config  # noqa: E402
from gpt_jax.train.sft import samples_config  # noqa: E402
from helpers import tiny_config  # noqa: E402


def get_config():
    config = tiny_config(family="gpt2", total_steps=4, batch_size=8, seq_len=96, eval_every=2,
                         eval_batches=1, checkpoint_every=2)
    config.stage = "sft"
    config.parent = "pretrain"
    config.model.vocab_size = 640
    config.model.max_seq_len = 128
    configs.attach_data(config)
    config.data.sft_weights = {"identity": 1.0}
    config.tasks = tasks_config("arithmetic", demo_weight=1.0, levels="L1", modes="cot",
                                train_problems=200, heldout_problems=20)
    config.samples = samples_config(prompts=["Who are you?"], max_new_tokens=8, eval_problems=4)
    return config
