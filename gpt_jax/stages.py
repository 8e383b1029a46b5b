"""The stage registry: `config.stage` name -> module with `run(config, workdir) -> summary dict`."""
from __future__ import annotations

import importlib

STAGES = {
    "tokenizer": "gpt_jax.data.tokenizer_stage",
    "pretrain": "gpt_jax.train.pretrain",
    "sft": "gpt_jax.train.sft",
    "reward": "gpt_jax.train.reward",
    "recipe": "gpt_jax.recipe",
}


def stage_module(stage: str):
    if stage not in STAGES:
        raise KeyError(f"config.stage={stage!r}; known stages: {sorted(STAGES)}")
    return importlib.import_module(STAGES[stage])
