"""A seconds-long moderation config for the stage tests (the workdir needs tokenizer/ and a
pretrain/ stage of the sft_test model)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt_jax.train.moderation import moderation_config  # noqa: E402
from sft_test import get_config as sft_config  # noqa: E402


def get_config():
    config = sft_config()
    config.stage = "moderation"
    config.parent = "pretrain"
    config.train.update(batch_size=8, seq_len=48, total_steps=4, eval_every=4, eval_batches=1,
                        checkpoint_every=4)
    config.moderation = moderation_config(latency_checks=4)
    for key in ("tasks", "samples"):
        del config[key]
    return config
