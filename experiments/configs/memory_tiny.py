"""Memory, tiny preset: BM25 retrieval over the SFT model's 10,000 synthetic facts (recall@5, ms
per query) and its answers to the 200 held-out questions with and without the retrieved facts
(gpt_jax/memory/stage.py).

python -m gpt_jax.main --config=experiments/configs/memory_tiny.py --workdir=runs/x
  (needs runs/x/tokenizer and runs/x/sft, trained with tasks.context.weight > 0)
"""
import ml_collections

from gpt_jax.memory.stage import memory_config
from gpt_jax.recipe import load_experiment


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.stage = "memory"
    config.parent = "sft"
    config.model = load_experiment("sft_tiny").model  # must equal the parent's
    config.memory = memory_config()
    return config
