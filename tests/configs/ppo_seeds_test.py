"""ppo_test.py over two seeds, two steps each (the workdir needs tokenizer/, sft/, reward/)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ml_collections  # noqa: E402

from ppo_test import get_config as ppo_config  # noqa: E402


def get_config():
    config = ppo_config()
    config.stage = "ppo_seeds"
    config.train.update(total_steps=2, eval_every=2, checkpoint_every=2)
    config.ppo_seeds = ml_collections.ConfigDict({"seeds": [0, 1]})
    return config
