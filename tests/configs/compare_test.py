"""A seconds-long compare config for the stage tests: 4 held-out problems per level of
sft_test.py's task in every mode, pass@1/2 over 2 samples of 3 problems, 12 new tokens (the workdir needs tokenizer/, pretrain/ and sft/)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ml_collections  # noqa: E402

from gpt_jax import configs  # noqa: E402
from gpt_jax.compare import compare_config  # noqa: E402
from sft_test import get_config as sft_config  # noqa: E402


def get_config():
    sft = sft_config()
    config = ml_collections.ConfigDict()
    config.stage = "compare"
    config.seed = sft.seed
    configs.attach_data(config)
    config.tasks = sft.tasks
    config.compare = compare_config(n_per_level=4, pass_k="1,2", pass_k_problems=3,
                                    pass_k_samples=2, max_new_tokens=12, few_shot=2, gen_batch=64,
                                    score_batch=8)
    return config
