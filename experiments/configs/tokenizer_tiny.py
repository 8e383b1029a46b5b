"""Tokenizer stage, tiny preset: an 8,192-id byte-level BPE trained on an 8M-character sample
(English 0.7 / Chinese 0.3) in seconds on CPU.

python -m gpt_jax.main --config=experiments/configs/tokenizer_tiny.py --workdir=runs/x
  -> runs/x/tokenizer/{tokenizer.json,summary.json,report.md}
"""
import ml_collections

from gpt_jax.data.config import data_config, tokenizer_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "tokenizer"
    config.seed = 0
    config.data = data_config()
    config.tokenizer = tokenizer_config(vocab_size=8192)
    return config
