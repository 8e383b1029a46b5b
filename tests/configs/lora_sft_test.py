"""A seconds-long LoRA-SFT config for the stage tests: sft_test's model and data, rank 4, the
adapter averaged over the last 2 steps."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt_jax import configs  # noqa: E402
from gpt_jax.train.lora_sft import heldout_eval_config, lora_config  # noqa: E402
from sft_test import get_config as sft_config  # noqa: E402


def get_config():
    config = sft_config()
    config.stage = "lora_sft"
    config.optim = configs.optim_config(name="adamw", learning_rate=3e-3, warmup_steps=1,
                                        weight_decay=0.0)
    config.lora = lora_config(rank=4, alpha=8.0, average_steps=2)
    config.heldout_eval = heldout_eval_config(n_per_level=2, max_new_tokens=16)
    return config
