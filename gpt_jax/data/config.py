"""Config sections for data and tokenizer, shared by every stage's experiment file.

`data_config()` and `tokenizer_config()` return ConfigDicts holding every key the data code reads
(configs are locked, so overrides of unknown keys are rejected). Weights are relative (normalized
by the code); a weight of 0 leaves a source out.
"""
from __future__ import annotations

import ml_collections

# English 0.7 / Chinese 0.3 for pretraining; within English roughly by size and quality.
PRETRAIN_WEIGHTS = {
    "gutenberg_en": 0.40,
    "nltk_en": 0.12,
    "web_demo_en": 0.10,
    "tiny_shakespeare": 0.08,
    "chinese_poetry": 0.30,
}

# Arithmetic drills (gpt_jax/tasks/drills.py) in the pretraining mixture, relative to the text
# weights above (which sum to 1): 0.25 makes them 20% of pretraining tokens.
DRILL_WEIGHT = 0.25

# SFT mixture over conversation datasets (English ~0.7, Chinese ~0.3).
SFT_WEIGHTS = {
    "lima": 0.20,
    "alpaca_en_demo": 0.12,
    "code_alpaca": 0.10,
    "gpteacher": 0.15,
    "alpaca_seed_tasks": 0.03,
    "identity": 0.05,
    "alpaca_zh_demo": 0.12,
    "oasst_sft_zh": 0.08,
    "sharegpt_zh": 0.15,
}


def data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "dir": "",                # "" = $GPT_JAX_DATA or <repo>/../shared/data
        "cache_dir": "",          # "" = <workdir>/data_cache (TFDS files + token shards)
        "skip_bad_records": False,  # True: count + log malformed records instead of failing
        # + generated arithmetic drills: 0.25 / 1.25 = 20% of pretraining tokens
        "pretrain_weights": {**PRETRAIN_WEIGHTS, "arithmetic_drills": DRILL_WEIGHT},
        "sft_weights": dict(SFT_WEIGHTS),
        "identity": {"name": "gpt_jax", "author": "the gpt_jax authors"},
        "encode_threads": 2,      # tiktoken threads for the token cache
        "shard_tokens": 64 * 1024 * 1024,  # max tokens per memmap shard file
        "loader_threads": 2,      # grain read threads for batches
        "prefetch_batches": 4,    # grain prefetch buffer (batches)
        "pack_conversations": True,  # SFT: pack several conversations per row (segment ids)
    })


def tokenizer_config(vocab_size: int = 8192) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "vocab_size": vocab_size,
        "min_frequency": 2,
        "train_chars": 8_000_000,  # size of the weighted training sample (characters)
        "eval_chars": 400_000,     # held-out characters per language for bytes/token
        # Training sample weights by source (English 0.7 / Chinese 0.3).
        "source_weights": dict(PRETRAIN_WEIGHTS),
        "eval_sources_en": "gutenberg_en,web_demo_en",
        "eval_sources_zh": "chinese_poetry",
    })
