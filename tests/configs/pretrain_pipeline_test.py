"""Pretraining config for the crash-safety tests on the real grain pipeline: 20 steps of a tiny
model over Tiny Shakespeare, web text and the arithmetic drills (the workdir needs a tokenizer;
`--config.data.cache_dir` lets several workdirs share one token cache)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpt_jax import configs  # noqa: E402
from helpers import tiny_config  # noqa: E402


def get_config():
    config = tiny_config(family="gpt2", total_steps=20, checkpoint_every=5, eval_every=10,
                         data_source="pipeline")
    config.model.vocab_size = 384
    configs.attach_data(config)
    config.data.pretrain_weights = {"tiny_shakespeare": 0.5, "web_demo_en": 0.3,
                                    "arithmetic_drills": 0.2}
    config.data.loader_threads = 1
    return config
