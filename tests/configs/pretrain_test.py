"""A seconds-long pretraining config on random tokens, for the entry-point tests."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers import tiny_config  # noqa: E402


def get_config():
    return tiny_config(family="gpt2", total_steps=20, checkpoint_every=5, eval_every=10)
