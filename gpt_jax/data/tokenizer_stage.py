"""The `tokenizer` stage: train the BPE on a weighted sample of the pretraining sources, report.

Writes `<workdir>/tokenizer/tokenizer.json` (HF format; `Tokenizer.load` reads it) and
`summary.json` / `report.md`: vocab size, training time, sample composition, and bytes per token on
held-out English and Chinese (the `heldout` splits, never seen in training). A completed stage
is reused only with an equal config (`gpt_jax.stages.begin_stage`; else --rerun=tokenizer).

The sample is deterministic given `config.seed`: per source, documents in a seeded random order,
each contributing a random window of at most `MAX_PIECE_CHARS` (so a few long books cannot crowd
out the rest), until the source's share (`tokenizer.source_weights`) of `train_chars` is reached.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from gpt_jax.data import pipeline, records, registry
from gpt_jax.tokenizer import Tokenizer, train_bpe

MAX_PIECE_CHARS = 20_000


def sample_texts(builder, split: str, n_chars: int, rng: np.random.Generator,
                 max_piece: int = MAX_PIECE_CHARS) -> list[str]:
    """Random document windows from one split until `n_chars` characters are collected."""
    source = builder.as_data_source()[split]
    order = rng.permutation(len(source))
    out, total = [], 0
    for start in range(0, len(order), 256):
        for raw in source.__getitems__([int(i) for i in order[start : start + 256]]):
            text = records.decode("text", raw)["text"]
            take = min(len(text), max_piece, n_chars - total)
            begin = int(rng.integers(0, len(text) - take + 1))
            out.append(text[begin : begin + take])
            total += take
            if total >= n_chars:
                return out
    return out


def _heldout_texts(names: str, n_chars: int, cfg, cache_dir) -> list[str]:
    out, total = [], 0
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        builder = _prepare(name, cfg, cache_dir)
        per_source = n_chars // len(names.split(","))
        got = 0
        for rec in registry.read_records(builder, "heldout"):
            text = rec["text"][: per_source - got]
            out.append(text)
            got += len(text)
            if got >= per_source:
                break
        total += got
    return out


def bytes_per_token(tok: Tokenizer, texts: list[str]) -> float:
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    return n_bytes / max(n_tokens, 1)


def _prepare(name, cfg, cache_dir):
    return registry.prepare(name, data_dir=cfg.data.dir or None, cache_dir=cache_dir,
                            skip_bad_records=cfg.data.skip_bad_records)


def run(config, workdir: str) -> dict:
    from gpt_jax.stages import begin_stage

    out_dir, done = begin_stage(config, workdir, "tokenizer")
    summary_file = out_dir / "summary.json"
    if done is not None and (out_dir / "tokenizer.json").is_file():
        logging.info("tokenizer stage already complete at %s", out_dir)
        return done
    tcfg = config.tokenizer
    cache_dir = pipeline.resolve_cache_dir(config, workdir, None)
    rng = np.random.default_rng(config.seed)
    weights = pipeline.normalized_weights(tcfg.source_weights)
    texts, composition = [], {}
    for name, w in weights.items():
        builder = _prepare(name, config, cache_dir)
        sample = sample_texts(builder, "train", int(w * tcfg.train_chars), rng)
        composition[name] = sum(map(len, sample))
        texts += sample
    order = rng.permutation(len(texts))  # interleave sources for the trainer
    t0 = time.perf_counter()
    tok = train_bpe((texts[i] for i in order), tcfg.vocab_size, tcfg.min_frequency)
    train_seconds = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(out_dir / "tokenizer.json")
    tok = Tokenizer.load(out_dir / "tokenizer.json")
    en = _heldout_texts(tcfg.eval_sources_en, tcfg.eval_chars, config, cache_dir)
    zh = _heldout_texts(tcfg.eval_sources_zh, tcfg.eval_chars, config, cache_dir)
    summary = {
        "stage": "tokenizer",
        "path": str(out_dir / "tokenizer.json"),
        "vocab_size": tok.vocab_size,
        "tokenizer_hash": tok.hash,
        "fast_path_exact": tok.fast_path_exact,
        "train_seconds": round(train_seconds, 2),
        "train_chars": sum(composition.values()),
        "train_chars_by_source": composition,
        "bytes_per_token_en": round(bytes_per_token(tok, en), 4),
        "bytes_per_token_zh": round(bytes_per_token(tok, zh), 4),
        "heldout_chars_en": sum(map(len, en)),
        "heldout_chars_zh": sum(map(len, zh)),
    }
    (out_dir / "report.md").write_text(_report(summary))
    summary_file.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def _report(s: dict) -> str:
    rows = "\n".join(f"| {k} | {v:,} |" for k, v in s["train_chars_by_source"].items())
    return (
        f"# Tokenizer report\n\nByte-level BPE, vocab {s['vocab_size']:,} (hash {s['tokenizer_hash']}),"
        f" trained in {s['train_seconds']} s on {s['train_chars']:,} characters.\n\n"
        f"| held-out | bytes/token |\n|---|---|\n| English | {s['bytes_per_token_en']} |\n"
        f"| Chinese | {s['bytes_per_token_zh']} |\n\n| source | training chars |\n|---|---|\n{rows}\n"
    )
