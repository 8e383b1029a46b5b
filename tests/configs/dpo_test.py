"""A seconds-long DPO config for the stage tests (the workdir needs tokenizer/, sft/ and a
comparisons.jsonl in <comparisons_stage>/)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt_jax.train.dpo import dpo_config  # noqa: E402
from sft_test import get_config as sft_config  # noqa: E402


def get_config():
    config = sft_config()
    config.stage = "dpo"
    config.parent = "sft"
    config.optim.update(learning_rate=1e-3, warmup_steps=0, weight_decay=0.0)
    config.train.update(batch_size=4, seq_len=64, total_steps=4, eval_every=2,
                        checkpoint_every=2, log_every=2)
    config.dpo = dpo_config(comparisons_stage="rankings", beta=0.5, max_prompt_len=40,
                            max_new_tokens=24, score_batch=8, heldout_prompts=4,
                            eval_samples=2, eval_batch=8)
    return config
