"""The stage registry (`config.stage` name -> module with `run(config, workdir) -> summary dict`)
and the opening every stage shares (`begin_stage`)."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

STAGES = {
    "tokenizer": "gpt_jax.data.tokenizer_stage",
    "pretrain": "gpt_jax.train.pretrain",
    "sft": "gpt_jax.train.sft",
    "reward": "gpt_jax.train.reward",
    "ppo": "gpt_jax.train.ppo",
    "ppo_seeds": "gpt_jax.train.ppo_seeds",
    "bon": "gpt_jax.train.bon",
    "feedme": "gpt_jax.train.feedme",
    "compare": "gpt_jax.compare",
    "recipe": "gpt_jax.recipe",
}


def stage_module(stage: str):
    if stage not in STAGES:
        raise KeyError(f"config.stage={stage!r}; known stages: {sorted(STAGES)}")
    return importlib.import_module(STAGES[stage])


def check_parent_model(config, workdir: str | Path, parent: str) -> None:
    """A child stage must use its parent's exact model config (its params are the parent's)."""
    from gpt_jax.model import GPTConfig

    saved = json.loads((Path(workdir) / parent / "config.json").read_text())["model"]
    if GPTConfig.from_config(saved) != GPTConfig.from_config(config.model):
        raise ValueError(f"config.model differs from {parent}'s model in {workdir}: "
                         f"{saved} vs {config.model.to_dict()}")


def begin_stage(config, workdir: str | Path, stage: str, parent: str | None = None):
    """(stage_dir, summary): the summary when the stage already completed (skip it), else None
    after checking the parent's model and saving this stage's config.json."""
    from gpt_jax.metrics import read_summary, save_stage_config

    stage_dir = Path(workdir) / stage
    done = read_summary(stage_dir)
    if done is None:
        if parent is not None:
            check_parent_model(config, workdir, parent)
        save_stage_config(stage_dir, config)
    return stage_dir, done

